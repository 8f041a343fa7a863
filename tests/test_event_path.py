"""The event path: `unlearn submit` emits an event; the served process-request deployment runs at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_pipeline import class_payload


def test_submit_event_triggers_served_process_request(pipeline, tmp_path):
    from prefect.settings import PREFECT_API_URL

    rt = pipeline
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "UNLEARNOPS_STATE_DIR": str(rt.state_dir)}
    unlearn = str(Path(sys.executable).with_name("unlearn"))
    log = open(tmp_path / "serve.log", "w")
    # --workers 0: no warm worker, so the event-triggered deployment (a fresh process per run) does the work
    server = subprocess.Popen([unlearn, "serve", "--workers", "0", "--interval", "3600"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        _wait_for_deployment("process-request/process-request", timeout=120)
        payload = tmp_path / "request.json"
        payload.write_bytes(class_payload(rt))
        out = subprocess.run([unlearn, "submit", str(payload)], env=env, capture_output=True, text=True, check=True)
        request_id = out.stdout.split()[0]
        deadline = time.time() + 240
        while time.time() < deadline and rt.queue.status(request_id)["state"] not in ("done", "rejected", "dead_letter"):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        status = rt.queue.status(request_id)
        assert status["state"] == "done", (tmp_path / "serve.log").read_text()[-3000:]
        receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
        assert receipt["new_version"] == "v0.0.2" and rt.registry.prod("mnist-cnn").semver == "v0.0.2"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_deployment(name: str, timeout: float) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                time.sleep(1)
    raise TimeoutError(f"deployment {name} was not served within {timeout} s")
