"""`unlearn registry derive`'s core: a version re-derived from its recorded inputs alone, and the refusals.

The registry writes these files at each commit (tests/test_registry.py, tests/test_verify.py run it
through DVC); here they are written by hand so each case is one small, fast run.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from unlearn_core.errors import InputError
from unlearn_core.rederive import ErasedInput, check_not_erased, rederive

NAME = "mnist-cnn"
CLASS = 3


def _layout(root, mnist_dir, parent_path, method, config, inputs, substitute=None):
    shutil.copytree(mnist_dir, root / "data")
    spec = root / "derivations" / NAME
    spec.mkdir(parents=True)
    (spec / "params.json").write_text(json.dumps({"method": method, "config": config, "family": "classifier",
                                                  "arch": "mnist_cnn", "version": "v0.0.2"}))
    (spec / "request.json").write_text(json.dumps({"kind": "class", "forget": {"class": CLASS}}))
    (spec / "inputs.json").write_text(json.dumps(inputs))
    folder = root / "inputs" / NAME
    folder.mkdir(parents=True)
    shutil.copyfile(parent_path, folder / "parent.pt")
    if substitute is not None:
        np.save(folder / "substitute.npy", substitute)


@pytest.fixture(scope="module")
def parent_path(trained_cnn, tmp_path_factory):
    from unlearn_core.models import save_model

    path = tmp_path_factory.mktemp("parent") / "parent.pt"
    save_model(trained_cnn, "mnist_cnn", 10, 1, path)
    return path


def test_lra_npp_version_is_re_derived_from_parent_and_substitutes_byte_for_byte(tmp_path, mnist_dir, mnist,
                                                                               parent_path):
    from unlearn_core.models import load_model
    from unlearn_core.training import accuracy

    held_out = (mnist.test.x[mnist.test.y == CLASS] * 255).round().byte().numpy()
    inputs = {"parent": {"path": "parent.pt", "version": "v0.0.1", "md5": "-"},
              "substitute": {"path": "substitute.npy", "md5": "-", "rows": len(held_out)}}
    for run in ("a", "b"):
        _layout(tmp_path / run, mnist_dir, parent_path, "lra_npp", {}, inputs, held_out)
        assert rederive(tmp_path / run, NAME)["method"] == "lra_npp"
    first, second = ((tmp_path / run / "models" / NAME / "model.pt").read_bytes() for run in ("a", "b"))
    assert first == second  # one process, pinned threads: the same bytes every run
    model = load_model(tmp_path / "a" / "models" / NAME / "model.pt", "cpu")[0]
    in_class = mnist.train.subset(np.flatnonzero(mnist.train.y.numpy() == CLASS))
    assert accuracy(model, in_class) <= 0.05  # it really forgot the class, from the substitutes alone


def test_a_method_that_read_the_forget_rows_is_refused_naming_the_erased_input(tmp_path, mnist_dir, parent_path):
    inputs = {"parent": {"path": "parent.pt", "version": "v0.0.1", "md5": "-"},
              "forget_rows": {"dataset_md5": "abc.dir", "method": "salun", "erased": "when it was done"}}
    _layout(tmp_path, mnist_dir, parent_path, "salun", {}, inputs)
    with pytest.raises(ErasedInput, match=r"mnist-cnn v0.0.2 cannot be re-derived: its input 'forget rows' "
                                          r"\(the rows method salun read, in dataset version abc.dir\)"):
        check_not_erased(tmp_path, NAME)
    with pytest.raises(ErasedInput):
        rederive(tmp_path, NAME)
    assert not (tmp_path / "models").exists()


def test_retained_only_requests_serve_retain_set_methods_and_refuse_the_others(mnist, trained_cnn):
    from unlearn_core.families.classifier import ClassifierFamily
    from unlearn_core.config import Params
    from unlearn_core.methods import get_method

    request = ClassifierFamily(Params(), "mnist_cnn", None).retained_request(
        {"kind": "samples", "forget": {"sample_ids": ["x"]}}, mnist, "mnist_cnn")
    assert request.retained_only and not request.forget_mask.any() and len(request.retain) == len(mnist.train)
    with pytest.raises(InputError, match="method: 'salun' reads the forget set"):
        get_method("salun")(trained_cnn, {}, "cpu").unlearn(request)
    with pytest.raises(InputError, match="forget: the forget set is empty"):  # a real request still needs rows
        get_method("retrain")(trained_cnn, {"epochs": 1}, "cpu").check(
            dataclasses.replace(request, retained_only=False))


def test_missing_derivation_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="model: 'mnist-cnn' has no derivation"):
        rederive(tmp_path, NAME)
