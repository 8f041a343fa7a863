"""The uniform method interface (captum's shape) and what it consumes and returns.

A method is a class constructed with the model and its config; one verb,
``unlearn(request)``, returns a NEW model (the input model is never modified)
and an :class:`UnlearnResult`. Callers never branch on the method.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError

from ..data import Split
from ..errors import InputError
from ..metrics import measure
from ..models import pick_device

KINDS = ("class", "samples")


@dataclass
class ForgetRequest:
    """What to forget, resolved to tensors.

    ``forget_mask`` marks D_f inside ``train``. Class requests set
    ``forget_class``; zero-shot methods use ``substitute`` (images of the
    class that are NOT in the training set) and never read ``train``.
    """

    kind: str
    train: Split
    forget_mask: np.ndarray
    num_classes: int
    arch: str
    forget_class: int | None = None
    substitute: torch.Tensor | None = None
    seed: int = 0
    # rebuilt from a registry version's dataset alone for a re-derivation: D_f is erased, so the mask is
    # empty and only methods that never read D_f (``reads_forget_set`` False) may serve it
    retained_only: bool = False

    @property
    def forget(self) -> Split:
        return self.train.subset(np.flatnonzero(self.forget_mask))

    @property
    def retain(self) -> Split:
        return self.train.subset(np.flatnonzero(~self.forget_mask))


@dataclass
class UnlearnResult:
    method: str
    params: dict[str, Any]
    time_s: float
    peak_mem_bytes: int
    mem_kind: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_retained_only(method: "UnlearnMethod", retained_only: bool) -> None:
    if retained_only and method.reads_forget_set:
        raise InputError("method", f"{method.name!r} reads the forget set, which a re-derivation no longer has")


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UnlearnMethod:
    """Base class: validates config and request, copies the model, measures cost."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = KINDS
    needs_substitute: ClassVar[bool] = False
    # reads D_f (the deleted rows): False only for methods that see the retain set / substitutes alone, the
    # ones a registry version can be re-derived with after the deletion (its D_f is erased by then)
    reads_forget_set: ClassVar[bool] = True
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, model: nn.Module, config: dict | BaseModel | None = None,
                 device: torch.device | str | None = None):
        self.model = model
        self.device = torch.device(device) if device is not None else pick_device()
        if isinstance(config, BaseModel):
            config = config.model_dump()
        try:
            self.params = self.Params.model_validate(config or {})
        except ValidationError as exc:
            raise InputError.from_validation(exc, f"{self.name}.") from None

    def check(self, request: ForgetRequest) -> None:
        """Reject a request this method cannot serve, before any work."""
        if request.kind not in self.kinds:
            raise InputError("kind", f"method {self.name!r} handles {'/'.join(self.kinds)} requests, "
                                     f"not {request.kind!r}")
        if request.kind == "class":
            c = request.forget_class
            if c is None or not 0 <= c < request.num_classes:
                raise InputError("forget_class", f"{c!r} is not a class of this model "
                                                 f"(0..{request.num_classes - 1})")
        check_retained_only(self, request.retained_only)
        n_forget = int(request.forget_mask.sum())
        if not (self.needs_substitute or request.retained_only):
            if n_forget == 0:
                raise InputError("forget", "the forget set is empty")
            if n_forget == len(request.train):
                raise InputError("forget", "the forget set is the whole training set; retrain nothing")

    def unlearn(self, request: ForgetRequest) -> tuple[nn.Module, UnlearnResult]:
        self.check(request)
        model = copy.deepcopy(self.model).to(self.device).eval()
        with measure(self.device) as cost:
            model, details = self._run(model, request)
        result = UnlearnResult(self.name, self.params.model_dump(), cost.time_s,
                               cost.peak_mem_bytes, cost.mem_kind, details)
        return model.eval(), result

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        raise NotImplementedError
