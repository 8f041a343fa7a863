"""Random-label poisoning + fine-tuning: sample, subject and class deletion.

D_f gets labels drawn uniformly from the classes other than its true one;
the whole model is then fine-tuned on the poisoned D_f mixed with retain
batches (which keep retained accuracy), a few passes over D_f only, so the
cost scales with |D_f| rather than |D|. With ``saliency_fraction < 1`` only
the weights most salient to the forget loss move (SalUn, Fan et al. 2024).
"""
from __future__ import annotations

import torch.nn as nn
from pydantic import Field

from ..training import seed_everything
from .base import ForgetRequest, MethodParams, UnlearnMethod
from .tuning import ce_both, mixed_finetune, random_other_labels, saliency_mask


class RandomLabelsParams(MethodParams):
    epochs: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    retain_per_forget: float = Field(1.0, ge=0)   # retain samples per forget sample in each step
    saliency_fraction: float = Field(1.0, gt=0, le=1)  # 1.0 = no mask


class RandomLabels(UnlearnMethod):
    name = "random_labels"
    Params = RandomLabelsParams

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        p = self.params
        forget, retain = request.forget, request.retain
        gen = seed_everything(request.seed)
        poisoned = random_other_labels(forget.y, request.num_classes, gen)
        mask = saliency_mask(model, forget, p.saliency_fraction) if p.saliency_fraction < 1.0 else None
        mixed_finetune(model, forget.x, poisoned, retain, ce_both, epochs=p.epochs, lr=p.lr,
                       batch_size=p.batch_size, retain_per_forget=p.retain_per_forget,
                       seed=request.seed, mask=mask)
        details = {"n_forget": len(forget), "steps": p.epochs * -(-len(forget) // p.batch_size)}
        if mask is not None:
            kept = sum(int(m.sum()) for m in mask.values())
            details["masked_weight_share"] = kept / sum(m.numel() for m in mask.values())
        return model, details
