"""One Prefect test harness per session (a real, temporary Prefect API) and a pipeline state.

``PREFECT_HOME`` points at a temporary directory (set in conftest before any
Prefect import) so runs never persist into the user's ~/.prefect.
"""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

TEST_PARAMS = {"train": {"epochs": 1}}  # a 1-epoch base model keeps the session fast


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def pipeline_template(tmp_path_factory, s3, prefect_api):
    """An initialised state dir (base model v0.0.1 in prod), built once; tests work on copies."""
    from flows.setup import init_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    params = yaml.safe_load(open("params.yaml"))
    for section, values in TEST_PARAMS.items():
        params[section].update(values)
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    os.environ.update({"UNLEARNOPS_S3_ENDPOINT": s3.endpoint_url, "AWS_ACCESS_KEY_ID": s3.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3.secret_key, "UNLEARNOPS_S3_BUCKET": s3.bucket})
    init_pipeline(root / "state", params_path, models=["mnist-cnn"], progress=lambda *_: None)
    return root / "state"


@pytest.fixture
def pipeline(pipeline_template, tmp_path):
    """A private copy of the initialised state (registry repo + DVC cache, queue, params)."""
    from adapters.runtime import Runtime

    state = tmp_path / "state"
    shutil.copytree(pipeline_template, state, symlinks=True)
    return Runtime.from_env(state)
