"""Model families (classifier, GAN, language model): see :class:`~unlearn_core.families.base.ModelFamily`."""
from __future__ import annotations

from unlearn_core.families.base import ModelFamily
from unlearn_core.families.classifier import ClassifierFamily
from unlearn_core.families.gan import GanFamily
from unlearn_core.families.lm import LMFamily

FAMILIES: dict[str, type[ModelFamily]] = {f.name: f for f in (ClassifierFamily, GanFamily, LMFamily)}

__all__ = ["FAMILIES", "ModelFamily", "ClassifierFamily", "GanFamily", "LMFamily"]
