"""Exact retraining of the GAN from scratch on D_r: the baseline for cascade_gan.

Same architecture (``arch`` of the given GAN), same schedule as base training
(the ``gan`` section of params.yaml), fresh initialisation seeded by
``seed + request.seed``. Its wall time is what cascade_gan's speedup is
measured against, so the ratio depends on that schedule.
"""
from __future__ import annotations

from ..gan import GAN, GanParams, check_images, train_gan
from ..errors import InputError
from ..training import seeded
from .base import ForgetRequest, UnlearnMethod


class RetrainGan(UnlearnMethod):
    name = "retrain_gan"
    reads_forget_set = False  # D_r only
    Params = GanParams

    def check(self, request: ForgetRequest) -> None:
        if not isinstance(self.model, GAN):
            raise InputError("model", f"retrain_gan retrains a GAN, got {type(self.model).__name__}")
        if len(request.forget_mask) != len(request.train):
            raise InputError("forget_mask", f"{len(request.forget_mask)} forget flags for a training set of "
                                            f"{len(request.train)} images")
        check_images(request.train.x, "forget")
        super().check(request)

    def _run(self, model: GAN, request: ForgetRequest) -> tuple[GAN, dict]:
        p = self.params
        retain = request.retain
        with seeded(p.seed + request.seed):
            fresh = GAN(**model.arch).to(self.device)
        train_gan(fresh, retain.x, retain.y if fresh.conditional else None, epochs=p.epochs,
                  batch_size=p.batch_size, lr=p.lr, beta1=p.beta1, seed=p.seed + request.seed)
        return fresh, {"n_retain": len(retain), "epochs": p.epochs}
