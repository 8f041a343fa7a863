"""CLI bad-input contract and the DVC pipeline rebuilding the base model in a fresh clone."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `unlearn` for dvc's stage commands
    return env


def test_unknown_class_exits_2_and_writes_nothing(tmp_path, capsys, mnist_dir):
    out = tmp_path / "bench"
    assert main(["bench", "lra-npp", "--classes", "11", "--data", str(mnist_dir), "--out", str(out)]) == 2
    assert "--classes: class 11 is not in the label set 0..9" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("params_text, field", [
    ("train:\n  epochs: many\n", "params.yaml: train.epochs"),
    ("train:\n  model: vgg\n", "params.yaml: train.model"),
    ("prepare:\n  dataset: imagenet\n", "params.yaml: prepare.dataset"),
    ("lra_npp:\n  scope: everything\n", "params.yaml: lra_npp.scope"),
])
def test_bad_params_name_the_field(tmp_path, capsys, params_text, field):
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    out = tmp_path / "data"
    assert main(["data", "build", "--params", str(params), "--out", str(out)]) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_dvc_repro_rebuilds_base_model_in_a_fresh_clone(tmp_path, mnist_dir):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # the clone's code must be the working tree under test, not only what is committed
    for name in ("dvc.yaml", "params.yaml", "data.dvc"):
        shutil.copy(REPO / name, clone / name)
    shutil.copytree(mnist_dir, clone / "data")
    env = cli_env()
    # a deterministic build hashes to exactly the committed data.dvc
    subprocess.run(["dvc", "add", "-q", "data"], cwd=clone, env=env, check=True)
    assert (clone / "data.dvc").read_text() == (REPO / "data.dvc").read_text()
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["dvc", "repro", "-q", "evaluate"], cwd=clone, env=env, check=True)  # the classifier chain
    metrics = json.loads((clone / "metrics" / "base.json").read_text())
    assert metrics["n_train"] == 4000 and metrics["test_acc"] > 0.8
    assert (clone / "models" / "base.pt").stat().st_size > 1_000_000
    rows = (clone / "metrics" / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,test_acc,n" and len(rows) == 11
    again = subprocess.run(["dvc", "status", "evaluate"], cwd=clone, env=env, capture_output=True, text=True,
                           check=True)
    assert "up to date" in again.stdout
