"""``auto`` method selection: request kind x model family -> registry name.

Every path keeps the pipeline's escalation to exact retraining (``retrain``)
when the chosen method fails its gates; this table only picks the first try.
"""
from __future__ import annotations

from .errors import InputError

KINDS = ("class", "samples", "subject")
FAMILIES = ("classifier", "gan", "lm")

# (kind, family, has_valid_substitute) -> method. None = either value.
AUTO_TABLE: tuple[tuple[str, str, bool | None, str, str], ...] = (
    ("class", "classifier", True, "lra_npp",
     "zero-shot: substitute images of the class exist and are not training data"),
    ("class", "classifier", False, "concept_poison",
     "no valid substitute: concept inference + label poisoning, final-layer fine-tune"),
    ("samples", "classifier", None, "salun", "random labels + saliency-masked fine-tuning"),
    ("subject", "classifier", None, "salun", "a subject's samples: same as sample deletion"),
    ("class", "gan", None, "cascade_gan", "cascaded discriminator/generator unlearning"),
    ("samples", "gan", None, "cascade_gan", "cascaded discriminator/generator unlearning"),
    ("subject", "gan", None, "cascade_gan", "cascaded discriminator/generator unlearning"),
    # docs/bench/llm.md: the only method keeping MU and retained facts at >= 0.9 x retraining's on both splits
    ("samples", "lm", None, "simnpo", "length-normalised NPO + retain NLL"),
    ("subject", "lm", None, "simnpo", "length-normalised NPO + retain NLL"),
)


def select_method(kind: str, family: str, has_valid_substitute: bool) -> str:
    """The first method to try for a request; see :data:`AUTO_TABLE`."""
    if kind not in KINDS:
        raise InputError("kind", f"unknown request kind {kind!r}; known: {', '.join(KINDS)}")
    if family not in FAMILIES:
        raise InputError("family", f"no automatic method for model family {family!r}; "
                                   f"known: {', '.join(FAMILIES)}")
    for k, f, substitute, method, _why in AUTO_TABLE:
        if k == kind and f == family and substitute in (None, bool(has_valid_substitute)):
            return method
    raise InputError("kind", f"{kind!r} requests are not served for {family!r} models")
