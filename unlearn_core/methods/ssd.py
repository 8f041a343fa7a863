"""SSD: Selective Synaptic Dampening (Foster et al., AAAI 2024). Retrain-free.

Importance of each weight = mean squared mini-batch gradient (diagonal Fisher)
on D_f and on D. Weights much more important to D_f than to D
(``imp_f > alpha * imp_D``) are scaled by ``min(lambda * imp_D / imp_f, 1)``.
Adaptation for speed: imp_D is estimated on ``n_importance`` random training
samples instead of all of D.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..data import Split
from .base import ForgetRequest, MethodParams, UnlearnMethod


class SsdParams(MethodParams):
    alpha: float = Field(10.0, gt=0)        # selection weighting
    dampening: float = Field(1.0, gt=0)     # lambda
    n_importance: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)


def importance(model: nn.Module, split: Split, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean squared mini-batch gradient of the cross-entropy, per weight."""
    device = next(model.parameters()).device
    imp = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    n_batches = 0
    model.eval()
    for start in range(0, len(split), batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(split.x[start:start + batch_size].to(device)),
                        split.y[start:start + batch_size].to(device)).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                imp[n] += p.grad.detach() ** 2
        n_batches += 1
    model.zero_grad(set_to_none=True)
    return {n: v / max(n_batches, 1) for n, v in imp.items()}


class Ssd(UnlearnMethod):
    name = "ssd"
    Params = SsdParams

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        p = self.params
        rng = np.random.default_rng(request.seed)
        n = min(p.n_importance, len(request.train))
        sample = request.train.subset(rng.choice(len(request.train), n, replace=False))
        imp_d = importance(model, sample, p.batch_size)
        imp_f = importance(model, request.forget, p.batch_size)
        dampened = total = 0
        with torch.no_grad():
            for name, param in model.named_parameters():
                selected = imp_f[name] > p.alpha * imp_d[name]
                factor = (p.dampening * imp_d[name] / imp_f[name].clamp_min(1e-30)).clamp(max=1.0)
                param[selected] *= factor[selected]
                dampened += int(selected.sum())
                total += param.numel()
        return model, {"n_importance": n, "dampened_weight_share": dampened / total}
