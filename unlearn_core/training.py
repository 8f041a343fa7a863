"""nanoGPT-style training and inference loops for the classifiers."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Split


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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
