"""``unlearn init``: a fresh pipeline state with each served model's base version in prod."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from adapters.runtime import code_version
from adapters.receipts import publish_public_key
from adapters.runtime import Runtime
from adapters.signing import ReceiptSigner
from adapters.services import EmbeddedS3
from unlearn_core.config import load_params
from unlearn_core.data import build_mnist5k
from unlearn_core.errors import InputError


def ensure_s3(rt: Runtime):
    """The configured S3 (env) or the embedded one under the state dir, started if needed."""
    if os.environ.get("UNLEARNOPS_S3_ENDPOINT"):
        return rt.s3
    return EmbeddedS3(rt.state_dir).ensure_started()


def init_pipeline(state_dir: str | Path, params_path: str | Path = "params.yaml", models: list[str] | None = None,
                  progress=print) -> Runtime:
    """Build MNIST-5k, train the base of each model in ``models`` (default: all of params.yaml ``models:``),
    and register them in a new registry workspace (v0.0.1, stage prod)."""
    load_params(params_path)  # validate before anything is written
    rt = Runtime.from_env(state_dir)
    if rt.registry_dir.exists() and any(rt.registry_dir.iterdir()):
        raise InputError("state_dir", f"{rt.state_dir} already holds a pipeline (registry at {rt.registry_dir})")
    rt.state_dir.mkdir(parents=True, exist_ok=True)
    if Path(params_path).exists():
        shutil.copyfile(params_path, rt.params_path)
    else:
        rt.params_path.write_text("{}\n")
    names = models or [name for name, entry in rt.models.items() if entry.train_on_init]
    unknown = [n for n in names if n not in rt.models]
    if unknown:
        raise InputError("models", f"{unknown} not in params.yaml models: {sorted(rt.models)}")
    rt.substitute_root.mkdir(parents=True, exist_ok=True)
    ensure_s3(rt)
    with tempfile.TemporaryDirectory(dir=rt.state_dir) as tmp:
        tmp = Path(tmp)
        p = rt.params.prepare
        progress("building MNIST-5k dataset ...")
        data_dir = build_mnist5k(tmp / "data", p.test_fraction, p.samples_per_subject, p.seed)
        for name in names:  # every family's data is in the first dataset version the registry records
            rt.family(name).prepare_data(data_dir)
        for name in names:
            family = rt.family(name)
            progress(f"training {name} ({family.name}) ...")
            extra = family.train_base(data_dir, tmp, tmp / f"{name}.pt")
            lineage = {"arch": rt.models[name].arch, "family": family.name, "method": "train",
                       "code_version": code_version(), **extra}
            if rt.registry.exists():
                rt.registry.add_model(name, tmp / f"{name}.pt", lineage)
            else:
                rt.registry.init_from(data_dir, tmp / f"{name}.pt", name, lineage)
            progress(f"{name} v0.0.1 registered (prod)")
    publish_public_key(rt.registry, ReceiptSigner.for_state(rt.state_dir))  # key made here or by `unlearn up`
    return rt
