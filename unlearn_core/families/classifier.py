"""Image classifiers (MNIST CNN, ResNet-18): classifier metrics and retained-data gates."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

import torch

from unlearn_core.config import Params
from unlearn_core.data import Dataset
from unlearn_core.families.base import floats
from unlearn_core.families.images import ImageData
from unlearn_core.gates import GateCheck, GateOutcome, evaluate_gates, forget_gap_check, gates_params, thresholds_for
from unlearn_core.methods import ForgetRequest
from unlearn_core.metrics import Scored, classifier_report
from unlearn_core.models import load_model, pick_device, save_model
from unlearn_core.training import accuracy

REPORT_KEYS = ("UA", "RA", "TA", "TA_retained", "TA_forget", "MIA_efficacy", "Fs")
LOGITS_KEPT = 4  # models whose logits a long-lived worker keeps (a parent and its candidates)
_logits: OrderedDict[str, tuple[dict[str, int], torch.Tensor]] = OrderedDict()


def _fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def scored_splits(model: torch.nn.Module, dataset: Dataset) -> tuple[Scored, Scored]:
    """The model's logits on the train and test splits, one forward pass per weights seen.

    A request's candidate becomes the next request's parent: in a warm worker its logits are
    reused (by weight fingerprint and sample id) on the rows the dataset still holds, which
    halves the forward passes of a served request. Same weights, same inputs: same logits.
    """
    key = _fingerprint(model)
    if key in _logits:
        rows, logits = _logits[key]
        if all(i in rows for i in dataset.train.ids) and all(i in rows for i in dataset.test.ids):
            _logits.move_to_end(key)
            return tuple(Scored(split, logits[[rows[i] for i in split.ids]])
                         for split in (dataset.train, dataset.test))
    train, test = Scored.of(model, dataset.train), Scored.of(model, dataset.test)
    ids = [*train.split.ids, *test.split.ids]
    _logits[key] = ({i: n for n, i in enumerate(ids)}, torch.cat([train.logits, test.logits]))
    while len(_logits) > LOGITS_KEPT:
        _logits.popitem(last=False)
    return train, test


class ClassifierFamily(ImageData):
    name = "classifier"
    exact_method = "retrain"
    train_section = "train"
    batches = True  # sample-level requests can share one unlearning run (member_checks judges each)

    def __init__(self, params: Params, arch: str, state_dir: Path):
        self.params, self.arch = params, arch

    def load(self, path) -> torch.nn.Module:
        return load_model(path, pick_device())[0]

    def save(self, model, path, dataset: Dataset) -> None:
        save_model(model.cpu(), self.arch, dataset.num_classes, dataset.image_shape[0], path)

    def train_base(self, data_dir: Path, workdir: Path, path: Path) -> dict:
        """The DVC pipeline's own stages (prepare -> train -> evaluate) on the dataset directory."""
        from unlearn_core.stages import evaluate, prepare, train

        prepare(data_dir, workdir / "prepared")
        train(workdir / "prepared", self.params, path)
        metrics = evaluate(workdir / "prepared", path, workdir / "metrics.json", workdir / "per_class.csv")
        return {"params": self.params.train.model_dump(), "metrics_after": metrics}

    def exact_config(self) -> dict:
        return self.params.train.model_dump(exclude={"model"})

    def method_kwargs(self, method: str, dataset: Dataset) -> dict:
        return {}

    def parent_report(self, parent, dataset: Dataset, request: ForgetRequest) -> dict:
        return classifier_report(parent, dataset.train, dataset.test, request.forget_mask, request.forget_class,
                                 seed=request.seed, scored=scored_splits(parent, dataset))

    def evaluate(self, method: str, parent, parent_report: dict, model, dataset: Dataset,
                 request: ForgetRequest) -> tuple[dict, GateOutcome]:
        report = self.parent_report(model, dataset, request)
        limits = thresholds_for(gates_params(self.params), method)
        outcome = evaluate_gates(request.kind, parent_report, report, limits, int(request.forget_mask.sum()))
        return floats(report), outcome

    def member_checks(self, method: str, model, dataset: Dataset, report: dict, member_ids: list[str],
                      name: str) -> list[GateCheck]:
        """A batch member's own forgetting check: its samples recognised no better than unseen data."""
        member = dataset.train.subset(np.flatnonzero(dataset.train.mask_ids(member_ids)))
        limits = thresholds_for(gates_params(self.params), method)
        return [forget_gap_check(accuracy(model, member), report["TA"], len(member), limits, f"forget_gap[{name}]")]

    def headline(self, report: dict) -> dict:
        return {k: report[k] for k in REPORT_KEYS if k in report}
