"""Who may delete what: signed submissions, roles, quotas, and the human approval on a real Prefect server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from adapters.submitters import SubmitterRegistry, load_private_key, sign_request
from flows.process_request import process_request
from flows.submit import submit_payload
from signed import APPROVER, SUBMITTER, client_env, signed, submit_signed, submitter_key
from test_pipeline import class_payload
from unlearn_core.authorization import AuthorizationParams, Usage, authorize
from unlearn_core.errors import InputError

UNLEARN = str(Path(sys.executable).with_name("unlearn"))
LIMITS = AuthorizationParams(max_pending_per_submitter=2, daily_share_without_approval=0.01)


def _subject(rt, index: int = 0) -> str:
    from unlearn_core.data import read_manifest

    return sorted({r["subject_id"] for r in read_manifest(rt.registry.data_dir()) if r["subject_id"]})[index]


def _subject_request(rt, index: int = 0) -> dict:
    subject = _subject(rt, index)
    return {"subject_id": subject, "kind": "subject", "model": "mnist-cnn", "forget": {"subject": subject}}


def test_roles_and_quotas_decide_refuse_hold_or_pass():
    none = Usage(pending=0, rows_last_day=0)
    with pytest.raises(InputError) as err:
        authorize("portal", "subject", "class", 400, 4000, none, LIMITS)
    assert err.value.field == "kind" and "governance" in err.value.reason
    assert "approval" in authorize("gov", "governance", "class", 400, 4000, none, LIMITS)
    assert authorize("portal", "subject", "subject", 5, 4000, none, LIMITS) is None
    assert authorize("portal", "subject", "samples", 40, 4000, none, LIMITS) is None  # exactly 1%: allowed
    assert "quota" in authorize("portal", "subject", "samples", 41, 4000, none, LIMITS)
    assert "24 h" in authorize("portal", "subject", "subject", 5, 4000, Usage(0, 36), LIMITS)
    assert "unfinished" in authorize("portal", "subject", "subject", 5, 4000, Usage(2, 0), LIMITS)
    with pytest.raises(InputError, match="unknown role"):
        authorize("x", "admin", "subject", 5, 4000, none, LIMITS)


def _refused(rt, envelope: bytes, field: str, match: str = "") -> None:
    before = rt.queue.counts()
    with pytest.raises(InputError) as err:
        submit_payload(rt, envelope, notify=False)
    assert err.value.field == field, err.value
    assert match in err.value.reason
    assert rt.queue.counts() == before  # nothing enqueued


def test_unsigned_unknown_tampered_stale_and_replayed_requests_are_refused(pipeline):
    rt = pipeline
    request = _subject_request(rt)
    _refused(rt, json.dumps(request).encode(), "signature", "missing")
    key = load_private_key(submitter_key(rt.state_dir))
    _refused(rt, json.dumps(sign_request(request, "nobody", key)).encode(), "signature.submitter", "unknown")
    envelope = json.loads(signed(rt.state_dir, request))
    envelope["request"]["model"] = "mnist-gan"  # signed for one model, replayed against another
    _refused(rt, json.dumps(envelope).encode(), "signature.value", "does not verify")
    other = SubmitterRegistry(rt.state_dir)
    other.add("someone-else", "governance")  # a registered name, signed with a key that is not its own
    _refused(rt, json.dumps(sign_request(request, "someone-else", key)).encode(), "signature.value")
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    _refused(rt, signed(rt.state_dir, request, signed_at=old), "signature.signed_at", "window")
    garbage = json.loads(signed(rt.state_dir, request))
    garbage["signature"]["value"] = "%%%"
    _refused(rt, json.dumps(garbage).encode(), "signature.value", "base64")
    _refused(rt, json.dumps({**json.loads(signed(rt.state_dir, request)), "admin": True}).encode(), "admin")

    good = signed(rt.state_dir, request)
    request_id, created = submit_payload(rt, good, notify=False)
    assert created and rt.queue.status(request_id)["state"] == "pending"
    assert rt.queue.status(request_id)["submitter"] == SUBMITTER
    _refused(rt, good, "request_id", "replayed")  # the same envelope again, inside the window


def test_subject_role_cannot_delete_a_class_and_quotas_hold_instead_of_dropping(pipeline):
    rt = pipeline
    _refused(rt, signed(rt.state_dir, class_payload(rt), name="portal", role="subject"), "kind", "governance")
    params = yaml.safe_load(rt.params_path.read_text())
    params["authorization"]["max_pending_per_submitter"] = 1
    rt.params_path.write_text(yaml.safe_dump(params))
    rt = type(rt).from_env(rt.state_dir)
    first, _ = submit_signed(rt, _subject_request(rt, 0), notify=False, name="portal", role="subject")
    second, _ = submit_signed(rt, _subject_request(rt, 1), notify=False, name="portal", role="subject",
                              approve=False)
    assert rt.queue.status(first)["state"] == "pending"
    held = rt.queue.status(second)
    assert held["state"] == "awaiting_approval" and "quota" in held["details"]["hold"]["reason"]

    from flows.approval import decide

    with pytest.raises(InputError, match="only governance"):  # a subject-role submitter decides nothing
        decide(rt, second, "portal", True)
    submitter_key(rt.state_dir, APPROVER)
    assert decide(rt, second, APPROVER, True, "bulk request confirmed")["status"] == "approved"
    for request_id in (first, second):  # the second may ride in the first one's batch
        if rt.queue.status(request_id)["state"] != "done":
            assert process_request(request_id=request_id, state_dir=str(rt.state_dir))["status"] == "done"
    receipt = json.loads((rt.receipts_dir / f"{second}.json").read_text())
    assert receipt["submitter"] == "portal" and receipt["approval"]["decided_by"] == APPROVER
    version = rt.registry.prod("mnist-cnn")
    assert version.lineage["submitters"][second] == "portal"  # batched with the first, or on its own


def test_cli_refuses_unsigned_and_keys_inside_the_state(pipeline, tmp_path):
    rt = pipeline
    env = {**os.environ, "UNLEARNOPS_STATE_DIR": str(rt.state_dir)}
    env.pop("PREFECT_API_URL", None)
    payload = tmp_path / "request.json"
    payload.write_text(json.dumps(_subject_request(rt)))
    out = subprocess.run([UNLEARN, "submit", str(payload)], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: signature: missing"), out.stderr
    inside = subprocess.run([UNLEARN, "submitters", "add", "ops", "--role", "governance", "--key-out",
                             str(rt.state_dir / "ops.key")], env=env, capture_output=True, text=True)
    assert inside.returncode == 2 and "--key-out" in inside.stderr and not (rt.state_dir / "ops.key").exists()
    assert "ops" not in {s.name for s in SubmitterRegistry(rt.state_dir).list()}
    key = tmp_path / "keys" / "portal.key"
    added = subprocess.run([UNLEARN, "submitters", "add", "portal", "--role", "subject", "--key-out", str(key)],
                           env=env, capture_output=True, text=True)
    assert added.returncode == 0 and oct(key.stat().st_mode & 0o777) == "0o600"
    assert b"PRIVATE" not in (rt.state_dir / "submitters.json").read_bytes()
    ok = subprocess.run([UNLEARN, "submit", str(payload), "--as", "portal", "--key", str(key)], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.split()[1] == "enqueued", ok.stderr
    assert rt.queue.status(ok.stdout.split()[0])["submitter"] == "portal"
    payload.write_bytes(class_payload(rt))
    refused = subprocess.run([UNLEARN, "submit", str(payload), "--as", "portal", "--key", str(key)], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: kind: "), refused.stderr
    assert rt.queue.counts()["pending"] == 1 and rt.queue.counts()["awaiting_approval"] == 0


def _wait_paused(rt, request_id: str, waiter: subprocess.Popen, timeout: float = 120) -> str:
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            assert waiter.poll() is None, waiter.stdout.read()
            run_id = (rt.queue.status(request_id)["details"]["hold"]).get("flow_run_id")
            if run_id and client.read_flow_run(run_id).state.is_paused():
                return run_id
            time.sleep(0.5)
    raise AssertionError("the approval run never paused")


def _waiter(rt, request_id: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.approval", request_id, "--state-dir", str(rt.state_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_class_deletion_pauses_for_a_human_then_approve_runs_it_and_reject_ends_it(pipeline, tmp_path):
    """Prefect's own pause (the UI form) on the session's real server: approve from the CLI, reject
    through the form's input as the UI sends it; both end where the queue says."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    rt = pipeline
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "UNLEARNOPS_STATE_DIR": str(rt.state_dir),
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    approved, _ = submit_signed(rt, class_payload(rt), notify=False, approve=False)
    assert rt.queue.status(approved)["state"] == "awaiting_approval"
    waiter = _waiter(rt, approved, env)
    try:
        run_id = _wait_paused(rt, approved, waiter)
        with get_client(sync_client=True) as client:  # what the UI shows beside the form
            artifact = client.read_artifacts()
        summary = next(a.data for a in artifact if a.key == f"approval-{approved}")
        assert "forget set:" in summary and "predicted cost" in summary and "class 3" in summary
        self_approval = subprocess.run([UNLEARN, "approve", approved, "--as", SUBMITTER, "--key",
                                        str(submitter_key(rt.state_dir))], env=env, capture_output=True, text=True)
        assert self_approval.returncode == 2 and "another person" in self_approval.stderr
        key = submitter_key(rt.state_dir, APPROVER)
        wrong_key = subprocess.run([UNLEARN, "approve", approved, "--as", APPROVER, "--key",
                                    str(submitter_key(rt.state_dir))], env=env, capture_output=True, text=True)
        assert wrong_key.returncode == 2 and "registered key" in wrong_key.stderr
        out = subprocess.run([UNLEARN, "approve", approved, "--as", APPROVER, "--key", str(key), "--reason", "ok"],
                             env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"request_id": approved, "status": "approved", "prompt_closed": True}
        assert waiter.wait(timeout=120) == 0
        assert "already decided" in waiter.stdout.read()
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run_id).state.is_completed()
    finally:
        waiter.kill()
    assert rt.queue.status(approved)["state"] == "pending"
    assert process_request(request_id=approved, state_dir=str(rt.state_dir))["status"] == "done"
    receipt = json.loads((rt.receipts_dir / f"{approved}.json").read_text())
    assert receipt["submitter"] == SUBMITTER and receipt["approval"]["decided_by"] == APPROVER
    assert "class deletion" in receipt["approval"]["reason"]

    rejected, _ = submit_signed(rt, class_payload(rt, forget={"class": 5}), notify=False, approve=False)
    waiter = _waiter(rt, rejected, env)
    try:
        run_id = _wait_paused(rt, rejected, waiter)
        resume_flow_run(run_id, run_input={"approver": APPROVER, "approve": False,
                                           "reason": "digit 5 is a product feature"})  # as the UI form does
        assert waiter.wait(timeout=120) == 0
    finally:
        waiter.kill()
    view = rt.queue.status(rejected)
    assert view["state"] == "rejected" and "digit 5 is a product feature" in view["details"]["error"]
    receipt = json.loads((rt.receipts_dir / f"{rejected}.json").read_text())
    assert receipt["status"] == "rejected" and receipt["approval"]["decision"] == "rejected"
    assert receipt["content_hash"] and receipt["signature"]["value"]
    assert rt.registry.prod("mnist-cnn").request_id == approved  # the rejected class is still served


def test_an_approval_nobody_gives_before_the_deadline_is_escalated(pipeline, tmp_path):
    from prefect.settings import PREFECT_API_URL

    rt = pipeline
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "UNLEARNOPS_STATE_DIR": str(rt.state_dir),
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    soon = (datetime.now(timezone.utc) + timedelta(seconds=8)).isoformat()
    paused, _ = submit_signed(rt, class_payload(rt, deadline=soon), notify=False, approve=False)
    forgotten, _ = submit_signed(rt, class_payload(rt, forget={"class": 6}, deadline=soon), notify=False,
                                 approve=False)
    waiter = _waiter(rt, paused, env)  # the paused run times out at the deadline and escalates
    try:
        assert waiter.wait(timeout=120) == 0
    finally:
        waiter.kill()
    assert rt.queue.status(paused)["details"]["hold"]["escalated_at"]
    from flows.watch_queue import watch_queue

    watch_queue(state_dir=str(rt.state_dir))  # no run waits for the other one: the scheduled flow escalates it
    for request_id in (paused, forgotten):
        view = rt.queue.status(request_id)
        assert view["state"] == "awaiting_approval" and view["details"]["hold"]["escalated_at"]
    out = subprocess.run([UNLEARN, "status"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count("ESCALATED") == 2, out.stdout

    waiting, _ = submit_signed(rt, class_payload(rt, forget={"class": 7}), notify=False, approve=False)
    params = yaml.safe_load(rt.params_path.read_text())
    params["authorization"]["approval_wait_hours"] = 0.0002  # 0.7 s: held longer than that is overdue too
    rt.params_path.write_text(yaml.safe_dump(params))
    time.sleep(1)
    watch_queue(state_dir=str(rt.state_dir))
    assert "approval_wait_hours" in rt.queue.status(waiting)["details"]["hold"]["escalation"]


def test_service_mode_server_wants_auth_and_the_cli_and_warm_worker_use_it(pipeline, tmp_path):
    """`unlearn up`'s Prefect server with basic auth: a warm worker and `unlearn submit`, pointed only at the
    state dir, find the URL and the auth string and process a request; a client without it is refused."""
    from adapters.services import PrefectServer

    rt = pipeline
    server = PrefectServer(rt.state_dir)
    server.ensure_started()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    env.update(UNLEARNOPS_STATE_DIR=str(rt.state_dir), **client_env(rt.state_dir))
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([UNLEARN, "worker", "--limit", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        no_auth = subprocess.run([sys.executable, "-c", "from prefect.client.orchestration import get_client\n"
                                  "with get_client(sync_client=True) as c: c.read_flows()"],
                                 env={**env, "PREFECT_API_URL": server.api_url()}, capture_output=True, text=True)
        assert no_auth.returncode != 0 and "401" in no_auth.stderr
        payload = tmp_path / "request.json"
        payload.write_text(json.dumps(_subject_request(rt, 3)))
        time.sleep(5)  # the worker subscribes
        out = subprocess.run([UNLEARN, "submit", str(payload)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        request_id = out.stdout.split()[0]
        deadline = time.time() + 300
        while rt.queue.status(request_id)["state"] != "done":
            assert time.time() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert server.client_env()["PREFECT_API_AUTH_STRING"] not in (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        server.stop()
