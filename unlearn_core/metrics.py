"""Classifier unlearning metrics, exactly as defined in docs/methods.md.

Notation: D_f forget set, D_r retain set, D_t test set, c the forgotten class.
All accuracies are fractions in [0, 1]; reports show them as points (x100).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .data import Split
from .training import predict_logits

FR_MAX_MEMBERS = 1500
FR_MAX_PROBES = 2000


def softmax(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return F.softmax(predict_logits(model, x), dim=1).numpy()


@dataclass
class Scored:
    """A split with one model's logits on it: every metric reuses one forward pass."""

    split: Split
    logits: torch.Tensor

    @classmethod
    def of(cls, model: nn.Module, split: Split) -> "Scored":
        return cls(split, predict_logits(model, split.x))

    def __len__(self) -> int:
        return len(self.split)

    def subset(self, index) -> "Scored":
        index = np.asarray(index, dtype=np.int64)
        return Scored(self.split.subset(index), self.logits[torch.as_tensor(index)])

    def where(self, mask) -> "Scored":
        return self.subset(np.flatnonzero(np.asarray(mask)))

    def acc(self) -> float:
        if len(self) == 0:
            return float("nan")
        return float((self.logits.argmax(1) == self.split.y).float().mean())

    def probs(self) -> np.ndarray:
        return F.softmax(self.logits, dim=1).numpy()

    def confidence(self) -> np.ndarray:
        return self.probs()[np.arange(len(self)), self.split.y.numpy()]

    def losses(self) -> np.ndarray:
        return F.cross_entropy(self.logits, self.split.y, reduction="none").numpy()


def acc(model: nn.Module, split: Split) -> float:
    return Scored.of(model, split).acc()


def mia_efficacy(model: nn.Module, retain: Split, forget: Split, test: Split, seed: int = 0) -> float:
    """SalUn / l1-sparse MIA-Efficacy: share of D_f an attacker calls non-member.

    An ``SVC(C=3, kernel="rbf", gamma="auto")`` is fitted on the true-class
    confidence of |D_t| samples of D_r (members, 1) and of D_t (non-members, 0).
    """
    return _mia(Scored.of(model, retain), Scored.of(model, forget), Scored.of(model, test), seed)


def _mia(retain: Scored, forget: Scored, test: Scored, seed: int) -> float:
    rng = np.random.default_rng(seed)
    n = min(len(test), len(retain))
    members = retain.subset(rng.choice(len(retain), size=n, replace=False))
    feats = np.concatenate([members.confidence(), test.confidence()])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(len(test))])
    clf = SVC(C=3, kernel="rbf", gamma="auto").fit(feats, labels)
    return float(1.0 - clf.predict(forget.confidence()[:, None]).mean())


def fr_score(original: nn.Module, unlearned: nn.Module, train: Split, forget_class: int,
             seed: int = 0) -> float:
    """Fr (LRA-NPP / concept papers): share of class-c training samples that an
    attack fitted on the ORIGINAL model's softmax calls non-member.

    Members: up to 1,500 random class-c training samples; non-members: as many
    random training samples of the OTHER classes. The attack is applied to the
    unlearned model's softmax on up to 2,000 random class-c training samples.
    Higher is better: retrain ~1.0, original ~0.0.
    """
    in_class = (train.y == forget_class).numpy()
    return _fr(original, train.subset(np.flatnonzero(in_class)), train.subset(np.flatnonzero(~in_class)),
               lambda s: softmax(unlearned, s.x), seed)


def fr_member_score(original: nn.Module, unlearned: nn.Module, class_train: Split, class_test: Split,
                    seed: int = 0) -> float:
    """Fr_member (secondary, never gated): the Fr attack with non-members = class-c
    TEST samples; near-chance and unstable even for exact retraining."""
    return _fr(original, class_train, class_test, lambda s: softmax(unlearned, s.x), seed)


def _fr(original: nn.Module, class_train: Split, non_members: Split, unlearned_probs, seed: int) -> float:
    """Linear-SVM membership attack on the original model's softmax, applied to the
    unlearned model's softmax (``unlearned_probs(split)``) on class-c training samples."""
    rng = np.random.default_rng(seed)
    n = min(len(class_train), FR_MAX_MEMBERS, len(non_members))
    members = class_train.subset(rng.choice(len(class_train), n, replace=False))
    others = non_members.subset(rng.choice(len(non_members), n, replace=False))
    feats = np.concatenate([softmax(original, members.x), softmax(original, others.x)])
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    attack = make_pipeline(StandardScaler(), SVC(kernel="linear", C=1.0, random_state=42)).fit(feats, labels)
    probe = class_train.subset(rng.choice(len(class_train), min(len(class_train), FR_MAX_PROBES), replace=False))
    return float(1.0 - attack.predict(unlearned_probs(probe)).mean())


def fs_score(unlearned: nn.Module, class_train: Split, class_test: Split, seed: int = 0) -> float:
    """Fs: |mean accuracy - 0.5| of ``LogisticRegression(max_iter=1000)`` on the
    unlearned model's per-sample cross-entropy, members = class-c train,
    non-members = class-c test, balanced to n = min of the two,
    ``StratifiedShuffleSplit(n_splits=10, test_size=0.1, random_state=42)``.
    Lower is better."""
    return _fs(Scored.of(unlearned, class_train), Scored.of(unlearned, class_test), seed)


def _fs(class_train: Scored, class_test: Scored, seed: int) -> float:
    rng = np.random.default_rng(seed)
    n = min(len(class_train), len(class_test))
    members = class_train.subset(rng.choice(len(class_train), n, replace=False))
    non_members = class_test.subset(rng.choice(len(class_test), n, replace=False))
    feats = np.concatenate([members.losses(), non_members.losses()])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    cv = StratifiedShuffleSplit(n_splits=10, test_size=0.1, random_state=42)
    scores = cross_val_score(LogisticRegression(max_iter=1000), feats, labels, cv=cv, scoring="accuracy")
    return float(abs(scores.mean() - 0.5))


def _probs_by_id(scored: Scored):
    """The unlearned model's softmax on any subset of ``scored`` (by sample id), without a new forward pass."""
    row_of = {sid: i for i, sid in enumerate(scored.split.ids)}
    probs = scored.probs()
    return lambda split: probs[[row_of[sid] for sid in split.ids]]


def avg_gap(method: dict, retrain: dict, keys=("UA", "MIA_efficacy", "RA", "TA")) -> float:
    """Mean |method - retrain| over UA, MIA-Efficacy, RA, TA (fractions)."""
    return float(np.mean([abs(method[k] - retrain[k]) for k in keys]))


def classifier_report(model: nn.Module, train: Split, test: Split, forget_mask: np.ndarray,
                      forget_class: int | None = None, original: nn.Module | None = None,
                      seed: int = 0, scored: tuple[Scored, Scored] | None = None,
                      at_ag_split: str = "test") -> dict:
    """UA, RA, TA (+ per-class TA, At/Ag, Fr, Fr_member, Fs for class unlearning) and MIA-Efficacy.

    One forward pass over train and one over test (or ``scored``: the model's logits on both,
    computed before); every metric reads those logits.
    """
    scored_train, scored_test = scored or (Scored.of(model, train), Scored.of(model, test))
    forget, retain = scored_train.where(forget_mask), scored_train.where(~np.asarray(forget_mask))
    report = {
        "UA": 1.0 - forget.acc(),
        "RA": retain.acc(),
        "TA": scored_test.acc(),
        "MIA_efficacy": _mia(retain, forget, scored_test, seed),
    }
    if forget_class is not None:
        in_class = (test.y == forget_class).numpy()
        class_test = scored_test.where(in_class)
        class_train = scored_train.where((train.y == forget_class).numpy())
        report["TA_retained"] = scored_test.where(~in_class).acc()
        report["TA_forget"] = class_test.acc()
        # At / Ag as the LRA-NPP authors report them: class-c / other-class accuracy on
        # the TEST split for MNIST-like data, on the TRAIN split for CIFAR-10.
        if at_ag_split == "train":
            report["At"], report["Ag"] = class_train.acc(), retain.acc()
        else:
            report["At"], report["Ag"] = report["TA_forget"], report["TA_retained"]
        if original is not None:
            unlearned_probs = _probs_by_id(scored_train)
            others = scored_train.where((train.y != forget_class).numpy()).split
            report["Fr"] = _fr(original, class_train.split, others, unlearned_probs, seed)
            report["Fr_member"] = _fr(original, class_train.split, class_test.split, unlearned_probs, seed)
        report["Fs"] = _fs(class_train, class_test, seed)
    return report


# ---------------------------------------------------------------- cost

@dataclass
class Cost:
    time_s: float = 0.0
    peak_mem_bytes: int = 0
    mem_kind: str = "rss"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def measure(device: torch.device | str = "cpu", interval_s: float = 0.005):
    """Wall time and peak memory of the block.

    CPU: peak resident set size above the level at entry, sampled every 5 ms.
    GPU: ``torch.cuda.max_memory_allocated`` above the level at entry.
    """
    cost = Cost()
    on_gpu = torch.device(device).type == "cuda"
    stop = threading.Event()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        cost.mem_kind = "cuda_max_allocated"
    else:
        base = _rss_bytes()
        peak = [base]

        def sample():
            while not stop.wait(interval_s):
                peak[0] = max(peak[0], _rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        if on_gpu:
            torch.cuda.synchronize()
        cost.time_s = time.perf_counter() - start
        if on_gpu:
            cost.peak_mem_bytes = int(torch.cuda.max_memory_allocated() - base)
        else:
            stop.set()
            sampler.join()
            peak[0] = max(peak[0], _rss_bytes())
            cost.peak_mem_bytes = int(peak[0] - base)


def retained_metrics(model, dataset, kind: str | None) -> dict[str, float]:
    """RA (accuracy on the dataset version's training split, i.e. the retain set), TA, and for a
    class request TA on the forgotten class's test digits and on the others. The forgotten class
    is the one the version's training split no longer has."""
    train, test = Scored.of(model, dataset.train), Scored.of(model, dataset.test)
    out = {"RA": train.acc(), "TA": test.acc()}
    if kind == "class":
        gone = sorted(set(dataset.test.y.tolist()) - set(dataset.train.y.tolist()))
        if len(gone) == 1:
            in_class = (dataset.test.y == gone[0]).numpy()
            out["TA_forget"] = test.where(in_class).acc()
            out["TA_retained"] = test.where(~in_class).acc()
    return out
