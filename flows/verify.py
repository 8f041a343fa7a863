"""``unlearn verify``: check a deletion receipt against a fresh clone of the registry.

The checks themselves are plain Python (adapters/verification.py): no Prefect, no service
state besides the registry's git URL and the S3 remote's keys. Exit 0 when every claim holds
(some may be reported ``not re-checked`` when their bytes were erased on purpose), 1 naming the
first claim that fails, 2 on bad input (not JSON, no such receipt, unreachable registry or remote).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from adapters.services import default_state_dir, s3_config
from adapters.verification import FAILED, read_receipt_file, verify, verify_params
from unlearn_core.config import load_params


def run_verify(receipt: str, registry: str | None = None, state_dir: str | None = None,
               params_path: str = "params.yaml", out=print, recompute: bool = False) -> int:
    params = load_params(params_path)  # defaults when the file is absent
    state = Path(state_dir).expanduser().resolve() if state_dir else default_state_dir().resolve()
    url = registry or str(state / "registry")
    if Path(receipt).suffix == ".json" or Path(receipt).exists():
        read_receipt_file(receipt)  # a bad receipt file is reported before anything is cloned
    s3 = s3_config(state)
    with tempfile.TemporaryDirectory(prefix="unlearnops-verify-") as tmp:
        vp = verify_params(params)
        found, claims = verify(receipt, url, s3, Path(tmp), vp.metric_tolerance, (params.model_extra or {}).get("registry"),
                               vp.recompute_tolerance if recompute else None)
    out(f"receipt {found['request_id']} ({found['status']}, {found['model']} {found.get('new_version')}) "
        f"against {url}")
    for claim in claims:
        out(f"  {claim.name:<9} {claim.status:<15} {claim.detail}")
    failed = [c for c in claims if c.status == FAILED]
    if failed:
        out(f"FAILED: {failed[0].name}: {failed[0].detail}")
        return 1
    out("verified" + (" (some claims not re-checked, see above)" if any(c.status != "ok" for c in claims) else ""))
    return 0
