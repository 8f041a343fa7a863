"""Scale-out on the existing engines, all real processes: the harness's Prefect server, two work-pool process
workers (``unlearn worker --pool``), one warm task worker (``unlearn worker``) and a PostgreSQL queue.

A burst for one model goes the production way (signed like a client, ``submit_signed(notify=True)``: the warm
worker is handed each request and the ``unlearnops.request.submitted`` event triggers a flow run per request on the pool, so
all three workers race for them); then a burst for two models is handed to the pool alone, one flow run per
model, so each pool worker (``--limit 1``) takes one. Whatever the timing: every request done with its receipt,
one version per request or batch, one parent chain per model, every deleted id gone from the final dataset,
and the queue's history names who did what (a pool worker's runs carry its Prefect worker name).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import suppress

from test_service import UNLEARN, _alive, _assert_one_chain, _children_of, _start_service, _stop, \
    _subject_payload, _wait_terminal, _worker_logs
from unlearn_core.data import load_dataset

POOL = "unlearnops-scale"  # its own pool: the workers registered in it are exactly this test's two


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = _children_of(todo.pop())
        found += children
        todo += children
    return found


def _kill_tree(procs) -> None:
    """SIGTERM each process group (a pool worker is ``unlearn`` -> ``prefect worker`` -> flow runs), then SIGKILL
    whatever of them is left."""
    tree = [p for proc in procs for p in _descendants(proc.pid)]
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deadline = time.time() + 10
    while any(_alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.2)
    for pid in [p for p in tree if _alive(p)]:
        os.kill(pid, signal.SIGKILL)


def _final_runs(client, deployment_id, request_ids: list[str], timeout: float, tmp_path) -> list:
    """The deployment's flow runs for ``request_ids``, once each has one and all are final. Runs for other ids
    (an earlier test's late event reaching this deployment's trigger) are left out."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline, runs = time.time() + timeout, []
    while time.time() < deadline:
        runs = [r for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
                if r.parameters.get("request_id") in request_ids]
        if {r.parameters["request_id"] for r in runs} == set(request_ids) and all(
                r.state and r.state.is_final() for r in runs):
            return runs
        time.sleep(1)
    raise AssertionError(f"flow runs not final: {[(r.parameters, r.state_name) for r in runs]}\n"
                         f"{_worker_logs(tmp_path)}")


def _done_by(rt, request_id: str) -> str:
    """The worker id that acked ``request_id`` (exactly one 'done' transition)."""
    acks = [h["worker_id"] for h in rt.queue.status(request_id)["history"] if h["to"] == "done"]
    assert len(acks) == 1, acks
    return acks[0]


def test_pool_workers_and_warm_worker_share_a_postgres_queue(pipeline, tmp_path, monkeypatch, postgres_url):
    from prefect.client.orchestration import get_client
    from signed import submit_signed
    from test_deploy import delete_project_deployments

    monkeypatch.setenv("UNLEARNOPS_QUEUE_URL", postgres_url)
    rt = pipeline
    procs, deployment = [], None
    try:
        warm, env = _start_service(rt, tmp_path, monkeypatch, warm=1)
        procs += warm
        out = subprocess.run([UNLEARN, "deploy", "--pool", POOL], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("process-request/process-request")
            for name in ("watch-queue/watch-queue", "retention/retention"):  # their schedules would take pool
                client.delete_deployment(client.read_deployment_by_name(name).id)  # slots at random times
        for i in range(2):
            log = open(tmp_path / f"worker-pool{i}.log", "w")
            procs.append(subprocess.Popen([UNLEARN, "worker", "--pool", POOL, "--limit", "1"], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        assert type(rt.queue).__name__ == "PostgresRequestQueue"
        ds = load_dataset(rt.registry.data_dir())
        subjects = sorted(set(ds.train.subjects))[40:50]

        # 1. one model, the production path: the warm worker and a triggered flow run per request race
        one = [submit_signed(rt, _subject_payload(rt, s), notify=True)[0] for s in subjects[:4]]
        assert set(_wait_terminal(rt, one, 600, tmp_path, procs).values()) == {"done"}
        with get_client(sync_client=True) as client:
            triggered = _final_runs(client, deployment.id, one, 600, tmp_path)
        assert sorted(r.parameters["request_id"] for r in triggered) == sorted(one)  # one run per event
        assert {r.state_name for r in triggered} == {"Completed"}
        versions_before = {m: len(rt.registry.versions(m)) for m in ("mnist-cnn", "mnist-cnn-b")}

        # 2. two models, the pool alone: one flow run per model, each pool worker takes one (limit 1)
        models = ["mnist-cnn", "mnist-cnn-b"] * 3
        two = [submit_signed(rt, _subject_payload(rt, s, model=m), notify=False)[0]
               for s, m in zip(subjects[4:10], models)]
        with get_client(sync_client=True) as client:
            pinned = {client.create_flow_run_from_deployment(deployment.id, parameters={"request_id": two[i]}).id:
                      models[i] for i in (0, 1)}
            assert set(_wait_terminal(rt, two, 600, tmp_path, procs).values()) == {"done"}
            runs = _final_runs(client, deployment.id, one + two[:2], 600, tmp_path)
            assert set(pinned) <= {r.id for r in runs} and {r.state_name for r in runs} == {"Completed"}
            pool_workers = {w.name for w in client.read_workers_for_work_pool(POOL)}
    finally:
        _kill_tree(procs[1:])
        _stop(procs[:1])
        delete_project_deployments()

    # every request done, in exactly one version (alone or in a batch), one chain per model
    chains = {"mnist-cnn": _assert_one_chain(rt, "mnist-cnn", one + two[0::2]),
              "mnist-cnn-b": _assert_one_chain(rt, "mnist-cnn-b", two[1::2])}
    for model, versions in chains.items():
        assert len(versions) == versions_before[model] + 1  # the pool run of step 2 batched the model's three
        for version in versions[1:]:
            batch = version.lineage["request_ids"]
            for request_id in batch:
                receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
                assert receipt["status"] == "done" and receipt["new_version"] == version.semver
                assert sorted(receipt["batch"]) == sorted(set(batch) - {request_id})
                assert receipt["deleted_sample_ids"]

    # every deleted id, and every training sample of the deleted subjects, is gone from the final dataset
    deleted = {i for versions in chains.values() for v in versions for i in v.lineage["deleted_sample_ids"]}
    of_subjects = {i for i, s in zip(ds.train.ids, ds.train.subjects) if s in set(subjects)}
    assert of_subjects and of_subjects <= deleted and not deleted & load_dataset(rt.registry.data_dir()).all_ids()

    # who did what: the warm worker is its process; a pool worker's runs name it after the '@'
    assert len(pool_workers) == 2, pool_workers
    by = {r: _done_by(rt, r) for r in one + two}
    engine = {r: w.split("@", 1)[1] if "@" in w else ("warm" if w.split(":")[1] == str(warm[0].pid) else w)
              for r, w in by.items()}
    assert set(engine.values()) <= pool_workers | {"warm"}, engine
    assert {engine[r] for r in two} == pool_workers  # both pool workers did work
    assert "warm" in {engine[r] for r in one}  # the fast path: handed each request seconds before a pool run starts
    for run in runs:
        if run.id in pinned:  # Prefect's record of the run's worker agrees with the queue's history
            mine = [r for r, m in zip(two, models) if m == pinned[run.id]]
            assert {engine[r] for r in mine} == {run.labels["prefect.worker.name"]}
    print("done by, step 1:", [engine[r] for r in one], "step 2:", [engine[r] for r in two])
