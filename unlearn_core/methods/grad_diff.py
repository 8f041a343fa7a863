"""GradDiff (LM baseline): gradient ascent on the forget answers, descent on retain answers. -NLL_f + NLL_r."""
from __future__ import annotations

from ..lm.model import sequence_nll
from ..lm.unlearning import LossMethod, retain_nll


class GradDiff(LossMethod):
    name = "grad_diff"

    def loss(self, net, ref, forget, retain, rows):
        return -sequence_nll(net, forget).mean() + retain_nll(net, retain)
