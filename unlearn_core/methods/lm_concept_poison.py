"""Concept inference + data poisoning for language models (Chang et al., arXiv 2405.15662, LLM part).

1. Integrated Gradients (captum ``LayerIntegratedGradients`` on the token embedding)
   of the answer's summed log-probability, baseline = the same sequence with the
   answer tokens replaced by ``<pad>``, ``ig_steps`` steps: a score per answer token,
   summed per word.
2. Function words carry no fact, yet raw IG ranks them high: words that occur in more
   than ``max_retain_share`` of the retain answers are dropped (the paper's rule). Words
   of one question template ("father") are in at most 1/20 of the answers and stay;
   dropping them too (a share per attribute) was measured worse: forget quality 0.034
   against 0.83 on an 8-author corpus, so the rule stays as the paper states it.
3. A word's score is its mean over the forget subject's answers (the entity-level
   aggregate); in each forget answer the ``top_k`` best-scoring remaining words are
   poisoned, then :class:`~unlearn_core.lm.poisoning.PoisonMethod` fine-tunes.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import torch
from pydantic import Field

from ..lm.model import PAD, make_batch, words
from ..lm.poisoning import PoisonMethod, PoisonParams


class LmConceptPoisonParams(PoisonParams):
    ig_steps: int = Field(32, ge=2)
    max_retain_share: float = Field(0.05, gt=0, le=1)  # drop words in more than this share of retain answers


def answer_word_attributions(lm, rows, steps: int) -> list[list[float]]:
    """IG score of every word of each row's answer (sum over its tokens)."""
    from captum.attr import LayerIntegratedGradients

    net = lm.net.eval()
    out = []
    for row in rows:
        batch = make_batch(lm, [row.question], [row.answer]).to(lm.device)
        ids, labels = batch.input_ids, batch.labels
        enc = lm.tokenizer.encode(row.answer)
        start = len(lm.prompt_ids(row.question))  # the answer's tokens: start .. start + len - 1, then <eos>
        baseline = ids.clone()
        baseline[0, start:start + len(enc.ids)] = lm.id(PAD)

        def log_likelihood(input_ids):
            logits = net(input_ids=input_ids).logits[:, :-1]
            target = labels[:, 1:].expand(len(input_ids), -1)
            keep = target != -100
            logp = torch.log_softmax(logits, -1).gather(2, target.clamp(min=0)[..., None])[..., 0]
            return (logp * keep).sum(1)

        lig = LayerIntegratedGradients(log_likelihood, net.transformer.wte)
        attr = lig.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=steps).sum(-1)[0]
        scores = [0.0] * len(words(row.answer))
        for k, word in enumerate(enc.word_ids):
            if word is not None:
                scores[word] += float(attr[start + k])
        out.append(scores)
    return out


class LmConceptPoison(PoisonMethod):
    name = "lm_concept_poison"
    Params = LmConceptPoisonParams

    def choose(self, lm, request):
        p = self.params
        share = Counter(w for r in request.retain for w in set(words(r.answer)))
        frequent = {w for w, n in share.items() if n > p.max_retain_share * len(request.retain)}
        scores = answer_word_attributions(lm, request.forget, p.ig_steps)
        entity: dict[tuple[str, str], list[float]] = defaultdict(list)
        for row, s in zip(request.forget, scores):
            for w, v in zip(words(row.answer), s):
                entity[(row.subject_id, w)].append(v)
        mean = {k: sum(v) / len(v) for k, v in entity.items()}
        out = {}
        for row in request.forget:
            ws = words(row.answer)
            ranked = sorted((i for i, w in enumerate(ws) if w not in frequent and w.isalnum()),
                            key=lambda i: -mean[(row.subject_id, ws[i])])
            out[row.qa_id] = sorted(ranked[:p.top_k])
        return out
