"""Shared writer for benchmark outputs: ``NAME.json`` (rows), ``NAME.md`` (table), PNG plots."""
from __future__ import annotations

import json
import math
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "cpu_threads": torch.get_num_threads()}


def hardware_line(env: dict) -> str:
    return (f"Hardware: {env['device']}; CPU {env['cpu']}, {env['cpu_cores']} cores, {env['cpu_threads']} torch "
            f"threads; Python {env['python']}, torch {env['torch']}.")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def summarize(rows: list[dict], group_by: tuple[str, ...], metrics: tuple[str, ...]) -> list[dict]:
    """Mean and std over seeds for each group (e.g. method x variant)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in group_by)].append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(group_by, key))
        entry["n_seeds"] = len(members)
        for m in metrics:
            vals = np.array([r[m] for r in members if r.get(m) is not None], dtype=float)
            entry[m] = float(vals.mean()) if len(vals) else float("nan")
            entry[f"{m}_std"] = float(vals.std()) if len(vals) else float("nan")
        out.append(entry)
    return out


def markdown_table(summary: list[dict], columns: tuple[str, ...], with_std: tuple[str, ...] = ()) -> str:
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for row in summary:
        cells = []
        for c in columns:
            cell = _fmt(row.get(c, ""))
            if c in with_std and f"{c}_std" in row:
                cell += f" ± {_fmt(row[f'{c}_std'])}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, name: str, rows: list[dict], markdown: str, meta: dict) -> dict:
    """Write ``NAME.json`` (the list of rows), ``NAME.meta.json`` (settings + environment) and
    ``NAME.md`` with the hardware line under its title; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "meta": out / f"{name}.meta.json", "markdown": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    env = environment()
    paths["meta"].write_text(json.dumps({**meta, "environment": env}, indent=2) + "\n")
    title, _, body = markdown.partition("\n")
    if not title.startswith("#"):
        title, body = "", "\n" + markdown
    paths["markdown"].write_text(f"{title}\n\n{hardware_line(env)}\n{body}".lstrip("\n"))
    return {k: str(v) for k, v in paths.items()}
