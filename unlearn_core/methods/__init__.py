"""Method registry: name -> class. Adding a method = one module + one line here."""
from __future__ import annotations

from ..errors import InputError
from .base import ForgetRequest, UnlearnMethod, UnlearnResult
from .cascade_gan import CascadeGan
from .concept_poison import ConceptPoison
from .finetune import Finetune
from .lra_npp import LraNpp
from .neggrad import NegGrad
from .random_labels import RandomLabels
from .retrain import Retrain
from .retrain_gan import RetrainGan
from .salun import SalUn
from .ssd import Ssd

METHODS: dict[str, type[UnlearnMethod]] = {
    cls.name: cls for cls in (LraNpp, Retrain, ConceptPoison, RandomLabels, SalUn, Finetune, NegGrad, Ssd,
                     CascadeGan, RetrainGan)
}


def get_method(name: str) -> type[UnlearnMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError("method", f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "ForgetRequest", "UnlearnMethod", "UnlearnResult", "get_method"]
