"""SimNPO (Fan et al. 2024; LM baseline): reference-free NPO on the length-normalised NLL.

Loss -(2/beta) log sigmoid(beta (NLL_f/|y| - delta)) + NLL_r (OpenUnlearning's definition).
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from ..lm.model import sequence_nll
from ..lm.unlearning import LMLoopParams, LossMethod, retain_nll


class SimNpoParams(LMLoopParams):
    beta: float = Field(4.5, gt=0)
    delta: float = 0.0


class SimNpo(LossMethod):
    name = "simnpo"
    Params = SimNpoParams

    def loss(self, net, ref, forget, retain, rows):
        p = self.params
        return -(2 / p.beta) * F.logsigmoid(p.beta * (sequence_nll(net, forget) - p.delta)).mean() \
            + retain_nll(net, retain)
