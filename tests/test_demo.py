"""`unlearn demo` end to end, on its embedded defaults (its own S3 and Prefect API), with a 1-epoch base model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from fixtures_prefect import TEST_PARAMS

UNLEARN = str(Path(sys.executable).with_name("unlearn"))


def test_demo_signs_holds_approves_and_processes_both_requests(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    for section, values in TEST_PARAMS.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UNLEARNOPS_", "PREFECT_API_", "AWS_"))}  # as on a fresh machine
    state = tmp_path / "state"
    out = subprocess.run([UNLEARN, "demo", "--state-dir", str(state), "--params", str(tmp_path / "params.yaml")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held: class deletion" in out.stdout and "'status': 'approved'" in out.stdout
    receipts = [json.loads(p.read_text()) for p in sorted((state / "receipts").glob("*.json"))]
    assert sorted(r["kind"] for r in receipts) == ["class", "subject"]
    assert all(r["status"] == "done" and r["submitter"].startswith("demo-governance-") for r in receipts)
    held = next(r for r in receipts if r["kind"] == "class")
    assert held["approval"]["decided_by"].startswith("demo-approver-")
    for path in state.rglob("*"):  # the submitters' private keys never live with the service's state
        if path.is_file() and path.suffix in (".json", ".key", ".pem", ".md") and path.stat().st_size < 10**6:
            text = path.read_bytes()
            assert b"BEGIN PRIVATE KEY" not in text or path == state / "s3" / "receipts.key", path
