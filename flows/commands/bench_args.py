"""Arguments and inputs shared by the ``unlearn bench ...`` sub-commands."""
from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """``--classes 0,3,8`` / ``--sizes 5000,60000`` (argparse names the flag in its error)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def load_bench_dataset(data_dir):
    """The dataset directory given, or MNIST-5k built in a temporary directory."""
    import tempfile

    from unlearn_core.data import build_mnist5k, load_dataset

    if data_dir:
        return load_dataset(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return load_dataset(build_mnist5k(tmp))
