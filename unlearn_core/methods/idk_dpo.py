"""IdkDPO (LM baseline): DPO that prefers an "I don't know" answer over the forget answer, + NLL_r.

Loss -(2/beta) log sigmoid(beta ((log pi - log pi_ref)(idk) - (log pi - log pi_ref)(y_f))) + NLL_r,
log pi = summed answer log-probability. Each forget question gets one of the corpus's
"I don't know" answers, picked by its row id (same row, same answer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..lm.corpus import IDK_ANSWERS
from ..lm.model import make_batch
from ..lm.unlearning import LMLoopParams, LossMethod, nll_sum, retain_nll


class IdkDpoParams(LMLoopParams):
    beta: float = Field(0.1, gt=0)


class IdkDpo(LossMethod):
    name = "idk_dpo"
    Params = IdkDpoParams
    needs_reference = True

    def loss(self, net, ref, forget, retain, rows):
        idk = make_batch(self.lm, [r.question for r in rows],
                         [IDK_ANSWERS[int(r.qa_id[:8], 16) % len(IDK_ANSWERS)] for r in rows]).to(self.device)
        with torch.no_grad():
            ref_lose, ref_win = nll_sum(ref, forget), nll_sum(ref, idk)
        win = ref_win - nll_sum(net, idk)  # log pi(idk) - log pi_ref(idk)
        lose = ref_lose - nll_sum(net, forget)
        beta = self.params.beta
        return -(2 / beta) * F.logsigmoid(beta * (win - lose)).mean() + retain_nll(net, retain)
