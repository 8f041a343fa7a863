"""GradAscent (LM baseline): raise the forget answers' NLL. Loss -NLL_f (OpenUnlearning)."""
from __future__ import annotations

from ..lm.unlearning import LossMethod
from ..lm.model import sequence_nll


class GradAscent(LossMethod):
    name = "grad_ascent"

    def loss(self, net, ref, forget, retain, rows):
        return -sequence_nll(net, forget).mean()
