"""The event path: `unlearn submit` emits an event; the served deployments run at once. A class deletion is
held: the held event starts the served await-approval run, which suspends (Prefect's human-in-the-loop; its
process exits) until the UI form resumes it; the rescheduled run applies the decision, and the approval's
submitted event triggers process-request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from signed import APPROVER, client_env, submitter_key
from test_pipeline import class_payload


def test_submit_event_triggers_served_process_request(pipeline, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    rt = pipeline
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "UNLEARNOPS_STATE_DIR": str(rt.state_dir),
           **client_env(rt.state_dir)}
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
        assert "held for approval" in out.stdout
        run_id = _wait_for_paused_approval(rt, request_id, server, tmp_path, timeout=120)
        submitter_key(rt.state_dir, APPROVER)  # a second governance submitter decides, in the UI form
        with get_client(sync_client=True) as client:  # suspended: the process that asked has exited
            assert client.read_flow_run(run_id).state.name == "Suspended"
        resume_flow_run(run_id, run_input={"approver": APPROVER, "approve": True, "reason": "ok"})  # as the UI does
        deadline = time.time() + 240
        while time.time() < deadline and rt.queue.status(request_id)["state"] not in ("done", "rejected", "dead_letter"):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        status = rt.queue.status(request_id)
        assert status["state"] == "done", (tmp_path / "serve.log").read_text()[-3000:]
        receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
        assert receipt["new_version"] == "v0.0.2" and rt.registry.prod("mnist-cnn").semver == "v0.0.2"
        assert receipt["approval"]["decided_by"] == APPROVER
        with get_client(sync_client=True) as client:  # the paused run woke up and finished
            deadline = time.time() + 60
            while not client.read_flow_run(run_id).state.is_final() and time.time() < deadline:
                time.sleep(1)
            assert client.read_flow_run(run_id).state.is_completed()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_paused_approval(rt, request_id: str, server, tmp_path, timeout: float) -> str:
    """The id of the served await-approval run once it is paused for the request."""
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            run_id = rt.queue.status(request_id)["details"]["hold"].get("flow_run_id")
            if run_id and client.read_flow_run(run_id).state.is_paused():
                return run_id
            time.sleep(1)
    raise AssertionError("no await-approval run paused: " + (tmp_path / "serve.log").read_text()[-3000:])


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
