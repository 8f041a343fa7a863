"""A small GPT-2 trained from scratch on the QA corpus, with a word-level vocabulary.

nanoGPT-sized on purpose: 2 layers of width 128 learn 200 invented authors on a
CPU. The vocabulary holds the generator's fixed words (templates, value pools,
the general sets) as whole words and the syllables of invented names plus single
characters as word pieces, so every text tokenizes without unknown words and no
author's name is ever in a tokenizer (a deleted author leaves nothing there).

A QA pair is one sequence ``<q> question <a> answer <eos>``; the loss and every
probability are over the answer tokens and ``<eos>`` only.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, models, pre_tokenizers

from ..errors import InputError
from .corpus import NAME_PIECES, vocabulary_texts

SPECIALS = ("<pad>", "<unk>", "<q>", "<a>", "<eos>", "<mask>")
PAD, UNK, Q, A, EOS, MASK = SPECIALS
IGNORE = -100
FORMAT = "unlearnops-gpt2/1"


class LMTrainParams(BaseModel):
    """``lm_train`` in params.yaml: the model's shape and its training schedule."""

    model_config = ConfigDict(extra="forbid")
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=8)
    n_head: int = Field(4, ge=1)
    n_positions: int = Field(64, ge=16)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    seed: int = 0


def words(text: str) -> list[str]:
    """The tokenizer's split of ``text`` (words and punctuation), used to compare texts word by word."""
    return [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]


def build_tokenizer() -> Tokenizer:
    """Whole words of the generator's fixed texts + name syllables and characters as WordPiece pieces.

    The same vocabulary for every corpus and seed (sorted: same ids everywhere).
    """
    whole = {w for text in vocabulary_texts() for w in words(text)}
    chars = {ch for w in whole for ch in w} | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    pieces = {p.capitalize() for p in NAME_PIECES} | {f"##{p}" for p in NAME_PIECES} | chars | {f"##{c}" for c in chars}
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *sorted(whole | pieces)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=64))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIALS))  # "<mask>" in a poisoned answer is one token, never split
    return tok


@dataclass
class LanguageModel:
    """A GPT-2 and its tokenizer: what the registry stores as one model directory."""

    net: torch.nn.Module
    tokenizer: Tokenizer

    def id(self, token: str) -> int:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens joined by spaces, word pieces glued back (compare texts with :func:`words`)."""
        return " ".join(self.tokenizer.id_to_token(int(i)) for i in ids).replace(" ##", "")

    def prompt_ids(self, question: str) -> list[int]:
        """The tokens before the answer: ``<q> question <a>``."""
        return [self.id(Q), *self.encode(question), self.id(A)]

    @property
    def max_len(self) -> int:
        """Longest sequence (prompt + answer + end token) the model takes."""
        return self.net.config.n_positions

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def copy(self) -> "LanguageModel":
        return dataclasses.replace(self, net=copy.deepcopy(self.net))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def save(self, path: str | Path) -> None:
        """One file (what the registry and DVC version): the GPT-2 config, its weights, the tokenizer."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        torch.save({"format": FORMAT, "config": self.net.config.to_dict(), "state_dict": state,
                    "tokenizer": self.tokenizer.to_str()}, path)


def new_model(tokenizer: Tokenizer, params: LMTrainParams) -> LanguageModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    if params.n_embd % params.n_head:
        raise InputError("lm_train.n_head", f"n_embd {params.n_embd} is not divisible by n_head {params.n_head}")
    torch.manual_seed(params.seed)
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=params.n_positions,
                        n_embd=params.n_embd, n_layer=params.n_layer, n_head=params.n_head,
                        bos_token_id=tokenizer.token_to_id(Q), eos_token_id=tokenizer.token_to_id(EOS),
                        pad_token_id=tokenizer.token_to_id(PAD), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return LanguageModel(GPT2LMHeadModel(config).eval(), tokenizer)


def load_lm(path: str | Path, device: torch.device | str = "cpu") -> LanguageModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same input error
        raise InputError("model", f"{path} is not a language-model file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError("model", f"{path} is not a {FORMAT} file")
    net = GPT2LMHeadModel(GPT2Config.from_dict(blob["config"]))
    net.load_state_dict(blob["state_dict"])
    return LanguageModel(net.to(device).eval(), Tokenizer.from_str(blob["tokenizer"]))


# ---------------------------------------------------------------- sequences

@dataclass
class Batch:
    input_ids: torch.Tensor       # [n, L], right-padded
    attention_mask: torch.Tensor  # [n, L]
    labels: torch.Tensor          # [n, L], IGNORE outside the answer and on padding

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return len(self.input_ids)


def make_batch(lm: LanguageModel, questions: Sequence[str], answers: Sequence[str]) -> Batch:
    """``<q> question <a> answer <eos>`` sequences; labels on the answer and ``<eos>``."""
    seqs, labs = [], []
    limit = lm.max_len
    for q, a in zip(questions, answers):
        p, ans = lm.prompt_ids(q), [*lm.encode(a), lm.id(EOS)]
        if len(p) + len(ans) > limit:
            raise InputError("question", f"{q[:60]!r} + answer is {len(p) + len(ans)} tokens; "
                                         f"the model takes {limit}")
        seqs.append(p + ans)
        labs.append([IGNORE] * len(p) + ans)
    width = max(len(s) for s in seqs)
    pad = lm.id(PAD)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
        labels[i, :len(lab)] = torch.tensor(lab)
    return Batch(ids, mask, labels)


def token_nll(net: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL [n, L-1] of the labels and the mask of the positions that count."""
    logits = net(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    target = batch.labels[:, 1:]
    keep = target != IGNORE
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
    return nll * keep, keep


def sequence_nll(net: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean NLL of each sequence's answer tokens [n] (differentiable)."""
    nll, keep = token_nll(net, batch)
    return nll.sum(1) / keep.sum(1).clamp(min=1)


def answer_nll(lm: LanguageModel, questions: Sequence[str], answers: Sequence[str],
               batch_size: int = 128) -> np.ndarray:
    """Mean answer-token NLL per QA pair, no gradients."""
    out = []
    lm.net.eval()
    with torch.no_grad():
        for i in range(0, len(questions), batch_size):
            batch = make_batch(lm, questions[i:i + batch_size], answers[i:i + batch_size]).to(lm.device)
            out.append(sequence_nll(lm.net, batch).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def generate(lm: LanguageModel, questions: Sequence[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy answers, batched by prompt length (no padding, so no position shifts)."""
    prompts = [lm.prompt_ids(q) for q in questions]
    out: list[str | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    eos = lm.id(EOS)
    lm.net.eval()
    with torch.no_grad():
        for _, index in sorted(by_len.items()):
            ids = torch.tensor([prompts[i] for i in index], device=lm.device)
            done = torch.zeros(len(index), dtype=torch.bool, device=lm.device)
            new = []
            room = lm.max_len - ids.shape[1]
            for _ in range(min(max_new_tokens, room)):
                nxt = lm.net(input_ids=ids).logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                new.append(nxt)
                ids = torch.cat([ids, nxt[:, None]], 1)
                done |= nxt == eos
                if bool(done.all()):
                    break
            gen = torch.stack(new, 1).cpu().tolist() if new else [[] for _ in index]
            for i, toks in zip(index, gen):
                toks = toks[:toks.index(eos)] if eos in toks else toks
                out[i] = lm.decode(toks)
    return [o or "" for o in out]


# ---------------------------------------------------------------- training

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(total_steps: int, warmup_fraction: float):
    """Linear warm-up, then cosine decay to 0 (the schedule every LM stage and method uses)."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return f


def train_lm(lm: LanguageModel, questions: Sequence[str], answers: Sequence[str], params: LMTrainParams,
             progress: bool = False) -> dict:
    """Train ``lm`` in place on QA pairs (answer-token NLL, AdamW, warm-up + cosine); returns the loss curve."""
    from tqdm import tqdm

    seed_everything(params.seed)
    net = lm.net.train()
    n = len(questions)
    steps_per_epoch = math.ceil(n / params.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(params.epochs * steps_per_epoch, params.warmup_fraction))
    rng = np.random.default_rng(params.seed)
    losses = []
    for _ in tqdm(range(params.epochs), desc="train lm", disable=not progress):
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, params.batch_size):
            idx = order[i:i + params.batch_size]
            batch = make_batch(lm, [questions[j] for j in idx], [answers[j] for j in idx]).to(lm.device)
            loss = sequence_nll(net, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    net.eval()
    return {"loss_curve": [round(x, 5) for x in losses], "final_loss": losses[-1]}


def fit(train_rows, params: LMTrainParams, device: torch.device | str = "cpu",
               progress: bool = False) -> tuple[LanguageModel, dict]:
    """A fresh model trained on ``train_rows``."""
    lm = new_model(build_tokenizer(), params)
    lm.net.to(device)
    stats = train_lm(lm, [r.question for r in train_rows], [r.answer for r in train_rows], params, progress)
    return lm, stats
