"""RMU (Li et al. 2024, "The WMDP Benchmark"; LM baseline): steer the forget answers' hidden states at one layer
to a fixed random direction, keep the retain answers' hidden states where the frozen model has them.

Loss (OpenUnlearning's ``RMU`` with ``retain_loss_type: EMBED_DIFF``), h_l the output of block ``layer``:
  mean over forget answer tokens of |h_l - c u|^2 / d  +  alpha * mean over retain answer tokens of
  |h_l - h_l^ref|^2 / d,
d the hidden width, u a seeded random unit vector (uniform [0, 1) entries, normalised, as OpenUnlearning draws
it), c ``steering_coeff``. Only the MLPs of the ``trainable_layers`` blocks ending at ``layer`` train
(OpenUnlearning: the down projections of layers 5-7 with layer 7); nothing after ``layer`` changes.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..errors import InputError
from ..lm.unlearning import LMLoopParams, LossMethod


class RmuParams(LMLoopParams):
    layer: int | None = Field(None, ge=0)        # None: the middle block, (n_layer - 1) // 2
    trainable_layers: int = Field(3, ge=1)       # MLPs of blocks layer - trainable_layers + 1 .. layer train
    steering_coeff: float = Field(6.0, gt=0)     # c
    alpha: float = Field(10.0, ge=0)             # retain weight
    lora: Literal[False] = False                 # RMU picks its own parameters


def blocks(net: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (GPT-2 ``transformer.h``, Llama ``model.layers``)."""
    base = net.base_model
    return base.h if hasattr(base, "h") else base.layers


def hidden_at(net: torch.nn.Module, batch, layer: int) -> torch.Tensor:
    """Output of block ``layer`` [n, L, d] (a forward hook: GPT-2's last hidden state has ln_f applied)."""
    seen = []
    handle = blocks(net)[layer].register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        net(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return seen[0]


def answer_mse(h: torch.Tensor, target: torch.Tensor, batch) -> torch.Tensor:
    """Per sequence: mean over its answer tokens of |h - target|^2 / d; then the batch mean."""
    keep = (batch.labels != -100).float()
    per_token = ((h - target) ** 2).mean(-1)
    return ((per_token * keep).sum(1) / keep.sum(1).clamp(min=1)).mean()


class Rmu(LossMethod):
    name = "rmu"
    Params = RmuParams
    needs_reference = True

    def prepare(self, lm, request):
        p, n = self.params, len(blocks(lm.net))
        self._layer = (n - 1) // 2 if p.layer is None else p.layer
        if self._layer >= n:
            raise InputError(f"{self.name}.layer", f"{self._layer} is not a block of this model (0..{n - 1})")
        u = torch.rand(lm.net.config.hidden_size, generator=torch.Generator().manual_seed(p.seed))
        self._steer = (p.steering_coeff * u / u.norm()).to(self.device)
        self._first = max(0, self._layer - p.trainable_layers + 1)
        return {"layer": self._layer, "trained_blocks": [self._first, self._layer]}

    def trainable(self, net):
        return [x for b in blocks(net)[self._first:self._layer + 1] for x in b.mlp.parameters()]

    def loss(self, net, ref, forget, retain, rows):
        loss = answer_mse(hidden_at(net, forget, self._layer), self._steer, forget)
        if retain is not None and self.params.alpha:
            with torch.no_grad():
                frozen = hidden_at(ref, retain, self._layer)
            loss = loss + self.params.alpha * answer_mse(hidden_at(net, retain, self._layer), frozen, retain)
        return loss
