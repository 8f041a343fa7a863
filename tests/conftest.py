"""Shared fixtures: the real MNIST-5k data and one small trained CNN per session.

Area-specific fixtures (S3 server, Prefect harness, ...) live in
``tests/fixtures_*.py`` plugin modules listed in ``pytest_plugins`` below.
"""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

from unlearn_core.training import PINNED_CPU_KERNELS

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="unlearnops-test-prefect-")  # before any Prefect import
os.environ.update(PINNED_CPU_KERNELS)  # as `unlearn` does (flows/cli.py), before the first tensor operation
torch.set_num_threads(min(2, os.cpu_count() or 1))

pytest_plugins: list[str] = ["fixtures_s3", "fixtures_prefect", "fixtures_postgres"]  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    from unlearn_core.data import build_mnist5k

    return build_mnist5k(tmp_path_factory.mktemp("mnist5k") / "data")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from unlearn_core.data import load_dataset

    return load_dataset(mnist_dir)


@pytest.fixture(scope="session")
def trained_cnn(mnist):
    """The authors' MNIST CNN trained 2 epochs on all 4,000 training digits (~12 s on 2 cores).

    Shared and read-only: methods return new models and never modify their input.
    """
    from unlearn_core.models import build_model
    from unlearn_core.training import train_classifier

    torch.manual_seed(0)  # the initial weights, whichever test builds the fixture first
    model = build_model("mnist_cnn")
    return train_classifier(model, mnist.train.x, mnist.train.y, epochs=2, lr=1e-3, seed=0)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module of many tiny-model steps: on a loaded 2-core machine two threads
    ran the LM tests 8-12x slower (thread contention), with identical results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
