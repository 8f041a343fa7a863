"""Retained-data gates: promote an unlearned model only if it forgot and kept enough.

Thresholds live in params.yaml ``gates:``: a ``default`` block, optional
``per_method`` overrides, and ``retry`` overrides (the stronger settings of the
one retry before escalation to exact retraining). Pure functions; the flow
decides what to do with the outcome.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Params
from .errors import InputError


class GateThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_ra_drop: float = Field(0.02, description="retain-set accuracy drop vs the parent model")
    max_ta_drop: float = Field(0.02, description="test accuracy drop vs the parent (retained classes for class requests)")
    max_forget_acc: float = Field(0.05, description="class requests: accuracy on the forgotten class's training samples")
    max_forget_gap: float = Field(0.03, description="sample requests: forget-set accuracy minus test accuracy, "
                                                    "beyond the sampling error of a small forget set")
    forget_gap_sigmas: float = Field(2.0, ge=0, description="binomial standard errors allowed on top of max_forget_gap")
    min_mia_efficacy: float = Field(0.0, description="share of D_f a membership attack calls non-member")


class GatesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: GateThresholds = GateThresholds()
    per_method: dict[str, dict[str, float]] = {}
    retry: dict[str, dict[str, Any]] = {}


def gates_params(params: Params) -> GatesParams:
    raw = (params.model_extra or {}).get("gates") or {}
    try:
        gp = GatesParams.model_validate(raw)
        for method, override in gp.per_method.items():
            GateThresholds.model_validate({**gp.default.model_dump(), **override})
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: gates.") from None
    return gp


def thresholds_for(gp: GatesParams, method: str) -> GateThresholds:
    return GateThresholds.model_validate({**gp.default.model_dump(), **gp.per_method.get(method, {})})


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float
    limit: float
    passed: bool


@dataclass(frozen=True)
class GateOutcome:
    """The verdict of one family's gates on one candidate: every model family returns this."""

    passed: bool
    checks: tuple[GateCheck, ...]

    @classmethod
    def of(cls, checks: list[GateCheck]) -> "GateOutcome":
        return cls(all(c.passed for c in checks), tuple(checks))

    @classmethod
    def from_dict(cls, raw: dict) -> "GateOutcome":
        return cls(bool(raw["passed"]), tuple(GateCheck(**c) for c in raw.get("checks", ())))

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "summary": self.summary}

    @property
    def summary(self) -> str:
        """The failed checks, e.g. ``forget_acc=0.0800 (limit 0.05)``; empty when all passed."""
        return ", ".join(f"{c.name}={c.value:.4f} (limit {c.limit})" for c in self.checks if not c.passed)


def evaluate_gates(kind: str, parent: dict, candidate: dict, limits: GateThresholds, n_forget: int) -> GateOutcome:
    """Compare the candidate's classifier report with its parent's (see metrics.classifier_report).

    Sample requests pass the forgetting check when the forget set is recognised
    no better than unseen test data: accuracy(D_f) - TA <= max_forget_gap plus
    ``forget_gap_sigmas`` binomial standard errors of an accuracy measured on
    ``n_forget`` samples. Without that allowance a 5-sample subject deletion
    fails even for exact retraining, which generalises to those 5 digits.
    """
    ta_key = "TA_retained" if kind == "class" else "TA"
    forget_acc = 1.0 - candidate["UA"]
    checks = [
        GateCheck("ra_drop", parent["RA"] - candidate["RA"], limits.max_ra_drop,
                  parent["RA"] - candidate["RA"] <= limits.max_ra_drop),
        GateCheck("ta_drop", parent[ta_key] - candidate[ta_key], limits.max_ta_drop,
                  parent[ta_key] - candidate[ta_key] <= limits.max_ta_drop),
        GateCheck("mia_efficacy", candidate["MIA_efficacy"], limits.min_mia_efficacy,
                  candidate["MIA_efficacy"] >= limits.min_mia_efficacy),
    ]
    if kind == "class":
        checks.append(GateCheck("forget_acc", forget_acc, limits.max_forget_acc, forget_acc <= limits.max_forget_acc))
    else:
        checks.append(forget_gap_check(forget_acc, candidate["TA"], n_forget, limits))
    return GateOutcome.of(checks)


def forget_gap_check(forget_acc: float, ta: float, n_forget: int, limits: GateThresholds,
                     name: str = "forget_gap") -> GateCheck:
    """Accuracy on a forget set minus test accuracy, within ``max_forget_gap`` plus the binomial
    sampling error of an accuracy measured on ``n_forget`` samples."""
    gap = forget_acc - ta
    ta = min(max(ta, 0.0), 1.0)
    limit = limits.max_forget_gap + limits.forget_gap_sigmas * math.sqrt(ta * (1 - ta) / max(n_forget, 1))
    return GateCheck(name, gap, round(limit, 4), gap <= limit)
