"""The DVC pipeline in a fresh clone: `dvc repro` re-derives dvc.lock (byte for byte on the CPU model that
wrote it, the metrics within tolerance elsewhere), the train stage repeats its bytes, `dvc exp run -S` tries a
setting, and `unlearn stage check-metrics` compares metrics within the reproducibility tolerance.

The clone runs the classifier chain (prepare -> train -> evaluate) with the committed params, so it takes
about as long as base training (~75 s on 2 busy cores); the GAN stages are locked the same way but not rerun here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from unlearn_core.stages import metric_mismatches, prepare

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER_CHAIN = ("prepare", "train", "evaluate")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def run(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    """A git clone of this checkout (its working tree committed on top), data built, classifier chain reproduced."""
    clone = tmp_path_factory.mktemp("repro") / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):  # the working tree under test, not only what is committed
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, clone / name)
        elif (clone / name).exists():
            (clone / name).unlink()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(clone), GIT_AUTHOR_NAME="test",
               GIT_AUTHOR_EMAIL="test@example.com", GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `unlearn` for dvc's stage commands
    run(["git", "add", "-A"], clone, env)
    run(["git", "commit", "-q", "--allow-empty", "-m", "working tree under test"], clone, env)
    run(["unlearn", "data", "build"], clone, env)
    run(["dvc", "repro", "--force", "evaluate"], clone, env)  # --force: evaluate reruns too (its outs are in git)
    return clone, env


def assert_matches_lock(clone: Path, out: dict, stage: str) -> None:
    path = clone / out["path"]
    if out["md5"].endswith(".dir"):  # DVC's directory hash: md5 of its file listing, kept in the cache
        listing = clone / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
        assert md5(listing) == out["md5"].removesuffix(".dir")
        entries = json.loads(listing.read_text())
        assert sorted(e["relpath"] for e in entries) == sorted(
            str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        for entry in entries:
            assert md5(path / entry["relpath"]) == entry["md5"], f"{stage}: {out['path']}/{entry['relpath']}"
    else:
        assert md5(path) == out["md5"], f"{stage}: {out['path']} differs from dvc.lock"


def test_repro_in_a_fresh_clone_rebuilds_prepared_bytes_and_the_locked_metrics(clone):
    """`prepare` is integer work: its bytes equal dvc.lock on any machine. The trained model's bytes are
    the lock's only on the CPU model that wrote it (docs/dvc.md); elsewhere the metrics match within tolerance."""
    clone, env = clone
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for out in locked["prepare"]["outs"]:
        assert_matches_lock(clone, out, "prepare")
    relocked = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    assert relocked["prepare"] == locked["prepare"]
    assert relocked["train"]["deps"] == locked["train"]["deps"]  # train read exactly the locked prepared/
    assert relocked["train"]["params"] == locked["train"]["params"]
    if relocked["train"]["outs"] == locked["train"]["outs"]:  # the CPU model that wrote the lock: all bytes equal
        for stage in CLASSIFIER_CHAIN:
            for out in locked[stage].get("outs", []):
                assert_matches_lock(clone, out, stage)
        assert run(["git", "status", "--porcelain"], clone, env).stdout == ""
    else:  # another CPU model: dvc records the new bytes of train and evaluate, nothing else
        changed = {line[3:] for line in run(["git", "status", "--porcelain"], clone, env).stdout.splitlines()}
        assert changed <= {"dvc.lock", "metrics/base.json", "metrics/per_class.csv"}, changed
    status = run(["dvc", "status", "data.dvc", *CLASSIFIER_CHAIN], clone, env).stdout  # data/ as built
    assert "Data and pipelines are up to date" in status
    checked = run(["unlearn", "stage", "check-metrics"], clone, env).stdout.splitlines()
    assert len(checked) == 1 and checked[0].startswith("13 of 13 metrics match HEAD within tolerance")


def test_the_train_stage_repeats_its_bytes_on_one_machine(clone, tmp_path):
    clone, env = clone
    again = tmp_path / "models" / "base.pt"  # the same file name: torch.save names the archive's folder after it
    run(["unlearn", "stage", "train", "--prepared", "prepared", "--params", "params.yaml", "--model", str(again)],
        clone, env)
    assert md5(again) == md5(clone / "models" / "base.pt")


def test_an_experiment_tries_a_setting_and_reports_its_metrics(clone):
    clone, env = clone
    locked_acc = json.loads((REPO / "metrics" / "base.json").read_text())["test_acc"]
    run(["dvc", "exp", "run", "-S", "train.epochs=1", "-S", "reproducibility.tolerance.test_acc=0.0",
         "--name", "one-epoch", "evaluate"], clone, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone, env).stdout)
    exps = {e["name"]: e for commit in shown for e in (commit.get("experiments") or [])
            for e in (e.get("revs") or [])}
    data = exps["one-epoch"]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    acc = data["metrics"]["metrics/base.json"]["data"]["test_acc"]
    assert 0.8 < acc and acc != locked_acc
    params = json.loads(run(["dvc", "params", "diff", "--json"], clone, env).stdout)["params.yaml"]
    assert (params["train.epochs"]["old"], params["train.epochs"]["new"]) == (4, 1)
    metrics = json.loads(run(["dvc", "metrics", "diff", "--json"], clone, env).stdout)["metrics/base.json"]
    assert metrics["test_acc"]["new"] == acc and metrics["test_acc"]["old"] == locked_acc
    # with the tolerance of test_acc set to 0 above, the check names exactly that difference and fails
    checked = run(["unlearn", "stage", "check-metrics"], clone, env, check=False)
    assert checked.returncode == 1
    assert checked.stdout.splitlines()[0].startswith(f"metrics/base.json.test_acc: locked {locked_acc:.6g}, "
                                                     f"reproduced {acc:.6g}")


def test_prepare_writes_the_same_bytes_every_time(mnist_dir, tmp_path):
    prepare(mnist_dir, tmp_path / "a")
    prepare(mnist_dir, tmp_path / "b")
    for name in ("train.npz", "test.npz", "summary.json"):
        assert md5(tmp_path / "a" / name) == md5(tmp_path / "b" / name)
    blob = np.load(tmp_path / "a" / "train.npz")
    assert blob["x"].shape == (4000, 1, 28, 28) and blob["x"].dtype == np.uint8 and len(blob["ids"]) == 4000


def test_metric_mismatches_apply_the_tolerance_per_metric_name():
    locked = {"m.json": {"test_acc": 0.95, "fid_test": 12.0, "n_test": 1000}}
    tolerance = {"default": 0.0, "test_acc": 0.02, "fid_test": 1.0}
    assert metric_mismatches(locked, {"m.json": {"test_acc": 0.935, "fid_test": 12.9, "n_test": 1000}},
                             tolerance) == []
    out = metric_mismatches(locked, {"m.json": {"test_acc": 0.92, "fid_test": 12.0, "n_test": 999}}, tolerance)
    assert [line.split(":")[0] for line in out] == ["m.json.n_test", "m.json.test_acc"]
    assert metric_mismatches(locked, {"m.json": {"test_acc": 0.95, "fid_test": 12.0}}, tolerance) == [
        "m.json.n_test: locked 1000.0, reproduced None"]


def test_initial_weights_depend_on_the_seed_only():
    import torch

    from unlearn_core.gan import GanParams, build_gan
    from unlearn_core.models import build_model
    from unlearn_core.training import seeded

    rng_before = torch.get_rng_state()
    with seeded(3):
        first = build_model("mnist_cnn").state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's random stream is untouched
    torch.rand(7)  # whatever ran before must not matter
    with seeded(3):
        again = build_model("mnist_cnn").state_dict()
    with seeded(4):
        other = build_model("mnist_cnn").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])
    gan_a, gan_b = build_gan(GanParams(seed=1), 10), (torch.rand(3), build_gan(GanParams(seed=1), 10))[1]
    assert all(torch.equal(v, gan_b.state_dict()[k]) for k, v in gan_a.state_dict().items())
