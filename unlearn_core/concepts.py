"""Concepts of an image classifier: a concept bank, a post-hoc concept bottleneck
(PCBM), Integrated Gradients over concepts, and donor-class selection.

Adaptation of Chang et al. (arXiv 2405.15662), who embed ConceptNet words with
CLIP; neither is available offline. Here a concept is a direction in the
model's penultimate feature space:

* user concepts: a concept activation vector (CAV, Kim et al. 2018) per
  subfolder of a concept directory (ImageFolder layout, one folder per
  concept, named by the folder), learned by a linear classifier that separates
  the concept images' features from random training examples' features;
* automatic concepts when none are given: per-class k-means prototypes of the
  penultimate features ("class 3 prototype 1"), direction = centroid - mean.

A concept score is the projection of (features - center) on a concept vector.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from .data import load_image_folder
from .errors import InputError
from .training import extract_features

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ConceptBank:
    names: list[str]
    vectors: torch.Tensor  # [K, d], unit rows
    center: torch.Tensor   # [d]
    source: str            # "folders" | "prototypes"

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.center) @ self.vectors.T


def load_concept_folders(root: str | Path, image_shape: tuple[int, int, int],
                         field: str = "concept_dir") -> dict[str, torch.Tensor]:
    """Concept images per concept folder as float tensors in [0, 1].

    Rejects a missing root, a root without concept folders, an empty concept
    folder and images whose shape is not the model's input shape.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(field, f"{root} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(field, f"{root} has no concept folders (expected one subfolder per concept)")
    for folder in folders:
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir() if f.is_file()):
            raise InputError(field, f"concept folder {folder.name!r} is empty (no images)")
    channels, height, width = image_shape
    if channels not in (1, 3):
        raise InputError(field, f"concept images need 1 or 3 channels, the model takes {channels}")
    try:
        images, labels, names = load_image_folder(root, grayscale=channels == 1, size=(height, width))
    except InputError as exc:
        raise InputError(field, exc.reason) from None
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return {name: x[torch.from_numpy(labels == i)] for i, name in enumerate(names)}


def cav_bank(model: nn.Module, concepts: dict[str, torch.Tensor], random_features: torch.Tensor,
             seed: int = 0) -> ConceptBank:
    """One CAV per concept: unit normal of a logistic regression separating the
    concept images' features from random examples' features."""
    names, vectors = [], []
    neg = random_features.numpy()
    for name, images in concepts.items():
        pos = extract_features(model, images).numpy()
        x = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed).fit(x, y)
        v = torch.from_numpy(clf.coef_[0]).float()
        names.append(name)
        vectors.append(v / v.norm().clamp_min(1e-12))
    return ConceptBank(names, torch.stack(vectors), random_features.mean(0), "folders")


def prototype_bank(features: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int = 0,
                   max_per_class: int = 300) -> ConceptBank:
    """Automatic concepts: k-means prototypes of each class's penultimate features."""
    rng = np.random.default_rng(seed)
    center = features.mean(0)
    names, vectors = [], []
    for cls in torch.unique(labels).tolist():
        feats = features[labels == cls].numpy()
        if len(feats) > max_per_class:
            feats = feats[rng.choice(len(feats), max_per_class, replace=False)]
        k = min(per_class, len(feats))
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(feats)
        for j, centroid in enumerate(km.cluster_centers_):
            v = torch.from_numpy(centroid).float() - center
            names.append(f"class {cls} prototype {j}")
            vectors.append(v / v.norm().clamp_min(1e-12))
    return ConceptBank(names, torch.stack(vectors), center, "prototypes")


class Pcbm(nn.Module):
    """Post-hoc concept bottleneck: a sparse linear head on standardized concept scores."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), num_classes)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.linear((scores - self.mean) / self.std)


def fit_pcbm(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, C: float = 1.0,
             l1_ratio: float = 0.5, max_iter: int = 200, seed: int = 0) -> Pcbm:
    """Elastic-net multinomial logistic regression (sklearn saga) on standardized
    concept scores, wrapped as a torch module so captum can attribute through it."""
    pcbm = Pcbm(scores.mean(0), scores.std(0).clamp_min(1e-6), num_classes)
    z = ((scores - pcbm.mean) / pcbm.std).numpy().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=C, l1_ratio=l1_ratio, solver="saga", max_iter=max_iter,
                                 random_state=seed).fit(z, labels.numpy())
    weight = torch.zeros(num_classes, scores.shape[1])
    bias = torch.full((num_classes,), -1e4)  # classes absent from the data are never predicted
    rows = torch.as_tensor(clf.classes_, dtype=torch.long)
    weight[rows] = torch.from_numpy(clf.coef_).float()
    bias[rows] = torch.from_numpy(clf.intercept_).float()
    with torch.no_grad():
        pcbm.linear.weight.copy_(weight)
        pcbm.linear.bias.copy_(bias)
    return pcbm.eval()


def concept_attributions(pcbm: Pcbm, scores: torch.Tensor, target: int | torch.Tensor,
                         n_steps: int = 32) -> torch.Tensor:
    """Integrated Gradients of each sample's ``target`` logit w.r.t. its concept
    scores, [N, concepts] (baseline: the mean concept scores, an "average" input)."""
    baseline = pcbm.mean.expand_as(scores)
    return IntegratedGradients(pcbm).attribute(scores, baselines=baseline, target=target,
                                               n_steps=n_steps).detach()


def class_attributions(pcbm: Pcbm, scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       n_steps: int = 32, max_per_class: int = 100, seed: int = 0) -> torch.Tensor:
    """[classes, concepts]: each class's mean IG attribution (its own logit) over up
    to ``max_per_class`` of its samples; NaN rows for absent classes. One captum
    call per class: a single call with per-sample targets scales badly."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for cls in range(num_classes):
        idx = torch.nonzero(labels == cls).flatten()
        if len(idx) == 0:
            rows.append(torch.full((scores.shape[1],), float("nan")))
            continue
        idx = idx[torch.randperm(len(idx), generator=gen)[:max_per_class]]
        rows.append(concept_attributions(pcbm, scores[idx], cls, n_steps).mean(0))
    return torch.stack(rows)


def top_concepts(attributions: torch.Tensor, cls: int, m: int) -> list[int]:
    """Indices of the ``m`` concepts with the largest attribution for ``cls`` (ties by index)."""
    row = attributions[cls].nan_to_num(float("-inf")).numpy()
    return np.lexsort((np.arange(len(row)), -row))[:m].tolist()


def select_donor(c: int, attributions: torch.Tensor, weights: torch.Tensor, top_k: int = 5) -> tuple[int, str]:
    """Donor class for poisoning class ``c`` (Chang et al. rule).

    1. a class whose top-1 concept is among c's top-``top_k`` concepts (if
       several, the one whose top-1 concept ranks highest for c, then lowest index);
    2. otherwise the class with the largest PCBM weight on c's top-1 concept.
    Returns (donor, rule) with rule "shared_concept" or "pcbm_weight".
    """
    n_classes = attributions.shape[0]
    top_c = top_concepts(attributions, c, top_k)
    shared = []
    for k in range(n_classes):
        if k == c or torch.isnan(attributions[k]).all():
            continue
        first = top_concepts(attributions, k, 1)[0]
        if first in top_c:
            shared.append((top_c.index(first), k))
    if shared:
        return min(shared)[1], "shared_concept"
    column = weights[:, top_c[0]].clone().float()
    column[c] = float("-inf")
    return int(column.argmax()), "pcbm_weight"


def most_active_window(model: nn.Module, x: torch.Tensor, bank: ConceptBank, concept: int,
                       size: int) -> torch.Tensor:
    """Top-left corner (row, col) per image of the ``size`` x ``size`` window where the
    concept score is most sensitive to the pixels (input-gradient saliency)."""
    device = next(model.parameters()).device
    x = x.to(device).clone().requires_grad_(True)
    vector, center = bank.vectors[concept].to(device), bank.center.to(device)
    ((model.features(x) - center) @ vector).sum().backward()
    model.zero_grad(set_to_none=True)
    saliency = x.grad.abs().sum(1, keepdim=True)
    pooled = F.avg_pool2d(saliency, size, stride=1)  # [N, 1, H-size+1, W-size+1]
    flat = pooled.flatten(1).argmax(1)
    width = pooled.shape[-1]
    return torch.stack([flat // width, flat % width], 1).cpu()


def paste_donor_patch(model: nn.Module, images: torch.Tensor, donor_images: torch.Tensor, bank: ConceptBank,
                      forget_concept: int, donor_concept: int, size: int) -> torch.Tensor:
    """Image poisoning: cut the donor concept's most active patch from the donor image
    scoring highest on it, paste it where the forget concept is most active."""
    with torch.no_grad():
        donor_scores = bank.scores(extract_features(model, donor_images))[:, donor_concept]
    best = donor_images[int(donor_scores.argmax())][None]
    r, c = most_active_window(model, best, bank, donor_concept, size)[0].tolist()
    patch = best[0, :, r:r + size, c:c + size]
    where = most_active_window(model, images, bank, forget_concept, size)
    out = images.clone()
    for i, (rr, cc) in enumerate(where.tolist()):
        out[i, :, rr:rr + size, cc:cc + size] = patch
    return out
