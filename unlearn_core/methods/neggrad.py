"""NegGrad+ (Kurmanji et al., 2023): gradient ascent on D_f, descent on D_r.

Loss per step = alpha * CE(retain batch) - (1 - alpha) * CE(forget batch).
The ascent term is clipped at ``max_forget_loss`` so it cannot diverge.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from .base import ForgetRequest, MethodParams, UnlearnMethod
from .tuning import mixed_finetune


class NegGradParams(MethodParams):
    epochs: int = Field(1, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    retain_per_forget: float = Field(1.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    max_forget_loss: float = Field(5.0, gt=0)


class NegGrad(UnlearnMethod):
    name = "neggrad"
    Params = NegGradParams

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        p = self.params
        forget = request.forget

        def loss_fn(logits_f, y_f, logits_r, y_r):
            ascent = F.cross_entropy(logits_f, y_f).clamp(max=p.max_forget_loss)
            return p.alpha * F.cross_entropy(logits_r, y_r) - (1 - p.alpha) * ascent

        mixed_finetune(model, forget.x, forget.y, request.retain, loss_fn, epochs=p.epochs, lr=p.lr,
                       batch_size=p.batch_size, retain_per_forget=p.retain_per_forget, seed=request.seed)
        return model, {"n_forget": len(forget)}
