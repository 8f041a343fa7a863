"""`prefect.yaml` on a work pool: `unlearn deploy`, a process worker (`unlearn worker --pool`), and a request
submitted with `unlearn submit` that the event-triggered deployment turns into a flow run on that worker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from signed import APPROVER, client_env, submitter_key
from test_pipeline import class_payload
from test_scale_out import _kill_tree

UNLEARN = str(Path(sys.executable).with_name("unlearn"))
DEPLOYMENTS = ("process-request/process-request", "await-approval/await-approval", "watch-queue/watch-queue",
               "retention/retention")


def delete_project_deployments() -> None:
    """Remove what `unlearn deploy` applied: later tests serve deployments of the same names, and a trigger
    left behind would answer their events with a 404."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in DEPLOYMENTS:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
            client.delete_deployment(deployment.id)


def test_deploy_and_pool_worker_process_a_submitted_request(pipeline, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    rt = pipeline
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "UNLEARNOPS_STATE_DIR": str(rt.state_dir),
           **client_env(rt.state_dir)}
    out = subprocess.run([UNLEARN, "deploy", "--pool", "unlearnops-test"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    with get_client(sync_client=True) as client:
        process = client.read_deployment_by_name("process-request/process-request")
        watch = client.read_deployment_by_name("watch-queue/watch-queue")
        assert process.work_pool_name == watch.work_pool_name == "unlearnops-test"
        assert [s.schedule.interval.total_seconds() for s in watch.schedules] == [60]
        keep = client.read_deployment_by_name("retention/retention")
        assert [s.schedule.interval.total_seconds() for s in keep.schedules] == [86400]
        automations = [a for a in client.read_automations() if str(process.id) in a.model_dump_json()]
        assert automations and "unlearnops.request.submitted" in automations[0].trigger.model_dump_json()
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([UNLEARN, "worker", "--pool", "unlearnops-test"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        payload = tmp_path / "request.json"
        payload.write_bytes(class_payload(rt))
        request_id = subprocess.run([UNLEARN, "submit", str(payload)], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()[0]
        # held (a class deletion): approved at once; the approval's event starts process-request on the pool
        subprocess.run([UNLEARN, "approve", request_id, "--as", APPROVER, "--key",
                        str(submitter_key(rt.state_dir, APPROVER))], env=env, check=True, capture_output=True)
        deadline = time.time() + 420
        while rt.queue.status(request_id)["state"] not in ("done", "failed", "rejected", "dead_letter"):
            assert time.time() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert rt.queue.status(request_id)["state"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
        receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
        assert receipt["new_version"] == rt.registry.prod("mnist-cnn").semver == "v0.0.2"
    finally:
        # SIGTERM lets Prefect's worker drain its flow runs; on a loaded machine that outlasted 60 s once and the
        # worker stayed alive into the next test, so whatever is left after the grace period is killed
        _kill_tree([worker])
        delete_project_deployments()
