"""A GAN deletion request through the flow: cascaded unlearning, GAN gates, versioning, receipt."""
from __future__ import annotations

import json

import pytest
import yaml

from signed import submit_signed
from flows.process_request import process_request

TINY_GAN = {"gan": {"epochs": 2, "reference_epochs": 1}}


@pytest.fixture(scope="module")
def gan_pipeline(tmp_path_factory, s3, prefect_api, pipeline_template):
    """A state serving only mnist-gan (a 2-epoch DCGAN), built once for this module."""
    from flows.setup import init_pipeline

    root = tmp_path_factory.mktemp("gan-pipeline")
    params = yaml.safe_load((pipeline_template / "params.yaml").read_text())
    for section, values in TINY_GAN.items():
        params[section].update(values)
    # a 2-epoch GAN is too weak for the production gates; this test is about routing and versioning
    params["gan_gates"].update({"n_samples": 500, "max_class_rate": 0.5, "max_fid_ratio": 5.0})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return init_pipeline(root / "state", root / "params.yaml", models=["mnist-gan"], progress=lambda *_: None)


def test_gan_class_deletion_through_the_flow(gan_pipeline):
    rt = gan_pipeline
    payload = {"subject_id": "governance", "kind": "class", "model": "mnist-gan", "forget": {"class": 7}}
    request_id, _ = submit_signed(rt, json.dumps(payload).encode())
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
    first = receipt["attempts"][0]
    assert first["method"] == "cascade_gan"
    details = first["details"]
    # D now scores class 7 like held-out images of the other classes (forget_target: holdout, stop rule)
    assert details["d_forget_after"] <= details["d_holdout_after"] + 0.02, details
    assert outcome["status"] == "done", [(a["method"], a["metrics"], a["gates"]) for a in receipt["attempts"]]
    versions = rt.registry.versions("mnist-gan")
    assert [v.semver for v in versions] == ["v0.0.1", "v0.0.2"]
    assert versions[-1].lineage["family"] == "gan" and versions[-1].stages == ["prod"]
    assert versions[-1].lineage["gates"]["passed"]


def test_gan_request_for_unknown_model_is_refused(gan_pipeline):
    from unlearn_core.errors import InputError

    payload = {"subject_id": "s", "kind": "class", "model": "mnist-cnn", "forget": {"class": 7}}
    with pytest.raises(InputError, match="model"):
        submit_signed(gan_pipeline, json.dumps(payload).encode())  # this state serves no classifier
