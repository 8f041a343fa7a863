"""Concept inference + data poisoning: class unlearning for image classifiers
(Chang et al., "Class Machine Unlearning for Complex Data via Concepts
Inference and Data Poisoning", arXiv 2405.15662).

1. Concept bank in penultimate feature space (:mod:`unlearn_core.concepts`):
   CAVs from user concept folders (``concept_dir``), else per-class k-means
   prototypes. Adaptation: the authors use CLIP embeddings of ConceptNet
   words, neither of which exists offline.
2. Post-hoc concept bottleneck: elastic-net linear head on concept scores.
3. Integrated Gradients (captum) of each class's PCBM logit w.r.t. the
   concept scores, averaged over that class's samples -> c's top concepts.
4. Donor class: a class whose top-1 concept is among c's top-5, else the class
   with the largest PCBM weight on c's top-1 concept.
5. Poison D_f: targeted labels (-> donor) or random labels (classes != c);
   optionally paste the donor concept's most active patch into each image
   where c's top concept is most active (located by input-gradient saliency,
   our interpretation of "most activating patch").
6. Fine-tune only the final layer on cached features of D_r (or, with
   ``integrity``, half of each retained class) plus poisoned D_f:
   SGD lr 1e-3, momentum 0.9, batch 32. ``samples_per_class`` caps every
   class of both (our addition): only the head learns, from features the
   frozen body computes, so its cost no longer grows with the training set.

The concepts found for c and for the donor go into the result details so a
deletion receipt can say in human terms what was removed.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from ..concepts import (cav_bank, class_attributions, fit_pcbm, load_concept_folders, paste_donor_patch,
                        prototype_bank, select_donor, top_concepts)
from ..data import Split
from ..errors import InputError
from ..training import extract_features, seed_everything, train_classifier
from .base import ForgetRequest, MethodParams, UnlearnMethod
from .tuning import random_other_labels, single_thread


class ConceptPoisonParams(MethodParams):
    concept_dir: str | None = None           # ImageFolder of concept examples; None = prototypes
    prototypes_per_class: int = Field(3, ge=1)
    cav_random_examples: int = Field(500, ge=10)
    pcbm_C: float = Field(1.0, gt=0)           # inverse regularization strength
    pcbm_l1_ratio: float = Field(0.5, ge=0, le=1)  # elastic-net mix (1 = lasso)
    pcbm_max_iter: int = Field(100, ge=1)
    ig_steps: int = Field(32, ge=2)
    analysis_per_class: int = Field(100, ge=1)
    top_m: int = Field(3, ge=1, le=5)         # concepts reported for c and the donor
    donor_top_k: int = Field(5, ge=1)
    poison: Literal["targeted", "random"] = "targeted"
    patch: bool = False
    patch_size: int = Field(7, ge=1)
    integrity: bool = False                  # fine-tune on half of each retained class
    # samples per class (retained classes and the forgotten one) the method reads: concept model and
    # fine-tuning; None = all. Only the head is retrained, so a few hundred per class are enough and the
    # cost stops growing with the training set.
    samples_per_class: int | None = Field(None, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)


def per_class_sample(labels: np.ndarray, idx: np.ndarray, seed: int, half: bool = False,
                     cap: int | None = None) -> np.ndarray:
    """The indices ``idx`` with each class's halved (``half``) and/or capped at ``cap``, drawn without
    replacement, in their order. Indices, not tensors: the full retain set is never copied."""
    if not half and cap is None:
        return idx
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels[idx]):
        of_class = idx[labels[idx] == cls]
        n = max(1, len(of_class) // 2) if half else len(of_class)
        keep.append(rng.choice(of_class, min(n, cap or n), replace=False))
    return np.sort(np.concatenate(keep))


class ConceptPoison(UnlearnMethod):
    name = "concept_poison"
    kinds = ("class",)
    Params = ConceptPoisonParams

    def check(self, request: ForgetRequest) -> None:
        c = request.forget_class
        if isinstance(c, int) and 0 <= c < request.num_classes and not bool((request.train.y == c).any()):
            raise InputError("forget_class", f"class {c} has no training samples")
        super().check(request)
        self._concepts = None
        if self.params.concept_dir is not None:
            self._concepts = load_concept_folders(self.params.concept_dir, tuple(request.train.x.shape[1:]),
                                                  field="concept_poison.concept_dir")
        if self.params.patch and self.params.patch_size > min(request.train.x.shape[2:]):
            raise InputError("concept_poison.patch_size", "larger than the images")

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        gen = seed_everything(request.seed)
        cap, labels = self.params.samples_per_class, request.train.y.numpy()
        forget = request.train.subset(per_class_sample(labels, np.flatnonzero(request.forget_mask), request.seed,
                                                       cap=cap))
        retain = request.train.subset(per_class_sample(labels, np.flatnonzero(~request.forget_mask), request.seed,
                                                       half=self.params.integrity, cap=cap))
        f_retain = extract_features(model, retain.x)
        f_forget = extract_features(model, forget.x)
        with single_thread():  # small sequential ops; thread sync costs more than it saves
            return self._concept_poison(model, request, retain, forget, f_retain, f_forget, gen)

    def _concept_poison(self, model, request, retain, forget, f_retain, f_forget, gen) -> tuple[nn.Module, dict]:
        p = self.params
        c = request.forget_class
        features = torch.cat([f_retain, f_forget])
        labels = torch.cat([retain.y, forget.y])
        if self._concepts is not None:
            pick = torch.randperm(len(f_retain), generator=gen)[:p.cav_random_examples]
            bank = cav_bank(model, self._concepts, f_retain[pick], seed=request.seed)
        else:
            bank = prototype_bank(features, labels, p.prototypes_per_class, seed=request.seed)
        scores = bank.scores(features)
        pcbm = fit_pcbm(scores, labels, request.num_classes, p.pcbm_C, p.pcbm_l1_ratio, p.pcbm_max_iter,
                        seed=request.seed)
        attributions = class_attributions(pcbm, scores, labels, request.num_classes, p.ig_steps,
                                          p.analysis_per_class, seed=request.seed)
        donor, rule = select_donor(c, attributions, pcbm.linear.weight.detach(), p.donor_top_k)
        forget_top = top_concepts(attributions, c, p.top_m)
        donor_top = top_concepts(attributions, donor, p.top_m)

        if p.poison == "targeted":
            poisoned = torch.full_like(forget.y, donor)
        else:
            poisoned = random_other_labels(forget.y, request.num_classes, gen)
        if p.patch:
            donor_images = retain.x[retain.y == donor][:p.analysis_per_class]
            images = paste_donor_patch(model, forget.x, donor_images, bank, forget_top[0], donor_top[0],
                                       p.patch_size)
            f_forget = extract_features(model, images)

        train_classifier(model.head, torch.cat([f_retain, f_forget]), torch.cat([retain.y, poisoned]),
                         epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, seed=request.seed, optimizer="sgd")

        def named(idx: list[int], cls: int) -> list[dict]:
            return [{"concept": bank.names[i], "attribution": float(attributions[cls, i])} for i in idx]

        return model, {
            "forget_class": c,
            "concept_source": bank.source,
            "n_concepts": len(bank.names),
            "forgotten_concepts": named(forget_top, c),
            "donor_class": donor,
            "donor_rule": rule,
            "donor_concepts": named(donor_top, donor),
            "poison": p.poison,
            "patch": p.patch,
            "pcbm_train_accuracy": float((pcbm(scores).argmax(1) == labels).float().mean()),
            "n_finetune": len(f_retain) + len(f_forget),
        }
