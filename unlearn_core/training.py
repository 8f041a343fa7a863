"""nanoGPT-style training and inference loops for the classifiers, and reproducible runs."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .data import Split


# CPU kernels differ per instruction set (AVX-512 and AVX2 round differently), so the DVC stages
# pin ATen, oneDNN and MKL to their AVX2 code paths: the same bytes run to run, and across machines
# of one CPU model (other models still round differently, docs/dvc.md).
PINNED_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


@contextmanager
def reproducible(cpu_threads: int = 1):
    """Run the block so its training repeats bit for bit on CPU (see docs/dvc.md).

    Enter it before the process's first tensor operation: the kernels' instruction
    set is chosen once, on first use. Results also depend on the number of
    intra-op threads, hence a fixed ``cpu_threads`` for torch and for the BLAS
    that numpy/scipy use (the GAN metrics). On CUDA, ops without a
    deterministic kernel only warn; metrics then match within tolerance. The
    thread counts, torch's determinism flags and the environment are restored after the block.
    """
    pinned = {**PINNED_CPU_KERNELS,  # and deterministic cuBLAS unless the caller chose a workspace
              "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")}
    saved_env = {k: os.environ.get(k) for k in pinned}
    os.environ.update(pinned)
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.set_num_threads(cpu_threads)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = False
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        warnings.warn(f"CPU kernels run as {capability}, not AVX2: outputs will not match dvc.lock byte "
                      f"for byte; compare metrics with `unlearn stage check-metrics`", stacklevel=3)
    try:
        with threadpool_limits(limits=cpu_threads):
            yield
    finally:
        for key, value in saved_env.items():  # child processes started later get the caller's environment
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNG seeded, and restore the RNG after.

    Wrap model construction in it so the initial weights depend on the seed
    only, not on what ran before in the process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index batches over n items; shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                     batch_size: int = 64, seed: int = 0, weight_decay: float = 0.0,
                     params=None, optimizer: str = "adam", progress: bool = False) -> nn.Module:
    """Cross-entropy training of ``model`` (or only ``params`` of it) in place."""
    device = model_device(model)
    gen = seed_everything(seed)
    params = list(params) if params is not None else list(model.parameters())
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    steps = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
    for _ in steps:
        for idx in batches(len(y), batch_size, gen):
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        steps.set_postfix(loss=loss.item())
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    device = model_device(model)
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    device = model_device(model)
    out = [model.features(x[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return float((predict_logits(model, split.x).argmax(1) == split.y).float().mean())
