"""Exact unlearning for language models: train a fresh model on everything but the forget rows."""
from __future__ import annotations

from ..lm.model import LMTrainParams, fit
from ..lm.unlearning import LMUnlearnMethod


class LmRetrain(LMUnlearnMethod):
    name = "lm_retrain"
    reads_forget_set = False  # the retained rows only
    Params = LMTrainParams

    def _run(self, lm, request):
        model, stats = fit(request.retain, self.params, self.device)
        return model, {"final_loss": round(stats["final_loss"], 5), "n_train": len(request.retain)}
