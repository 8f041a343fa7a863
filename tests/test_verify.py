"""Signed receipts, `unlearn verify` from a fresh registry clone, and retention of superseded models.

One pipeline of its own (own bucket: retention erases objects, which other modules' pipelines share
in the session bucket), one class deletion processed; each test tampers with one claim on a copy.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

import pytest
import yaml

from test_pipeline import class_payload

BUCKET = "verify-tests"


@pytest.fixture(scope="module")
def done(tmp_path_factory, s3, prefect_api):
    """(runtime, request id) of a processed class deletion (mnist-cnn v0.0.2 in prod)."""
    from fixtures_prefect import TEST_PARAMS
    from flows.process_request import process_request
    from flows.setup import init_pipeline
    from signed import submit_signed

    s3.client().create_bucket(Bucket=BUCKET)
    saved = {k: os.environ.get(k) for k in ("UNLEARNOPS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "UNLEARNOPS_S3_BUCKET")}
    os.environ.update({"UNLEARNOPS_S3_ENDPOINT": s3.endpoint_url, "AWS_ACCESS_KEY_ID": s3.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3.secret_key, "UNLEARNOPS_S3_BUCKET": BUCKET})
    root = tmp_path_factory.mktemp("verify")
    params = yaml.safe_load(open("params.yaml"))
    for section, values in TEST_PARAMS.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rt = init_pipeline(root / "state", root / "params.yaml", models=["mnist-cnn"], progress=lambda *_: None)
    request_id, _ = submit_signed(rt, class_payload(rt))
    assert process_request(request_id=request_id, state_dir=str(rt.state_dir))["status"] == "done"
    yield rt, request_id
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _md5_file(path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def run_verify(rt, receipt, registry=None, *extra):
    from flows.cli import main

    argv = ["verify", str(receipt), "--registry", str(registry or rt.registry_dir), "--state-dir", str(rt.state_dir),
            *extra]
    return main(argv)


def tampered(rt, request_id, tmp_path, edit_receipt=None, edit_registry=None, resign=True):
    """A clone of the registry with the receipt edited (re-signed with the service's key, as a
    compromised service would) and committed there; returns (receipt path, registry url)."""
    from adapters.receipts import receipt_rel
    from adapters.registry import RegistryWorkspace
    from adapters.signing import ReceiptSigner
    from unlearn_core.receipts import receipt_json

    repo = tmp_path / "tampered"
    subprocess.run(["git", "clone", "-q", str(rt.registry_dir), str(repo)], check=True)
    ws = RegistryWorkspace(repo, rt.s3, {"remote_prefix": "registry"})
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    if edit_receipt:
        edit_receipt(receipt)
        if resign:
            receipt = ReceiptSigner.for_state(rt.state_dir).sign(receipt)
    if edit_registry:
        edit_registry(ws)
    (repo / receipt_rel(request_id)).write_text(receipt_json(receipt))
    ws._git("add", "-A")
    ws._git("commit", "-q", "--allow-empty", "-m", "tamper")
    path = tmp_path / "receipt.json"
    path.write_text(receipt_json(receipt))
    return path, repo


def test_receipt_is_signed_and_verifies_from_a_fresh_clone(done, capsys):
    from adapters.signing import KEY_FILE

    rt, request_id = done
    key = rt.state_dir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.parent == rt.state_dir / "s3"
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    committed = json.loads((rt.registry_dir / "receipts" / f"{request_id}.json").read_text())
    digest = receipt["content_hash"]
    assert digest.startswith("sha256:") and committed["content_hash"] == digest
    assert digest in (rt.receipts_dir / f"{request_id}.md").read_text()
    assert digest in subprocess.run(["git", "log", "--format=%s"], cwd=rt.registry_dir, capture_output=True,
                                    text=True).stdout
    assert (rt.registry_dir / "keys" / "receipts.pub").read_text().startswith("-----BEGIN PUBLIC KEY")

    assert run_verify(rt, request_id) == 0  # by id: the receipt comes from the clone
    out = capsys.readouterr().out
    for claim in ("signature", "version", "stage", "lineage", "model", "data", "deletion", "metrics"):
        assert f"  {claim} " in out
    assert "FAILED:" not in out and "Fs, MIA_efficacy, UA not re-checked" in out  # need the deleted samples
    assert run_verify(rt, rt.receipts_dir / f"{request_id}.json") == 0  # by file


def test_recompute_rederives_the_version_with_dvc_repro(done, capsys):
    """The class deletion ran LRA-NPP (zero-shot: parent + substitutes): its DVC stage re-derives it in a clone."""
    rt, request_id = done
    version = rt.registry.version("mnist-cnn", json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
                                  ["new_version"])
    assert version.lineage["method"] == "lra_npp"
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{version.git_sha}:dvc.lock"], cwd=rt.registry_dir,
                                         capture_output=True, text=True, check=True).stdout)["stages"]
    assert lock["mnist-cnn"]["outs"][0]["md5"] == version.model_md5
    assert {d["path"] for d in lock["mnist-cnn"]["deps"]} == {"derivations/mnist-cnn/request.json", "inputs/mnist-cnn"}
    assert lock["mnist-cnn"]["params"]["derivations/mnist-cnn/params.json"]["method"] == "lra_npp"
    capsys.readouterr()
    assert run_verify(rt, request_id, None, "--recompute") == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("  recompute "))
    assert line.split()[1] == "ok", out
    # the service ran LRA-NPP as the stage does (pinned kernels, one thread): the very bytes come back
    assert f"re-derived md5 {version.model_md5}" in line and "!=" not in line


def test_rejected_receipt_is_signed_and_claims_no_version(done, capsys):
    """Class 4 with a substitute that leaks 3 training digits: rejected, still a signed, committed receipt."""
    import numpy as np
    import torch

    from flows.process_request import process_request
    from signed import submit_signed
    from unlearn_core.data import load_dataset

    rt, _ = done
    ds = load_dataset(rt.registry.data_dir())
    images = torch.cat([ds.test.x[ds.test.y == 4], ds.train.x[ds.train.y == 4][:3]])
    np.savez(rt.substitute_root / "leaky4.npz", images=(images * 255).round().byte().numpy(),
             labels=np.full(len(images), 4))
    payload = json.dumps({"subject_id": "governance", "kind": "class", "model": "mnist-cnn",
                          "forget": {"class": 4}, "substitute": "leaky4.npz"}).encode()
    request_id, _ = submit_signed(rt, payload)
    assert process_request(request_id=request_id, state_dir=str(rt.state_dir))["status"] == "rejected"
    assert (rt.registry_dir / "receipts" / f"{request_id}.json").exists()
    assert run_verify(rt, request_id) == 0
    out = capsys.readouterr().out
    assert "signature ok" in out and "status rejected: the receipt claims no new version" in out


def _set(path, value):
    def edit(receipt):
        *parents, last = path.split(".")
        target = receipt
        for key in parents:
            target = target[key]
        target[last] = value(target[last]) if callable(value) else value
    return edit


@pytest.mark.parametrize("claim, edit", [
    ("version", _set("new_version", "v0.0.9")),
    ("version", _set("storage.git_sha", "0" * 40)),
    ("stage", _set("prod_version", "v0.0.1")),
    ("model", _set("storage.model_md5", "0" * 32)),
    ("data", _set("storage.data_md5", "0" * 32 + ".dir")),
    ("deletion", _set("deleted_sample_ids", lambda ids: ids[1:])),
    ("metrics", _set("metrics_after.RA", lambda v: v - 0.05)),
    ("metrics", _set("metrics_before.TA", lambda v: v + 0.05)),
])
def test_verify_fails_on_a_tampered_claim(done, tmp_path, capsys, claim, edit):
    rt, request_id = done
    path, repo = tampered(rt, request_id, tmp_path, edit_receipt=edit)
    assert run_verify(rt, path, repo) == 1
    assert f"FAILED: {claim}:" in capsys.readouterr().out


def test_verify_fails_on_an_edited_unsigned_receipt(done, tmp_path, capsys):
    rt, request_id = done
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    receipt["metrics_after"]["RA"] = 1.0
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(receipt))
    assert run_verify(rt, path) == 1
    assert "FAILED: signature: content hash" in capsys.readouterr().out


def test_verify_fails_on_another_key(done, tmp_path, capsys):
    from adapters.signing import ReceiptSigner

    rt, request_id = done
    other = ReceiptSigner.for_state(tmp_path / "other-state")
    path, repo = tampered(rt, request_id, tmp_path, edit_receipt=lambda r: r.update(other.sign(r)), resign=False)
    assert run_verify(rt, path, repo) == 1
    assert "FAILED: signature: signature invalid" in capsys.readouterr().out


def test_verify_fails_on_an_edited_lineage(done, tmp_path, capsys):
    rt, request_id = done

    def edit(ws):
        lineage = ws.path / "lineage" / "mnist-cnn" / "v1.json"
        lineage.write_text(lineage.read_text().replace('"method": "train"', '"method": "other"'))

    path, repo = tampered(rt, request_id, tmp_path, edit_registry=edit)
    assert run_verify(rt, path, repo) == 1
    assert "FAILED: lineage: lineage/mnist-cnn/v1.json was changed" in capsys.readouterr().out


def test_verify_fails_on_model_bytes_swapped_in_the_bucket(done, capsys):
    rt, request_id = done
    version = rt.registry.version("mnist-cnn", 2)
    client, key = rt.s3.client(), rt.registry._remote_key(version.model_md5)
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=original[:-8] + b"tampered")
    try:
        assert run_verify(rt, request_id) == 1
        assert "FAILED: model: pulled model bytes have md5" in capsys.readouterr().out
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)


def test_verify_fails_when_a_later_data_version_brings_a_deleted_sample_back(done, tmp_path, capsys):
    rt, request_id = done
    deleted = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())["deleted_sample_ids"]

    def edit(ws):
        from unlearn_core.data import build_mnist5k

        shutil.rmtree(ws.path / "data", ignore_errors=True)
        build_mnist5k(ws.path / "data")  # the original dataset, deleted digits included
        ws._dvc("add", "-q", "data")
        ws._dvc("push", "-q", "data.dvc")
        ws._git("add", "data.dvc")

    path, repo = tampered(rt, request_id, tmp_path, edit_registry=edit)
    assert run_verify(rt, path, repo) == 1
    out = capsys.readouterr().out
    assert "FAILED: deletion:" in out and "is not tombstoned in data" in out and deleted


@pytest.mark.parametrize("make_arg, field", [
    (lambda tmp: (tmp / "r.json").write_text("{not json") and tmp / "r.json", "receipt"),
    (lambda tmp: (tmp / "r.json").write_text('{"a": 1}') and tmp / "r.json", "receipt"),
    (lambda tmp: "no-such-request", "request_id"),
])
def test_verify_bad_input_is_a_clear_error(done, tmp_path, capsys, make_arg, field):
    rt, _ = done
    assert run_verify(rt, make_arg(tmp_path)) == 2
    assert f"error: {field}:" in capsys.readouterr().err


def test_verify_unreachable_registry_or_remote(done, tmp_path, capsys, monkeypatch):
    rt, request_id = done
    assert run_verify(rt, request_id, registry=tmp_path / "nowhere") == 2
    assert "error: --registry: cannot clone" in capsys.readouterr().err
    monkeypatch.setenv("UNLEARNOPS_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert run_verify(rt, request_id) == 2
    assert "error: remote: S3 remote unreachable" in capsys.readouterr().err


def test_retention_erases_superseded_models_and_old_receipts_still_verify(done, tmp_path, capsys):
    """A second deletion supersedes v0.0.2 (and v0.0.1); after the grace period retention erases
    both models; the first receipt still verifies, naming what it could not re-check."""
    from adapters.registry import Superseded
    from adapters.runtime import Runtime
    from flows.process_request import process_request
    from flows.retention import retention
    from signed import submit_signed

    rt0, first = done
    shutil.copytree(rt0.state_dir, tmp_path / "state", symlinks=True)
    params = yaml.safe_load((tmp_path / "state" / "params.yaml").read_text())
    params["gates"]["per_method"]["retrain"] = {"max_ra_drop": 0.1, "max_ta_drop": 0.1}  # 1-epoch seed noise
    (tmp_path / "state" / "params.yaml").write_text(yaml.safe_dump(params))
    rt = Runtime.from_env(tmp_path / "state")
    body = {"subject_id": "data-subject", "kind": "subject", "model": "mnist-cnn",
            "forget": {"subject": "subject-0007"}, "method": "retrain"}
    second, _ = submit_signed(rt, json.dumps(body).encode())
    assert process_request(request_id=second, state_dir=str(rt.state_dir))["new_version"] == "v0.0.3"
    deprecated = rt.registry.deprecated_at("mnist-cnn")
    assert sorted(deprecated) == ["v0.0.1", "v0.0.2"]  # GTO deprecation at promotion
    with pytest.raises(Superseded):
        rt.registry.promote("mnist-cnn", 2)

    assert retention(state_dir=str(rt.state_dir)) == []  # within the 30-day grace period: nothing erased
    capsys.readouterr()
    assert run_verify(rt, second, None, "--recompute") == 0  # retrain re-derives v0.0.3 from its dataset version
    assert "  recompute ok" in capsys.readouterr().out
    assert run_verify(rt, first, None, "--recompute") == 0  # v0.0.2's dataset version went with the 2nd deletion
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  recompute "))
    assert "not re-checked" in line and "mnist-cnn v0.0.2 cannot be re-derived: its input 'dataset version'" in line
    assert "was erased when a later deletion superseded it" in line
    old_md5 = rt.registry.version("mnist-cnn", 2).model_md5
    assert _md5_file(rt.registry_dir / "inputs" / "mnist-cnn" / "parent.pt") == old_md5  # v0.0.3's stage input
    assert retention(state_dir=str(rt.state_dir), now=time.time() + 31 * 86400) == ["mnist-cnn v0.0.1",
                                                                                   "mnist-cnn v0.0.2"]
    with pytest.raises(rt.s3.client().exceptions.ClientError):
        rt.s3.client().head_object(Bucket=BUCKET, Key=rt.registry._remote_key(old_md5))
    assert not (rt.registry_dir / ".dvc" / "cache" / "files" / "md5" / old_md5[:2] / old_md5[2:]).exists()
    receipt = json.loads((rt.receipts_dir / f"{first}.json").read_text())
    assert [e["event"] for e in receipt["audit"]] == ["model_erased"]
    assert "model_erased" in (rt.receipts_dir / f"{first}.md").read_text()
    assert retention(state_dir=str(rt.state_dir), now=time.time() + 31 * 86400) == []  # idempotent

    capsys.readouterr()
    assert run_verify(rt, first) == 0
    out = capsys.readouterr().out
    assert "stage     ok" in out and "prod is now v0.0.3" in out
    assert "model     not re-checked" in out and "erased by retention" in out
    assert "data      not re-checked" in out and "metrics   not re-checked" in out
    assert run_verify(rt, second) == 0  # the current version: its parent's bytes are the only ones gone
    out = capsys.readouterr().out
    assert "FAILED" not in out and "metrics_before: model bytes erased by retention" in out
    assert not (rt.registry_dir / "inputs" / "mnist-cnn" / "parent.pt").exists()  # the work tree's copy went too
    assert run_verify(rt, second, None, "--recompute") == 0  # erasure wins: the stage refuses, naming the erasure
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  recompute "))
    assert "not re-checked" in line and "mnist-cnn v0.0.3 cannot be re-derived: its input 'parent model'" in line
    assert "was erased by retention at" in line
