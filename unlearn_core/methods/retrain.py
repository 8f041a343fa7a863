"""Exact retraining from scratch on the retain set: the reference baseline."""
from __future__ import annotations

import torch.nn as nn

from ..config import TrainParams
from ..models import build_model
from ..training import seeded, train_classifier
from .base import ForgetRequest, UnlearnMethod


class Retrain(UnlearnMethod):
    """Train a fresh model of the same architecture on D_r with the base schedule."""

    name = "retrain"
    reads_forget_set = False  # D_r only
    Params = TrainParams

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        p = self.params
        retain = request.retain
        with seeded(p.seed + request.seed):
            fresh = build_model(request.arch, request.num_classes, retain.x.shape[1]).to(self.device)
        train_classifier(fresh, retain.x, retain.y, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                         seed=p.seed + request.seed, weight_decay=p.weight_decay)
        return fresh, {"n_retain": len(retain)}
