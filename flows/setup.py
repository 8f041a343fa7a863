"""``unlearn init``: a fresh pipeline state with the base model as the first prod version."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flows.process_request import code_version
from flows.runtime import Runtime
from flows.services import EmbeddedS3
from unlearn_core.config import load_params
from unlearn_core.data import build_mnist5k
from unlearn_core.errors import InputError
from unlearn_core.stages import evaluate, prepare, train


def ensure_s3(rt: Runtime):
    """The configured S3 (env) or the embedded one under the state dir, started if needed."""
    import os

    if os.environ.get("UNLEARNOPS_S3_ENDPOINT"):
        return rt.s3
    return EmbeddedS3(rt.state_dir).ensure_started()


def init_pipeline(state_dir: str | Path, params_path: str | Path = "params.yaml", model_name: str = "mnist-cnn",
                  progress=print) -> Runtime:
    params = load_params(params_path)  # validate before anything is written
    rt = Runtime.from_env(state_dir)
    if rt.registry_dir.exists() and any(rt.registry_dir.iterdir()):
        raise InputError("state_dir", f"{rt.state_dir} already holds a pipeline (registry at {rt.registry_dir})")
    rt.state_dir.mkdir(parents=True, exist_ok=True)
    rt.substitute_root.mkdir(parents=True, exist_ok=True)
    ensure_s3(rt)
    if Path(params_path).exists():
        shutil.copyfile(params_path, rt.params_path)
    else:
        rt.params_path.write_text("{}\n")
    with tempfile.TemporaryDirectory(dir=rt.state_dir) as tmp:
        tmp = Path(tmp)
        p = params.prepare
        progress("building MNIST-5k dataset ...")
        data_dir = build_mnist5k(tmp / "data", p.test_fraction, p.samples_per_subject, p.seed)
        prepare(data_dir, tmp / "prepared")
        progress(f"training base model ({params.train.model}, {params.train.epochs} epochs) ...")
        train(tmp / "prepared", params, tmp / "model.pt")
        metrics = evaluate(tmp / "prepared", tmp / "model.pt", tmp / "metrics.json", tmp / "per_class.csv")
        progress(f"base model test accuracy {metrics['test_acc']:.4f}; registering as {model_name} v0.0.1 ...")
        rt.registry.init_from(data_dir, tmp / "model.pt", model_name,
                              {"arch": params.train.model, "method": "train", "params": params.train.model_dump(),
                               "metrics_after": metrics, "code_version": code_version()})
    return rt
