"""Classifier unlearning metrics, exactly as defined in shared/METHODS.md.

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
from sklearn.svm import SVC, LinearSVC

from .data import Split
from .training import predict_logits

FR_MAX_MEMBERS = 1500


def softmax(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return F.softmax(predict_logits(model, x), dim=1).numpy()


def true_class_confidence(model: nn.Module, split: Split) -> np.ndarray:
    probs = softmax(model, split.x)
    return probs[np.arange(len(split)), split.y.numpy()]


def acc(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return float((predict_logits(model, split.x).argmax(1) == split.y).float().mean())


def mia_efficacy(model: nn.Module, retain: Split, forget: Split, test: Split, seed: int = 0) -> float:
    """SalUn / l1-sparse MIA-Efficacy: share of D_f an attacker calls non-member.

    An ``SVC(C=3, kernel="rbf", gamma="auto")`` is fitted on the true-class
    confidence of |D_t| samples of D_r (members, 1) and of D_t (non-members, 0).
    """
    rng = np.random.default_rng(seed)
    n = min(len(test), len(retain))
    members = retain.subset(rng.choice(len(retain), size=n, replace=False))
    feats = np.concatenate([true_class_confidence(model, members),
                            true_class_confidence(model, test)])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(len(test))])
    clf = SVC(C=3, kernel="rbf", gamma="auto").fit(feats, labels)
    pred = clf.predict(true_class_confidence(model, forget)[:, None])
    return float(1.0 - pred.mean())


def fr_score(original: nn.Module, unlearned: nn.Module, class_train: Split, class_test: Split,
             seed: int = 0) -> float:
    """Fr: share of class-c training samples judged non-member by an attack
    trained on the ORIGINAL model's softmax (members: class-c train, up to
    1,500; non-members: class-c test), applied to the unlearned model."""
    rng = np.random.default_rng(seed)
    members = class_train
    if len(members) > FR_MAX_MEMBERS:
        members = members.subset(rng.choice(len(members), FR_MAX_MEMBERS, replace=False))
    feats = np.concatenate([softmax(original, members.x), softmax(original, class_test.x)])
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(class_test))])
    attack = make_pipeline(StandardScaler(), LinearSVC(dual="auto", max_iter=20000, random_state=seed))
    attack.fit(feats, labels)
    return float(1.0 - attack.predict(softmax(unlearned, class_train.x)).mean())


def fs_score(unlearned: nn.Module, class_train: Split, class_test: Split, seed: int = 0) -> float:
    """Fs: |accuracy - 0.5| of a logistic-regression attack on per-sample
    cross-entropy, members = class-c train, non-members = class-c test,
    10-split stratified shuffle cross-validation.

    Interpretation: members are subsampled to the number of non-members so
    that 0.5 is the chance level the formula assumes.
    """
    rng = np.random.default_rng(seed)
    n = min(len(class_train), len(class_test))
    members = class_train.subset(rng.choice(len(class_train), n, replace=False))
    non_members = class_test.subset(rng.choice(len(class_test), n, replace=False))

    def losses(split: Split) -> np.ndarray:
        logits = predict_logits(unlearned, split.x)
        return F.cross_entropy(logits, split.y, reduction="none").numpy()

    feats = np.concatenate([losses(members), losses(non_members)])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    cv = StratifiedShuffleSplit(n_splits=10, test_size=0.3, random_state=seed)
    scores = cross_val_score(LogisticRegression(), feats, labels, cv=cv, scoring="accuracy")
    return float(abs(scores.mean() - 0.5))


def avg_gap(method: dict, retrain: dict, keys=("UA", "MIA_efficacy", "RA", "TA")) -> float:
    """Mean |method - retrain| over UA, MIA-Efficacy, RA, TA (fractions)."""
    return float(np.mean([abs(method[k] - retrain[k]) for k in keys]))


def classifier_report(model: nn.Module, train: Split, test: Split, forget_mask: np.ndarray,
                      forget_class: int | None = None, original: nn.Module | None = None,
                      seed: int = 0) -> dict:
    """UA, RA, TA (+ per-class TA, Fr, Fs for class unlearning) and MIA-Efficacy."""
    forget, retain = train.subset(np.flatnonzero(forget_mask)), train.subset(np.flatnonzero(~forget_mask))
    report = {
        "UA": 1.0 - acc(model, forget),
        "RA": acc(model, retain),
        "TA": acc(model, test),
        "MIA_efficacy": mia_efficacy(model, retain, forget, test, seed=seed),
    }
    if forget_class is not None:
        in_class = (test.y == forget_class).numpy()
        class_test = test.subset(np.flatnonzero(in_class))
        report["TA_retained"] = acc(model, test.subset(np.flatnonzero(~in_class)))
        report["TA_forget"] = acc(model, class_test)
        class_train = train.subset(np.flatnonzero((train.y == forget_class).numpy()))
        if original is not None:
            report["Fr"] = fr_score(original, model, class_train, class_test, seed=seed)
        report["Fs"] = fs_score(model, class_train, class_test, seed=seed)
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
