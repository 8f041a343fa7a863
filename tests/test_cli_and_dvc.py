"""CLI bad-input contract (the DVC pipeline in a fresh clone: test_dvc_repro.py)."""
from __future__ import annotations

import pytest

from flows.cli import main


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
