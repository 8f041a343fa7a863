"""SalUn (Fan et al., ICLR 2024): random labels with a weight-saliency mask.

Same procedure as :mod:`random_labels`, but only the weights whose forget-loss
gradient magnitude is in the top ``saliency_fraction`` (default 50%) are
updated; the rest of the network, and with it retained accuracy, stays put.
This is the default (``auto``) method for sample and subject deletion.
"""
from __future__ import annotations

from pydantic import Field

from .random_labels import RandomLabels, RandomLabelsParams


class SalUnParams(RandomLabelsParams):
    saliency_fraction: float = Field(0.5, gt=0, lt=1)


class SalUn(RandomLabels):
    name = "salun"
    Params = SalUnParams
