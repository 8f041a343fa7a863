"""Random-word poisoning (LM ablation of ``lm_concept_poison``): the same poisoning, words picked at random."""
from __future__ import annotations

import numpy as np

from ..lm.model import words
from ..lm.poisoning import PoisonMethod


class LmRandomPoison(PoisonMethod):
    name = "lm_random_poison"

    def choose(self, lm, request):
        rng = np.random.default_rng(self.params.seed)
        out = {}
        for row in request.forget:
            n = len(words(row.answer))
            out[row.qa_id] = sorted(rng.choice(n, size=min(self.params.top_k, n), replace=False).tolist())
        return out
