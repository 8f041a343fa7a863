"""NPO (Zhang et al. 2024; LM baseline): negative preference optimisation against the model before unlearning.

Loss -(2/beta) log sigmoid(-beta log(pi/pi_ref)(y_f)) + NLL_r, with log pi the summed
answer log-probability (OpenUnlearning's definition).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..lm.unlearning import LMLoopParams, LossMethod, nll_sum, retain_nll


class NpoParams(LMLoopParams):
    beta: float = Field(0.1, gt=0)


class Npo(LossMethod):
    name = "npo"
    Params = NpoParams
    needs_reference = True

    def loss(self, net, ref, forget, retain, rows):
        with torch.no_grad():
            ref_nll = nll_sum(ref, forget)
        log_ratio = ref_nll - nll_sum(net, forget)  # log pi(y_f) - log pi_ref(y_f)
        beta = self.params.beta
        return -(2 / beta) * F.logsigmoid(-beta * log_ratio).mean() + retain_nll(net, retain)
