"""Shared fine-tuning pieces for the classifier unlearning methods.

Not a method itself: poisoned-label generation, the SalUn saliency mask, and
the forget/retain mixed loop that random labels, SalUn and NegGrad+ share.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Split
from ..training import seed_everything


_THREADS_LOCK = threading.Lock()  # torch's thread count is per process; a warm worker runs requests in threads


@contextmanager
def single_thread():
    """Run a block of many tiny torch ops on one thread. On a busy CPU, intra-op
    thread synchronisation made a linear-head fine-tune ~20x slower than one thread.
    The lock keeps two concurrent requests from restoring each other's thread count."""
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def random_other_labels(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn uniformly from the classes other than each sample's true class."""
    shift = torch.randint(1, num_classes, y.shape, generator=gen)
    return (y + shift) % num_classes


def saliency_mask(model: nn.Module, forget: Split, fraction: float, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """SalUn weight saliency: True for the ``fraction`` of weights (global ranking)
    with the largest forget-loss gradient magnitude; only those are updated.

    The ranking is taken among weights whose gradient is non-zero: on a ReLU CNN
    over half of the weights get exactly zero forget gradient (dead units, unused
    pixels), so a threshold over all weights lands on 0 and the mask keeps every
    weight that can move, i.e. no mask at all."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    model.eval()
    for start in range(0, len(forget), batch_size):
        xb = forget.x[start:start + batch_size].to(device)
        yb = forget.y[start:start + batch_size].to(device)
        (F.cross_entropy(model(xb), yb, reduction="sum") / len(forget)).backward()
    grads = {n: p.grad.detach().abs() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    if fraction >= 1.0:
        return {n: torch.ones_like(g, dtype=torch.bool) for n, g in grads.items()}
    graded = torch.cat([g.flatten() for g in grads.values()])
    graded = graded[graded > 0]
    if len(graded) == 0:
        return {n: torch.zeros_like(g, dtype=torch.bool) for n, g in grads.items()}
    k = int(round(len(graded) * (1.0 - fraction)))
    threshold = graded.kthvalue(k).values if k >= 1 else graded.new_zeros(())
    return {n: g > threshold for n, g in grads.items()}


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def mixed_finetune(model: nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, retain: Split,
                   loss_fn: LossFn, *, epochs: int, lr: float, batch_size: int, retain_per_forget: float,
                   seed: int, mask: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Passes over the forget set; each forget batch is paired with a random retain
    batch ``retain_per_forget`` times its size. ``loss_fn(logits_f, y_f, logits_r, y_r)``.
    SGD with momentum 0.9; with ``mask``, only masked weights move."""
    device = next(model.parameters()).device
    gen = seed_everything(seed)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=0.9)
    n_retain_batch = max(1, int(round(batch_size * retain_per_forget))) if retain_per_forget > 0 else 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(forget_y), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            xf, yf = forget_x[idx].to(device), forget_y[idx].to(device)
            ridx = torch.randint(0, len(retain), (n_retain_batch,), generator=gen)
            xr, yr = retain.x[ridx].to(device), retain.y[ridx].to(device)
            logits = model(torch.cat([xf, xr]))
            loss = loss_fn(logits[:len(idx)], yf, logits[len(idx):], yr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mask is not None:
                for name, keep in mask.items():
                    if params[name].grad is not None:
                        params[name].grad.mul_(keep)
            opt.step()
    return model.eval()


def ce_both(logits_f, y_f, logits_r, y_r) -> torch.Tensor:
    """Cross-entropy over the forget batch (poisoned labels) and the retain batch together."""
    return F.cross_entropy(torch.cat([logits_f, logits_r]), torch.cat([y_f, y_r]))
