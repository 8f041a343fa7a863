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
    # language models (unlearn_core.lm)
    "lm_concept_poison": "lm_concept_poison:LmConceptPoison", "lm_random_poison": "lm_random_poison:LmRandomPoison",
    "grad_ascent": "grad_ascent:GradAscent", "grad_diff": "grad_diff:GradDiff", "npo": "npo:Npo",
    "simnpo": "simnpo:SimNpo", "idk_dpo": "idk_dpo:IdkDpo", "rmu": "rmu:Rmu", "lm_retrain": "lm_retrain:LmRetrain",
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
