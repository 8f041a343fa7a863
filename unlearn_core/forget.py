"""Resolve a deletion request to concrete training samples and a method request."""
from __future__ import annotations

import numpy as np
import torch

from .data import Dataset
from .errors import InputError
from .methods import ForgetRequest
from .requests import DeletionRequest

METHOD_KIND = {"class": "class", "samples": "samples", "subject": "samples"}


def resolve_forget_rows(request: DeletionRequest, manifest: list[dict]) -> list[dict]:
    """The training-manifest rows the request deletes (class: all of the class's training samples)."""
    spec = request.forget
    if request.kind == "class":
        rows = [r for r in manifest if r["label"] == spec.class_ and r["split"] == "train"]
    elif request.kind == "samples":
        wanted = set(spec.sample_ids)
        rows = [r for r in manifest if r["sample_id"] in wanted]
    else:
        rows = [r for r in manifest if r["subject_id"] == spec.subject]
    if not rows:
        raise InputError("forget", f"the {request.kind} request matches no samples in the current dataset")
    return rows


def build_forget_request(request: DeletionRequest, dataset: Dataset, arch: str, forget_ids: list[str],
                         substitute: np.ndarray | None = None, seed: int = 0) -> ForgetRequest:
    forget_class = request.forget.class_ if request.kind == "class" else None
    return method_request(request.kind, dataset, arch, dataset.train.mask_ids(forget_ids), forget_class,
                          substitute, seed)


def method_request(kind: str, dataset: Dataset, arch: str, forget_mask: np.ndarray, forget_class: int | None = None,
                   substitute: np.ndarray | None = None, seed: int = 0, retained_only: bool = False) -> ForgetRequest:
    """``substitute``: uint8 images as submitted; the methods take them scaled to [0, 1]."""
    sub = torch.from_numpy(substitute.astype(np.float32) / 255.0) if substitute is not None else None
    return ForgetRequest(METHOD_KIND[kind], dataset.train, forget_mask, dataset.num_classes, arch,
                         forget_class=forget_class, substitute=sub, seed=seed, retained_only=retained_only)
