"""Deletion receipts: the auditable record of one request (JSON + markdown).

A receipt holds sample ids (content hashes), counts, versions, metrics and gate
outcomes; never sample bytes, never secrets.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

RECEIPT_FIELDS = ("request_id", "status", "kind", "model", "subject_id", "method", "deleted_sample_ids",
                  "parent_version", "new_version", "attempts", "metrics_before", "metrics_after",
                  "gates", "validation", "timestamps", "storage", "reason")


def build_receipt(**fields) -> dict:
    unknown = set(fields) - set(RECEIPT_FIELDS)
    if unknown:
        raise TypeError(f"unknown receipt fields: {sorted(unknown)}")
    receipt = {name: fields.get(name) for name in RECEIPT_FIELDS}
    receipt["issued_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return receipt


def render_markdown(receipt: dict) -> str:
    ids = receipt.get("deleted_sample_ids") or []
    lines = [f"# Deletion receipt {receipt['request_id']}", "",
             f"- status: **{receipt['status']}**",
             f"- model: `{receipt['model']}`  kind: `{receipt['kind']}`  subject: `{receipt['subject_id']}`",
             f"- method: `{receipt.get('method')}`",
             f"- versions: `{receipt.get('parent_version')}` -> `{receipt.get('new_version')}`",
             f"- deleted samples: {len(ids)} (ids listed in the JSON receipt)"]
    if receipt.get("reason"):
        lines.append(f"- reason: {receipt['reason']}")
    before, after = receipt.get("metrics_before") or {}, receipt.get("metrics_after") or {}
    if after:
        lines += ["", "| metric | before | after |", "|---|---|---|"]
        for key in after:
            b = before.get(key)
            lines.append(f"| {key} | {b:.4f} | {after[key]:.4f} |" if isinstance(b, float)
                         else f"| {key} | - | {after[key]} |")
    for attempt in receipt.get("attempts") or []:
        verdict = "pass" if attempt["gates"]["passed"] else "fail"
        lines.append(f"- attempt `{attempt['method']}` ({attempt['time_s']:.3f} s): gates {verdict}")
    for stamp, value in (receipt.get("timestamps") or {}).items():
        lines.append(f"- {stamp}: {value}")
    return "\n".join(lines) + "\n"


def write_receipt(receipts_dir: str | Path, receipt: dict) -> dict[str, str]:
    out = Path(receipts_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{receipt['request_id']}.json"
    md_path = out / f"{receipt['request_id']}.md"
    json_path.write_text(json.dumps(receipt, indent=2, sort_keys=True, default=str) + "\n")
    md_path.write_text(render_markdown(receipt))
    return {"json": str(json_path), "markdown": str(md_path)}


def read_receipts(receipts_dir: str | Path) -> list[dict]:
    folder = Path(receipts_dir)
    if not folder.is_dir():
        return []
    receipts = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(receipts, key=lambda r: r.get("issued_at") or "")
