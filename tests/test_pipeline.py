"""The process-request flow end to end on real services: S3 (rclone), git + DVC + GTO, Prefect, GX."""
from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from signed import submit_signed
from flows.process_request import process_request
from flows.watch_queue import watch_queue
from unlearn_core.data import load_dataset, load_images, read_manifest
from unlearn_core.errors import InputError

FORGET_CLASS = 3


def write_substitute(rt, name="digits.npz", leak_training=0):
    """Held-out test digits of the class (plus, optionally, some training digits: a privacy violation)."""
    ds = load_dataset(rt.registry.data_dir())
    images = (ds.test.x[ds.test.y == FORGET_CLASS] * 255).round().byte().numpy()
    if leak_training:
        train = (ds.train.x[ds.train.y == FORGET_CLASS][:leak_training] * 255).round().byte().numpy()
        images = np.concatenate([images, train])
    np.savez(rt.substitute_root / name, images=images, labels=np.full(len(images), FORGET_CLASS))
    return name


def class_payload(rt, **extra) -> bytes:
    body = {"subject_id": "governance", "kind": "class", "model": "mnist-cnn", "forget": {"class": FORGET_CLASS},
            "substitute": write_substitute(rt), **extra}
    return json.dumps(body).encode()


def stored_image_bytes(data_dir) -> bytes:
    """Every image byte a dataset directory stores, all shards."""
    return b"".join(p.read_bytes() for p in sorted(Path(data_dir).glob("shards/*/images.npy")))

def forgotten_bytes(rt, ids) -> list[bytes]:
    """Raw image bytes of the given samples, read before they are deleted."""
    images = load_images(rt.registry.data_dir())[0]
    rows = {r["sample_id"]: r["row"] for r in read_manifest(rt.registry.data_dir())}
    return [images[rows[i]].tobytes() for i in ids]


def assert_no_sample_bytes(haystack: bytes, samples: list[bytes]) -> None:
    for raw in samples:
        for encoding in (raw, raw.hex().encode(), base64.b64encode(raw)):
            assert encoding not in haystack


def test_class_deletion_end_to_end(pipeline, tmp_path, caplog):
    rt = pipeline
    doomed = [r["sample_id"] for r in read_manifest(rt.registry.data_dir())
              if r["label"] == FORGET_CLASS and r["split"] == "train"]
    doomed_bytes = forgotten_bytes(rt, doomed[:50])

    request_id, created = submit_signed(rt, class_payload(rt))
    assert created and rt.queue.status(request_id)["state"] == "pending"
    with caplog.at_level(logging.DEBUG):
        outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome == {"request_id": request_id, "status": "done", "new_version": "v0.0.2"}

    status = rt.queue.status(request_id)
    assert status["state"] == "done"
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    assert receipt["method"] == "lra_npp" and receipt["gates"]["passed"]
    assert sorted(receipt["deleted_sample_ids"]) == sorted(doomed)
    assert receipt["metrics_after"]["UA"] >= 0.95 > receipt["metrics_before"]["UA"]
    assert all(r["success"] for r in receipt["validation"])

    prod = rt.registry.prod("mnist-cnn")
    assert prod.semver == "v0.0.2" and prod.lineage["method"] == "lra_npp"
    assert prod.lineage["request_id"] == request_id and prod.lineage["gates"]["passed"]
    # the new dataset version no longer holds the class's training samples, by id or by bytes
    assert not set(doomed) & {r["sample_id"] for r in read_manifest(rt.registry.data_dir())}
    assert_no_sample_bytes(stored_image_bytes(rt.registry.data_dir()), doomed_bytes)
    # a fresh clone + dvc pull from the bucket reproduces the exact model bytes
    clone = rt.registry.clone_and_pull(tmp_path / "clone")
    assert (clone / "models" / "mnist-cnn" / "model.pt").read_bytes() == rt.registry.model_path("mnist-cnn").read_bytes()
    # nothing of the forgotten samples survives in receipts, queue, logs or scratch space
    assert not rt.work_dir(request_id).exists()
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    for blob in [p.read_bytes() for p in rt.receipts_dir.iterdir()] + [rt.queue_path.read_bytes(), logs]:
        assert_no_sample_bytes(blob, doomed_bytes)


def test_same_request_twice_is_one_unlearning(pipeline):
    rt = pipeline
    first, created = submit_signed(rt, class_payload(rt))
    again, created_again = submit_signed(rt, class_payload(rt))
    assert created and not created_again and again == first
    watch_queue(state_dir=str(rt.state_dir))
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1", "v0.0.2"]
    assert rt.queue.counts()["done"] == 1


def test_substitute_from_training_set_is_rejected_and_nothing_changes(pipeline):
    rt = pipeline
    name = write_substitute(rt, "leaky.npz", leak_training=3)
    payload = json.dumps({"subject_id": "governance", "kind": "class", "model": "mnist-cnn",
                          "forget": {"class": FORGET_CLASS}, "substitute": name}).encode()
    before_data = stored_image_bytes(rt.registry.data_dir())
    request_id, _ = submit_signed(rt, payload)
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome["status"] == "rejected"
    assert rt.queue.status(request_id)["state"] == "rejected"
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    failed = [r for report in receipt["validation"] for r in report["results"] if not r["success"]]
    assert any(r["column"] == "in_train" for r in failed), failed
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1"]
    assert rt.registry.prod("mnist-cnn").semver == "v0.0.1"
    assert stored_image_bytes(rt.registry.data_dir()) == before_data


@pytest.mark.parametrize("payload, field", [
    (b"{not json", "payload"),
    (b'{"subject_id": "s", "kind": "class", "model": "mnist-cnn", "forget": {"class": 3}, "extra": 1}', "extra"),
    (b'{"subject_id": "s", "kind": "class", "model": "resnet-x", "forget": {"class": 3}}', "model"),
    (b'{"subject_id": "s", "kind": "class", "model": "mnist-cnn", "forget": {"class": 10}}', "forget.class"),
    (b'{"subject_id": "s", "kind": "class", "model": "mnist-cnn", "forget": {"class": 3}, "substitute": "../x.npz"}',
     "substitute"),
    (b'{"subject_id": "s", "kind": "class", "model": "mnist-cnn", "forget": {"class": 3}, '
     b'"substitute": "s3://other-bucket/x.npz"}', "substitute"),
])
def test_bad_submissions_enqueue_nothing(pipeline, payload, field):
    with pytest.raises(InputError) as err:
        submit_signed(pipeline, payload)
    assert err.value.field == field
    assert pipeline.queue.counts().get("pending", 0) == 0


def test_gate_failure_escalates_to_exact_retraining(pipeline):
    rt = pipeline
    params = yaml.safe_load(rt.params_path.read_text())
    params["gates"]["per_method"] = {"lra_npp": {"max_ta_drop": -1.0},  # no LRA-NPP model can pass
                                     "retrain": {"max_ra_drop": 0.1, "max_ta_drop": 0.1}}  # 1-epoch seed noise
    rt.params_path.write_text(yaml.safe_dump(params))
    request_id, _ = submit_signed(rt, class_payload(rt))
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome["status"] == "done"
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    assert [a["method"] for a in receipt["attempts"]] == ["lra_npp", "lra_npp", "retrain"]
    assert receipt["attempts"][1]["params"]["perturb_top_n"] == 160  # the stronger retry
    assert [a["gates"]["passed"] for a in receipt["attempts"]] == [False, False, True]
    prod = rt.registry.prod("mnist-cnn")
    assert prod.lineage["method"] == "retrain" and prod.semver == "v0.0.2"


def test_gates_failing_after_escalation_is_terminal(pipeline):
    """No attempt passes (exact retraining included): terminal ``failed``, a receipt, no version, no re-run."""
    rt = pipeline
    params = yaml.safe_load(rt.params_path.read_text())
    params["gates"]["per_method"] = {m: {"max_ta_drop": -1.0} for m in ("lra_npp", "retrain")}
    rt.params_path.write_text(yaml.safe_dump(params))
    request_id, _ = submit_signed(rt, class_payload(rt))
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome == {"request_id": request_id, "status": "failed", "new_version": None}
    status = rt.queue.status(request_id)
    assert status["state"] == "failed" and status["attempts"] == 1
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    assert receipt["status"] == "failed" and [a["method"] for a in receipt["attempts"]] == ["lra_npp", "lra_npp", "retrain"]
    assert receipt["prod_version"] == "v0.0.1" and receipt["new_version"] is None
    # nothing is re-run: neither the queue path nor the event path can claim it again
    assert watch_queue(state_dir=str(rt.state_dir)) == []
    assert process_request(request_id=request_id, state_dir=str(rt.state_dir))["status"] == "not claimable"
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1"]


def dead_worker_claim(rt, request_id):
    """Claim as a worker whose clock says its lease ran out long ago (it died mid-request)."""
    import time

    from adapters.queue import open_queue, queue_params

    past = open_queue(rt.queue_path, queue_params(rt.params), clock=lambda: time.time() - 3600)
    return past.claim_id(request_id, "worker-that-died")


def test_live_lease_blocks_other_workers(pipeline):
    rt = pipeline
    request_id, _ = submit_signed(rt, class_payload(rt))
    assert rt.queue.claim_id(request_id, "busy-worker") is not None
    assert process_request(request_id=request_id, state_dir=str(rt.state_dir))["status"] == "not claimable"
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1"]


def test_expired_lease_is_redelivered_and_yields_one_version(pipeline):
    rt = pipeline
    request_id, _ = submit_signed(rt, class_payload(rt))
    assert dead_worker_claim(rt, request_id) is not None
    outcome = watch_queue(state_dir=str(rt.state_dir))
    assert [o["status"] for o in outcome] == ["done"]
    status = rt.queue.status(request_id)
    assert status["state"] == "done" and status["attempts"] == 2
    assert [v.request_id for v in rt.registry.versions("mnist-cnn")] == [None, request_id]


def test_worker_died_after_commit_resumes_the_same_version(pipeline):
    """A version committed (not yet pushed/promoted) by a dead worker is finished, not made twice."""
    from tasks.pipeline import commit_version
    from unlearn_core.models import load_model

    rt = pipeline
    request_id, _ = submit_signed(rt, class_payload(rt))
    lease = dead_worker_claim(rt, request_id)
    parent, _ = load_model(rt.registry.model_path("mnist-cnn"))
    ids = [r["sample_id"] for r in read_manifest(rt.registry.data_dir())
           if r["label"] == FORGET_CLASS and r["split"] == "train"]
    workdir = rt.work_dir(request_id)
    workdir.mkdir(parents=True)
    commit_version.fn(rt, rt.family("mnist-cnn"), "mnist-cnn", parent, load_dataset(rt.registry.data_dir()),
                      lease.request, "v0.0.1", {"method": "lra_npp", "gates": {"passed": True}},
                      {request_id: ids}, workdir, guard=lambda: None)
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome == {"request_id": request_id, "status": "done", "new_version": "v0.0.2"}
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1", "v0.0.2"]
    assert rt.registry.prod("mnist-cnn").semver == "v0.0.2"


def test_s3_down_during_push_keeps_prod_then_resumes(pipeline, monkeypatch, s3):
    """A real outage (nothing listens on the endpoint): the push task retries, then the request
    goes back to the queue; the committed version is not promoted and prod stays put. Once S3 is
    back, the redelivered request pushes and promotes that same version."""
    from adapters.services import free_port

    rt = pipeline
    request_id, _ = submit_signed(rt, class_payload(rt))
    monkeypatch.setenv("UNLEARNOPS_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Exception, match="push"):
        process_request(request_id=request_id, state_dir=str(rt.state_dir))
    status = rt.queue.status(request_id)
    assert status["state"] == "pending" and "push" in status["last_error"].lower()
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1", "v0.0.2"]
    assert rt.registry.prod("mnist-cnn").semver == "v0.0.1"

    monkeypatch.setenv("UNLEARNOPS_S3_ENDPOINT", s3.endpoint_url)
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome == {"request_id": request_id, "status": "done", "new_version": "v0.0.2"}
    assert rt.registry.prod("mnist-cnn").semver == "v0.0.2"
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1", "v0.0.2"]


def test_pending_subject_deletions_are_forgotten_as_one_batch(pipeline):
    """Four pending subject deletions: one unlearning run, one version, a receipt each naming it; the
    gates judge every member's own forget set; each tombstone names its own request."""
    from unlearn_core.data import read_tombstones

    rt = pipeline
    subjects = sorted({r["subject_id"] for r in read_manifest(rt.registry.data_dir()) if r["split"] == "train"})[:4]
    ids = [submit_signed(rt, json.dumps({"subject_id": s, "kind": "subject", "model": "mnist-cnn",
                                          "forget": {"subject": s}}).encode())[0] for s in subjects]
    outcome = process_request(request_id=ids[0], state_dir=str(rt.state_dir))
    assert outcome["status"] == "done" and outcome["new_version"] == "v0.0.2"
    assert outcome["batch"] == {i: "done" for i in ids}
    version = rt.registry.prod("mnist-cnn")
    assert version.semver == "v0.0.2" and sorted(version.lineage["request_ids"]) == sorted(ids)
    assert [v.semver for v in rt.registry.versions("mnist-cnn")] == ["v0.0.1", "v0.0.2"]
    stones = read_tombstones(rt.registry.data_dir())
    for request_id, subject in zip(ids, subjects):
        assert rt.queue.status(request_id)["state"] == "done"
        receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
        assert receipt["new_version"] == "v0.0.2" and sorted(receipt["batch"]) == sorted(set(ids) - {request_id})
        mine = sorted(s["sample_id"] for s in stones if s["request_id"] == request_id)
        assert receipt["deleted_sample_ids"] == mine and len(mine) == 5
        checks = [c["name"] for c in receipt["gates"]["checks"]]
        assert f"forget_gap[{request_id[:8]}]" in checks
    assert rt.registry.version_for_request("mnist-cnn", ids[3]).semver == "v0.0.2"
    from flows.verify import run_verify

    for request_id in (ids[0], ids[-1]):  # a member's signed receipt re-derives from a fresh registry clone
        assert run_verify(request_id, state_dir=str(rt.state_dir), out=lambda *_: None) == 0
