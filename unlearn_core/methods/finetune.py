"""Fine-tune baseline: keep training on (part of) the retain set only.

Forgetting comes only from catastrophic forgetting of D_f; cheap but weak.
``retain_fraction`` bounds the cost below a retrain (default: half of D_r, one epoch).
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn
from pydantic import Field

from ..training import train_classifier
from .base import ForgetRequest, MethodParams, UnlearnMethod


class FinetuneParams(MethodParams):
    epochs: int = Field(1, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    retain_fraction: float = Field(0.5, gt=0, le=1)


class Finetune(UnlearnMethod):
    name = "finetune"
    Params = FinetuneParams

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        p = self.params
        retain = request.retain
        rng = np.random.default_rng(request.seed)
        n = max(1, int(round(len(retain) * p.retain_fraction)))
        part = retain.subset(np.sort(rng.choice(len(retain), n, replace=False)))
        train_classifier(model, part.x, part.y, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                         seed=request.seed, optimizer="sgd")
        return model, {"n_retain_used": n}
