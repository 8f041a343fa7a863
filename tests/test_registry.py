"""Registry workspace against real git, DVC, GTO and the session's rclone S3 server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters.registry import DuplicateVersion, ParentMoved, Superseded, PromoteError, PushError, RegistryWorkspace
from unlearn_core.data import load_dataset, load_images, read_manifest, tombstone
from unlearn_core.errors import InputError

NAME = "mnist-cnn"


def _model(path: Path, seed: int) -> Path:
    """A tiny stand-in for a checkpoint: the registry only moves bytes."""
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    return path


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def forget_ids(mnist_dir):
    return [r["sample_id"] for r in read_manifest(mnist_dir) if r["split"] == "train"][:3]


@pytest.fixture(scope="module")
def versioned(tmp_path_factory, s3, mnist_dir, forget_ids):
    """A workspace with v0.0.1 (prod, pushed) and v0.0.2 committed after deleting three samples."""
    tmp = tmp_path_factory.mktemp("registry")
    ws = RegistryWorkspace(tmp / "ws", s3)
    v1 = ws.init_from(mnist_dir, _model(tmp / "m1.pt", 1), NAME, {"code_version": "test", "metrics": {"ta": 0.9}})
    v2 = ws.commit_version(NAME, _model(tmp / "m2.pt", 2), "req-1", {"method": "retrain"}, forget_ids,
                           "v0.0.1", lambda d: tombstone(d, forget_ids, "req-1"))
    return ws, v1, v2, tmp


def test_init_commit_push_promote_clone(versioned, forget_ids, mnist_dir, s3):
    ws, v1, v2, tmp = versioned
    assert (v1.semver, v1.stages, v1.registered) == ("v0.0.1", ["prod"], True)
    assert (v2.semver, v2.stages, v2.registered) == ("v0.0.2", [], False)

    # the new dataset version no longer holds the deleted samples' bytes
    new = load_dataset(ws.data_dir())
    assert not set(forget_ids) & new.all_ids()
    old_images = load_images(mnist_dir)[0]
    rows = [r["row"] for r in read_manifest(mnist_dir) if r["sample_id"] in forget_ids]
    raw = stored_image_bytes(ws.data_dir())
    assert all(old_images[r].tobytes() not in raw for r in rows)
    assert v2.data_md5 != v1.data_md5 and v2.model_md5 != v1.model_md5

    # lineage carries the dvc md5s, the parent and the deleted ids (ids only)
    lin = v2.lineage
    import yaml

    data_md5 = (ws.path / "data.dvc").read_text().split("md5: ")[1].split()[0]
    lock = yaml.safe_load((ws.path / "dvc.lock").read_text())["stages"]
    assert lin["data"]["md5"] == data_md5 == v2.data_md5
    # the model is the output of its DVC stage, derived from the parent's bytes, the data and the request
    assert lin["model"]["md5"] == lock[NAME]["outs"][0]["md5"] == v2.model_md5
    assert {d["path"] for d in lock[NAME]["deps"]} == {f"inputs/{NAME}", f"derivations/{NAME}/request.json"}
    assert (ws.path / f"inputs/{NAME}/parent.pt").read_bytes() == (tmp / "m1.pt").read_bytes()
    assert json.loads((ws.path / f"inputs/{NAME}/dataset.json").read_text())["md5"] == v2.data_md5
    inputs = json.loads((ws.path / f"derivations/{NAME}/inputs.json").read_text())
    assert inputs["parent"] == {"path": "parent.pt", "version": "v0.0.1", "md5": v1.model_md5}
    assert inputs["dataset"]["md5"] == v2.data_md5
    assert inputs["forget_rows"]["dataset_md5"] == v1.data_md5  # no derivation given: re-running is refused
    assert not _git(ws.path, "status", "--porcelain").strip()
    assert lin["parent"]["version"] == "v0.0.1" and lin["parent"]["model_md5"] == v1.model_md5
    assert lin["data_before_md5"] == v1.data_md5
    assert lin["deleted_sample_ids"] == sorted(forget_ids) and lin["request_id"] == "req-1"

    with pytest.raises(PromoteError, match="missing from the remote"):
        ws.promote(NAME, v2)
    assert ws.prod(NAME).semver == "v0.0.1"
    ws.push()
    assert ws.missing_on_remote(NAME, v2) == []
    ws.promote(NAME, v2)
    assert ws.prod(NAME).semver == "v0.0.2"
    with pytest.raises(Superseded, match="v0.0.2, a later version"):
        ws.promote(NAME, v1)  # v0.0.1 lacks the deletion v0.0.2 made: prod never moves back
    assert ws.prod(NAME).semver == "v0.0.2"
    tags = _git(ws.path, "tag", "-l").split()
    ws.promote(NAME, v2)  # idempotent: no new tag
    assert _git(ws.path, "tag", "-l").split() == tags and f"{NAME}@v0.0.2" in tags
    assert [(v.semver, v.stages, v.registered) for v in ws.versions(NAME)] == [
        ("v0.0.1", [], False), ("v0.0.2", ["prod"], True)]  # v0.0.1 deprecated (deregistered) by the promotion
    assert list(ws.deprecated_at(NAME)) == ["v0.0.1"]
    assert ws.model_path(NAME).read_bytes() == (tmp / "m2.pt").read_bytes()
    assert ws.model_path(NAME, "v0.0.1").read_bytes() == (tmp / "m1.pt").read_bytes()

    # a fresh clone + dvc pull from the bucket gives the exact bytes, at HEAD and at a GTO tag
    clone = ws.clone_and_pull(tmp / "clone")
    assert (clone / f"models/{NAME}/model.pt").read_bytes() == (tmp / "m2.pt").read_bytes()
    assert not set(forget_ids) & load_dataset(clone / "data").all_ids()
    old = ws.clone_and_pull(tmp / "clone-v1", rev=v1.tag)
    assert (old / f"models/{NAME}/model.pt").read_bytes() == (tmp / "m1.pt").read_bytes()

    # keys: only in the git-ignored 0600 config.local, never in git history, tags or lineage
    assert oct((ws.path / ".dvc/config.local").stat().st_mode & 0o777) == "0o600"
    assert s3.endpoint_url in (ws.path / ".dvc/config").read_text()
    assert ws.remote_url in (ws.path / ".dvc/config").read_text()
    history = _git(ws.path, "log", "-p", "--all") + _git(ws.path, "tag", "-l", "-n99")
    history += "".join(p.read_text() for p in (ws.path / "lineage").rglob("*.json"))
    assert "v0.0.1" in history
    for secret in (s3.access_key, s3.secret_key):
        assert secret not in history
    assert ".dvc/config.local" not in _git(ws.path, "ls-files")


def test_bad_input_writes_nothing(versioned, tmp_path, s3):
    ws, _, _, tmp = versioned
    head = _git(ws.path, "rev-parse", "HEAD")
    model = _model(tmp_path / "m.pt", 3)
    cases = [
        (dict(deleted_sample_ids=["not-a-sample-id"]), "deleted_sample_ids"),
        (dict(lineage={"note": s3.secret_key}), "lineage"),
        (dict(lineage={"sample": b"\x00\x01"}), "lineage"),
        (dict(request_id="../../etc"), "request_id"),
        (dict(model_name="no-such-model"), "model_name"),
    ]
    for override, field in cases:
        kwargs = dict(model_name=NAME, model_path=model, request_id="req-x", lineage={}, deleted_sample_ids=[],
                      parent="v0.0.2")
        kwargs.update(override)
        with pytest.raises(InputError) as err:
            ws.commit_version(**kwargs)
        assert err.value.field == field
    with pytest.raises(InputError, match="project checkout"):
        RegistryWorkspace(Path(__file__).parent / "ws", s3)
    with pytest.raises(InputError, match="already a registry workspace"):
        ws.init_from(ws.data_dir(), model, NAME, {})

    def broken_change(data_dir):
        next(data_dir.glob("shards/*/images.npy")).write_bytes(b"half-written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ws.commit_version(NAME, model, "req-y", {}, [], "v0.0.2", broken_change)
    assert _git(ws.path, "rev-parse", "HEAD") == head
    assert _git(ws.path, "status", "--porcelain") == ""
    assert load_dataset(ws.data_dir()).train.x.shape[0] > 0


def test_s3_down_during_push(tmp_path, mnist_dir, forget_ids):
    """A real outage: the S3 server is stopped, then started again on the same port."""
    from adapters.services import EmbeddedS3

    server = EmbeddedS3(tmp_path / "state")
    s3 = server.ensure_started()
    try:
        ws = RegistryWorkspace(tmp_path / "ws", s3)  # 2 attempts, the default: one busy moment is not an outage
        ws.init_from(mnist_dir, _model(tmp_path / "m1.pt", 1), NAME, {})
        v2 = ws.commit_version(NAME, _model(tmp_path / "m2.pt", 2), "req-2", {}, forget_ids[:1],
                               "v0.0.1", lambda d: tombstone(d, forget_ids[:1], "req-2"))
        assert server.stop()
        with pytest.raises(PushError, match="push"):
            ws.push()
        with pytest.raises(PromoteError, match="not promoted"):
            ws.promote(NAME, v2)
        assert ws.prod(NAME).semver == "v0.0.1"
        assert ws.model_path(NAME).read_bytes() == (tmp_path / "m1.pt").read_bytes()

        # another request meanwhile: derived from the head v0.0.2 (which holds req-2's deletion), not prod
        with pytest.raises(ParentMoved, match="head is now v0.0.2"):
            ws.commit_version(NAME, _model(tmp_path / "m3.pt", 3), "req-3", {}, [], "v0.0.1")
        v3 = ws.commit_version(NAME, _model(tmp_path / "m3.pt", 3), "req-3", {}, [], "v0.0.2")
        assert v3.lineage["parent"]["version"] == "v0.0.2"
        assert v3.lineage["data_before_md5"] == v2.data_md5

        assert server.ensure_started().endpoint_url == s3.endpoint_url
        ws.push(v3)  # only v0.0.3's own objects
        assert ws.missing_on_remote(NAME, v3) == []
        assert ws.missing_on_remote(NAME, v2) != []  # v0.0.2's model is not part of v0.0.3
        ws.promote(NAME, v3)
        assert ws.prod(NAME).semver == "v0.0.3"
        ws.push(v2)
        with pytest.raises(Superseded):
            ws.promote(NAME, v2)  # its worker came back late: v0.0.3 already holds its deletion
        assert ws.prod(NAME).semver == "v0.0.3"
    finally:
        server.stop()
    log = (tmp_path / "state/s3/rclone.log").read_text()
    assert s3.secret_key not in log and s3.secret_key not in json.dumps(ws.prod(NAME).lineage)
    assert not os.path.exists(tmp_path / "state/s3/rclone.pid")


def test_one_version_per_request_and_guard(tmp_path, s3, mnist_dir, forget_ids):
    """The registry refuses a second version for one request id; a failing guard writes nothing."""
    ws = RegistryWorkspace(tmp_path / "ws", s3)
    ws.init_from(mnist_dir, _model(tmp_path / "m1.pt", 1), NAME, {})
    v2 = ws.commit_version(NAME, _model(tmp_path / "m2.pt", 2), "req-a", {}, forget_ids[:1], "v0.0.1")
    assert ws.version_for_request(NAME, "req-a").semver == "v0.0.2" and ws.head(NAME).semver == "v0.0.2"
    with pytest.raises(DuplicateVersion) as dup:
        ws.commit_version(NAME, _model(tmp_path / "m3.pt", 3), "req-a", {}, forget_ids[:1], "v0.0.2")
    assert dup.value.version.semver == v2.semver
    head = _git(ws.path, "rev-parse", "HEAD")

    def lost_lease():
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        ws.commit_version(NAME, _model(tmp_path / "m3.pt", 3), "req-b", {}, forget_ids[1:2], "v0.0.2",
                          lambda d: tombstone(d, forget_ids[1:2], "req-b"), guard=lost_lease)
    assert _git(ws.path, "rev-parse", "HEAD") == head and _git(ws.path, "status", "--porcelain") == ""
    assert forget_ids[1] in load_dataset(ws.data_dir()).all_ids()
    assert [v.semver for v in ws.versions(NAME)] == ["v0.0.1", "v0.0.2"]


def test_purge_keeps_the_data_of_another_models_unpromoted_version(tmp_path, s3, mnist_dir, forget_ids):
    """Two models share the dataset: model A's version, committed but not yet promoted, keeps its
    dataset version while model B's request promotes and erases superseded data; then A promotes."""
    ws = RegistryWorkspace(tmp_path / "ws", s3, {"remote_prefix": "purge-race"})
    ws.init_from(mnist_dir, _model(tmp_path / "a1.pt", 1), "model-a", {})
    ws.add_model("model-b", _model(tmp_path / "b1.pt", 2), {})
    a2 = ws.commit_version("model-a", _model(tmp_path / "a2.pt", 3), "req-a", {}, forget_ids[:1], "v0.0.1",
                           lambda d: tombstone(d, forget_ids[:1], "req-a"))
    b2 = ws.commit_version("model-b", _model(tmp_path / "b2.pt", 4), "req-b", {}, forget_ids[1:2], "v0.0.1",
                           lambda d: tombstone(d, forget_ids[1:2], "req-b"))
    ws.push(b2)
    ws.promote("model-b", b2)
    erased = ws.purge_superseded_data()
    assert a2.data_md5 not in erased and erased  # the base dataset goes; A's pending one stays
    ws.push(a2)
    ws.promote("model-a", a2)
    assert ws.prod("model-a").semver == "v0.0.2"
    assert a2.data_md5 in ws.purge_superseded_data()  # promoted and superseded: now it goes too


def test_purge_superseded_data_erases_old_dataset_bytes(versioned, forget_ids, mnist_dir, s3):
    ws, v1, v2, tmp = versioned
    ws.push()
    touched = {r["shard"] for r in _rows_by_shard(mnist_dir) if r["sample_id"] in forget_ids}
    old_images = [_md5_of(mnist_dir / "shards" / s / "images.npy") for s in sorted(touched)]
    untouched = next(s for s in sorted(p.name for p in (mnist_dir / "shards").iterdir()) if s not in touched)
    shared = _md5_of(mnist_dir / "shards" / untouched / "images.npy")
    client = s3.client()
    key = lambda md5: f"registry/files/md5/{md5[:2]}/{md5[2:]}"  # noqa: E731
    for md5 in old_images:  # v0.0.1's shards that held the deleted samples
        assert client.head_object(Bucket=s3.bucket, Key=key(md5))
    erased = ws.purge_superseded_data()
    assert set(old_images) <= set(erased) and shared not in erased
    for md5 in old_images:
        with pytest.raises(Exception, match="404|Not Found"):
            client.head_object(Bucket=s3.bucket, Key=key(md5))
        assert not (ws.path / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()
    assert client.head_object(Bucket=s3.bucket, Key=key(shared))  # a shard both versions share stays
    with pytest.raises(PromoteError, match="not promoted"):
        ws.promote(NAME, v1)  # superseded, and its data is erased: never prod again
    current = ws.clone_and_pull(tmp / "after-purge")  # the current dataset still pulls in full
    assert not set(forget_ids) & load_dataset(current / "data").all_ids()
    model_v1 = ws.clone_and_pull(tmp / "after-purge-v1", rev=f"{NAME}@v0.0.1", targets=[f"models/{NAME}/model.pt"])
    assert (model_v1 / f"models/{NAME}/model.pt").read_bytes() == (tmp / "m1.pt").read_bytes()


def test_dvc_repro_refuses_a_version_whose_method_read_the_deleted_rows(versioned, tmp_path):
    """v0.0.2's method read the forget rows (no derivation says otherwise): in a clone, `dvc repro`
    stops in the inputs stage with a sentence naming the erased input, before running anything."""
    ws, v1, v2, tmp = versioned
    ws.push()
    clone = ws.clone_and_pull(tmp_path / "clone", rev=v2.git_sha, targets=["data.dvc", f"inputs/{NAME}"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["dvc", "repro", "-f", NAME], cwd=clone, env=env, capture_output=True, text=True)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{NAME} v0.0.2 cannot be re-derived: its input 'forget rows'" in out
    assert f"in dataset version {v1.data_md5}) was erased with the dataset version before this deletion" in out
    assert "Erasure wins" in out and "Running stage 'mnist-cnn':" not in out
    assert (clone / f"models/{NAME}/model.pt").exists() is False  # nothing derived


def _md5_of(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_writer_killed_mid_commit_is_undone_by_the_next(tmp_path, s3, mnist_dir, forget_ids):
    """A dead writer's half-tombstoned data and stale git lock never reach the next version."""
    ws = RegistryWorkspace(tmp_path / "ws", s3, {"remote_prefix": "killed-writer"})
    ws.init_from(mnist_dir, _model(tmp_path / "m1.pt", 1), NAME, {})
    tombstone(ws.data_dir(), forget_ids[:2], "req-dead")  # what the killed writer got through
    (tmp_path / ".ws.writing").touch()
    (ws.path / ".git" / "index.lock").touch()
    v2 = ws.commit_version(NAME, _model(tmp_path / "m2.pt", 2), "req-next", {}, forget_ids[2:3], "v0.0.1",
                           lambda d: tombstone(d, forget_ids[2:3], "req-next"))
    assert v2.lineage["deleted_sample_ids"] == sorted(forget_ids[2:3])
    ids = load_dataset(ws.data_dir()).all_ids()
    assert forget_ids[0] in ids and forget_ids[1] in ids and forget_ids[2] not in ids
    assert not (ws.path / ".git" / "index.lock").exists() and not (tmp_path / ".ws.writing").exists()


def stored_image_bytes(data_dir) -> bytes:
    """Every image byte a dataset directory stores, all shards."""
    return b"".join(p.read_bytes() for p in sorted(Path(data_dir).glob("shards/*/images.npy")))


def _rows_by_shard(data_dir: Path) -> list[dict]:
    import csv

    return [{**row, "shard": shard.name} for shard in sorted((data_dir / "shards").iterdir())
            for row in csv.DictReader(open(shard / "manifest.csv", newline=""))]
