"""Typed view of ``params.yaml``.

Every hyperparameter, method default and gate threshold lives in params.yaml
(DVC reads the same file for ``dvc repro``). Sections are named after the DVC
stages and the methods. Loading validates types and ranges and reports the
offending field by its dotted path, e.g. ``params.yaml: train.epochs: ...``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareParams(_Section):
    dataset: Literal["mnist5k"] = "mnist5k"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    samples_per_subject: int = Field(5, ge=1)
    seed: int = 0


class TrainParams(_Section):
    model: Literal["mnist_cnn", "cifar_cnn", "resnet18"] = "mnist_cnn"
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0


class LraNppParams(_Section):
    n_analysis: int = Field(36, ge=1)
    analyze_top_n: int = Field(50, ge=1)
    perturb_top_n: int = Field(80, ge=1)       # the adaptive path's starting (smallest) size
    max_perturb_top_n: int = Field(400, ge=1)  # adaptive path: upper bound; = perturb_top_n turns growth off
    max_path_share: float = Field(0.5, gt=0, le=1)  # ... and at most this share of the head's inputs
    path_step: int = Field(8, ge=1)            # the size is searched to this many neurons
    n_check: int = Field(64, ge=1)             # held-out substitutes the recognition check scores
    recognised_prob: float = Field(0.1, gt=0, le=1)  # a check image is recognised if P(c) >= this
    recognised_max: float = Field(0.02, ge=0, le=1)  # stop growing once <= this share of them is recognised
    # auto: where class_row misses recognised_max but leaves at most this share recognised, keep class_row
    # (its smallest path within this bound): all_classes costs retained accuracy, so only a clear miss escalates
    escalate_above: float = Field(0.05, ge=0, le=1)
    epsilon: float = Field(0.1, gt=0)
    perturbation: Literal["zero", "gaussian", "laplace"] = "zero"
    # auto: class_row, escalated to all_classes when class_row cannot pass the recognition check
    scope: Literal["class_row", "all_classes", "with_incoming", "auto"] = "auto"
    start_from: Literal["target", "predicted"] = "target"


class ReproducibilityParams(_Section):
    """How the DVC stages repeat their outputs (docs/dvc.md)."""

    cpu_threads: int = Field(1, ge=1)  # torch intra-op threads: CPU results depend on the count
    # |reproduced - locked| allowed per metric name where bytes cannot match (GPU, non-x86 CPUs)
    tolerance: dict[str, float] = {"default": 0.0}


class Params(_Section):
    """The whole params.yaml. Unknown sections are kept for later stages/methods."""

    model_config = ConfigDict(extra="allow")
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    lra_npp: LraNppParams = LraNppParams()
    reproducibility: ReproducibilityParams = ReproducibilityParams()


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(source, f"expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise InputError.from_validation(exc, f"{source}: ") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"not valid YAML ({exc})") from None
    return parse_params(raw, source=path.name)


def method_config(params: Params, method: str) -> dict:
    """The params.yaml section of a method (section name = registry name), or {}.

    Methods declared as typed sections above come back dumped; methods that
    live in their own modules validate their section with their own ``Params``.
    """
    section = getattr(params, method, None)
    if section is None:
        section = (params.model_extra or {}).get(method)
    if isinstance(section, BaseModel):
        return section.model_dump()
    if section is not None and not isinstance(section, dict):
        raise InputError(f"params.yaml: {method}", f"expected a mapping, got {type(section).__name__}")
    return dict(section or {})


def typed_section(params: Params, name: str, model: type[BaseModel]) -> BaseModel:
    """A params.yaml section validated by ``model``; a bad field is reported as ``params.yaml: NAME.FIELD``."""
    try:
        return model.model_validate(method_config(params, name))
    except ValidationError as exc:
        raise InputError.from_validation(exc, f"params.yaml: {name}.") from None
