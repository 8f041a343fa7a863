"""``unlearn bench pipeline``: ``unlearn demo`` end to end on a fresh state, as a user meets it.

Imports, the temporary Prefect API, dataset build, base training and two deletions are all counted.
The served path (warm workers, submit -> promoted) is ``unlearn bench service``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unlearn_core.bench.report import markdown_table, write_report

DEMO_TARGET_S = 180


def run(out_dir: str | Path, params_path: str = "params.yaml", repeats: int = 1) -> dict:
    rows = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="unlearnops-bench-") as tmp:
            started = time.perf_counter()
            subprocess.run([str(Path(sys.executable).with_name("unlearn")), "demo", "--state-dir", f"{tmp}/demo",
                            "--params", params_path], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            rows.append({"run": i + 1, "demo_s": time.perf_counter() - started})
    worst = max(r["demo_s"] for r in rows)
    md = ["# Pipeline benchmark", "", "`unlearn demo` on a fresh state (subprocess, wall time).", "",
          markdown_table(rows, ("run", "demo_s")), "", "## Targets", "",
          f"- {'PASS' if worst <= DEMO_TARGET_S else 'MISS'}: demo end to end <= {DEMO_TARGET_S} s "
          f"(worst {worst:.1f} s)"]
    paths = write_report(out_dir, "pipeline", rows, "\n".join(md) + "\n", {"params": params_path})
    paths["plot"] = _plot(rows, Path(out_dir) / "pipeline.png")
    return {"paths": paths, "rows": rows}


def _plot(rows: list[dict], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar([f"run {r['run']}" for r in rows], [r["demo_s"] for r in rows], color="tab:blue")
    ax.axhline(DEMO_TARGET_S, color="red", ls="--", label=f"target {DEMO_TARGET_S} s")
    ax.set_ylabel("wall seconds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
