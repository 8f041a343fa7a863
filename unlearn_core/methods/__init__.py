"""Method registry: name -> class, imported on first use. Adding a method = one module + one line here.

Only names are known up front, so code that validates a request (``unlearn submit``) never
imports torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .base import ForgetRequest, UnlearnMethod, UnlearnResult

_CLASSES = {
    "lra_npp": "lra_npp:LraNpp", "retrain": "retrain:Retrain", "concept_poison": "concept_poison:ConceptPoison",
    "random_labels": "random_labels:RandomLabels", "salun": "salun:SalUn", "finetune": "finetune:Finetune",
    "neggrad": "neggrad:NegGrad", "ssd": "ssd:Ssd", "cascade_gan": "cascade_gan:CascadeGan",
    "retrain_gan": "retrain_gan:RetrainGan",
}
METHODS: frozenset[str] = frozenset(_CLASSES)


def get_method(name: str) -> type["UnlearnMethod"]:
    if name not in _CLASSES:
        raise InputError("method", f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    module, cls = _CLASSES[name].split(":")
    method = getattr(import_module(f"{__name__}.{module}"), cls)
    assert method.name == name, f"registry entry {name!r} points at {method.name!r}"
    return method


def __getattr__(name: str):
    """``ForgetRequest``, ``UnlearnMethod``, ``UnlearnResult`` from .base, imported when first asked for."""
    if name in ("ForgetRequest", "UnlearnMethod", "UnlearnResult"):
        return getattr(import_module(f"{__name__}.base"), name)
    raise AttributeError(name)


__all__ = ["METHODS", "ForgetRequest", "UnlearnMethod", "UnlearnResult", "get_method"]
