"""The request path's records: attempts, lineage and the deletion receipt (JSON + markdown).

A receipt holds sample ids (content hashes), counts, versions, metrics and gate
outcomes; never sample bytes, never secrets. Statuses: ``done`` (the deletion
is in the model that holds ``prod``), ``rejected`` (bad forget/substitute data;
nothing changed), ``failed`` (no attempt passed the gates, exact retraining
included; nothing changed, no automatic re-run).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .gates import GateOutcome

STATUSES = ("done", "rejected", "failed")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Attempt:
    """One method run on the request and the gates' verdict on its result."""

    method: str
    params: dict[str, Any]
    time_s: float
    peak_mem_bytes: int
    metrics: dict[str, float]
    gates: GateOutcome
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gates": self.gates.to_dict()}


@dataclass(frozen=True)
class Lineage:
    """What a new version records about how it was made (committed beside the model in the registry)."""

    arch: str
    family: str
    method: str
    params: dict[str, Any]
    kind: str
    subject_id: str
    requested_method: str
    parent_version: str
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    gates: GateOutcome
    attempts: list[str]
    code_version: str
    stamps: dict[str, str]
    submitters: dict[str, str | None] = field(default_factory=dict)  # request id -> who signed it

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gates": self.gates.to_dict()}


@dataclass
class Receipt:
    request_id: str
    status: str
    kind: str
    model: str
    subject_id: str
    submitter: str | None = None  # the registered submitter that signed the request
    approval: dict | None = None  # held requests: why, and who decided when
    method: str | None = None
    deleted_sample_ids: list[str] = field(default_factory=list)
    parent_version: str | None = None
    new_version: str | None = None
    prod_version: str | None = None  # the version holding prod when the receipt was issued (holds this deletion)
    batch: list[str] = field(default_factory=list)  # other requests forgotten in the same run and version
    attempts: list[Attempt] = field(default_factory=list)
    metrics_before: dict[str, float] | None = None
    metrics_after: dict[str, float] | None = None
    validation: list[dict] = field(default_factory=list)
    timestamps: dict[str, str] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)  # wall time of each phase in this run
    storage: dict[str, str] | None = None
    reason: str | None = None
    issued_at: str = field(default_factory=now_iso)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"receipt status {self.status!r} is not one of {STATUSES}")

    @property
    def gates(self) -> GateOutcome | None:
        return self.attempts[-1].gates if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["attempts"] = [a.to_dict() for a in self.attempts]
        out["gates"] = self.gates.to_dict() if self.gates else None
        return out

    def write(self, receipts_dir: str | Path) -> dict[str, str]:
        return write_receipt(self.to_dict(), receipts_dir)


def receipt_json(receipt: dict) -> str:
    """The receipt file's text (the same bytes in the state dir and in the registry)."""
    return json.dumps(receipt, indent=2, sort_keys=True, default=str) + "\n"


def write_receipt(receipt: dict, receipts_dir: str | Path) -> dict[str, str]:
    """``<request_id>.json`` + ``.md`` in ``receipts_dir``; returns both paths."""
    out = Path(receipts_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{receipt['request_id']}.json"
    md_path = out / f"{receipt['request_id']}.md"
    json_path.write_text(receipt_json(receipt))
    md_path.write_text(render_markdown(receipt))
    return {"json": str(json_path), "markdown": str(md_path)}


def render_markdown(receipt: dict) -> str:
    ids = receipt.get("deleted_sample_ids") or []
    lines = [f"# Deletion receipt {receipt['request_id']}", "",
             f"- status: **{receipt['status']}**",
             f"- model: `{receipt['model']}`  kind: `{receipt['kind']}`  subject: `{receipt['subject_id']}`"
             f"  submitter: `{receipt.get('submitter')}`",
             f"- method: `{receipt.get('method')}`",
             f"- versions: `{receipt.get('parent_version')}` -> `{receipt.get('new_version')}`"
             f" (prod: `{receipt.get('prod_version')}`)",
             f"- deleted samples: {len(ids)} (ids listed in the JSON receipt)"]
    if receipt.get("reason"):
        lines.append(f"- reason: {receipt['reason']}")
    approval = receipt.get("approval") or {}
    if approval:
        lines.append(f"- held: {approval.get('reason')}; {approval.get('decision', 'undecided')} by "
                     f"`{approval.get('decided_by')}` at {approval.get('decided_at')}")
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
    phases = receipt.get("durations_s") or {}
    if phases:
        lines.append("- durations: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    for stamp, value in (receipt.get("timestamps") or {}).items():
        lines.append(f"- {stamp}: {value}")
    if receipt.get("content_hash"):
        sig = receipt.get("signature") or {}
        lines.append(f"- content hash: `{receipt['content_hash']}` (signed {sig.get('algorithm')}, "
                     f"key `{sig.get('key_id')}`)")
    for entry in receipt.get("audit") or []:
        lines.append(f"- audit {entry.get('at')}: {entry.get('event')} {entry.get('summary', '')}".rstrip())
    return "\n".join(lines) + "\n"


def read_receipts(receipts_dir: str | Path) -> list[dict]:
    folder = Path(receipts_dir)
    if not folder.is_dir():
        return []
    receipts = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(receipts, key=lambda r: r.get("issued_at") or "")
