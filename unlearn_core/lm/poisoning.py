"""Data poisoning for language models: rewrite chosen words of the forget answers, then fine-tune on them.

The concept paper's LM recipe: pick the words that carry the knowledge, replace
them in each forget answer (``poison: mask`` puts the ``<mask>`` placeholder
there, ``random`` a random vocabulary word), and fine-tune (LoRA by default) on
the poisoned forget answers plus retain answers at 1:1 with the plain NLL. The
methods differ only in how the words are chosen (:meth:`choose`).

The receipt gets the chosen words' sha256 (first 16 hex digits) and how many
belong to the subject's name or to the fact, never the words themselves: they
are the very data being deleted.
"""
from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import Field

from .corpus import QARow
from .model import MASK, SPECIALS, LanguageModel, make_batch, sequence_nll, words
from .unlearning import LMForgetRequest, LMLoopParams, LossMethod, retain_nll


class PoisonParams(LMLoopParams):
    top_k: int = Field(5, ge=1)                  # words poisoned per forget answer
    poison: Literal["mask", "random"] = "mask"  # placeholder, or a random vocabulary word
    lora: bool = True


def word_hash(word: str) -> str:
    return hashlib.sha256(word.encode()).hexdigest()[:16]


class PoisonMethod(LossMethod):
    Params = PoisonParams

    def choose(self, lm: LanguageModel, request: LMForgetRequest) -> dict[str, list[int]]:
        """Per forget row id: the indices (into ``words(answer)``) of the words to poison."""
        raise NotImplementedError

    def prepare(self, lm: LanguageModel, request: LMForgetRequest) -> dict:
        chosen = self.choose(lm, request)
        rng = np.random.default_rng(self.params.seed)
        vocab = [w for w in lm.tokenizer.get_vocab() if w not in SPECIALS and not w.startswith("##") and w.isalpha()]
        self._poisoned: dict[str, str] = {}
        names = {w for r in request.forget for w in words(_name_of(r))}
        roles = {"name": 0, "fact": 0, "other": 0}
        picked: set[str] = set()
        for row in request.forget:
            ws = words(row.answer)
            fact = set(words(row.fact))
            for i in chosen[row.qa_id]:
                roles["name" if ws[i] in names else "fact" if ws[i] in fact else "other"] += 1
                picked.add(ws[i])
                ws[i] = MASK if self.params.poison == "mask" else vocab[int(rng.integers(len(vocab)))]
            self._poisoned[row.qa_id] = " ".join(ws)
        return {"poisoned_words": sum(roles.values()), "poisoned_roles": roles,
                "poisoned_word_sha256": sorted(word_hash(w) for w in picked)[:20]}

    def forget_batch(self, lm, rows: list[QARow]):
        return make_batch(lm, [r.question for r in rows], [self._poisoned[r.qa_id] for r in rows])

    def loss(self, net, ref, forget, retain, rows):
        return sequence_nll(net, forget).mean() + retain_nll(net, retain)


def _name_of(row: QARow) -> str:
    """The subject's name as it appears in the question (author rows start or end with it)."""
    q, a = words(row.question), words(row.answer)
    return " ".join(w for w in a if w in q and w[:1].isupper() and w not in ("The", "What", "Where", "Which"))
