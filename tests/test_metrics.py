"""Metric functions against small hand-computed cases."""
from __future__ import annotations

import mmap
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from unlearn_core.data import Split
from unlearn_core.metrics import acc, avg_gap, classifier_report, fr_score, fs_score, measure, mia_efficacy


class FixedLogits(nn.Module):
    """'Model' whose logits are the first pixels of its input: outputs are chosen by the test."""

    def forward(self, x):
        return x.flatten(1)[:, :3]


def split_from_logits(logits, labels) -> Split:
    x = torch.zeros(len(labels), 1, 2, 2)
    x.view(len(labels), -1)[:, :3] = torch.tensor(logits, dtype=torch.float32)
    n = len(labels)
    return Split(x, torch.tensor(labels), np.array([f"id{i}" for i in range(n)]), np.array([""] * n))


def test_accuracy_ua_ra_ta_by_hand():
    model = FixedLogits()
    # predictions: 0, 1, 2, 0 ; labels 0, 1, 1, 1 -> train acc 2/4
    train = split_from_logits([[5, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]], [0, 1, 1, 1])
    test = split_from_logits([[5, 0, 0], [0, 0, 5]], [0, 2])
    forget_mask = np.array([False, False, True, True])  # both forget samples are misclassified
    assert acc(model, train) == 0.5
    report = classifier_report(model, train, test, forget_mask)
    assert report["UA"] == 1.0  # acc(D_f) = 0
    assert report["RA"] == 1.0
    assert report["TA"] == 1.0


def test_avg_gap_is_mean_absolute_difference():
    method = {"UA": 0.10, "MIA_efficacy": 0.20, "RA": 0.90, "TA": 0.80}
    retrain = {"UA": 0.12, "MIA_efficacy": 0.30, "RA": 0.95, "TA": 0.80}
    assert avg_gap(method, retrain) == pytest.approx((0.02 + 0.10 + 0.05 + 0.0) / 4)


def test_mia_efficacy_separates_confident_members_from_unsure_non_members():
    model = FixedLogits()
    rng = np.random.default_rng(0)
    confident = [[8 + rng.random(), 0, 0] for _ in range(40)]
    unsure = [[0.1 * rng.random(), 0, 0] for _ in range(40)]
    retain = split_from_logits(confident, [0] * 40)
    test = split_from_logits(unsure, [0] * 40)
    forget_like_test = split_from_logits([[0.05, 0, 0]] * 10, [0] * 10)
    forget_like_train = split_from_logits([[8.5, 0, 0]] * 10, [0] * 10)
    assert mia_efficacy(model, retain, forget_like_test, test) == 1.0
    assert mia_efficacy(model, retain, forget_like_train, test) == 0.0


def test_fs_is_zero_for_identical_losses_and_half_for_separable_ones():
    model = FixedLogits()
    same = [[1.0, 0, 0]] * 30
    assert fs_score(model, split_from_logits(same, [0] * 30), split_from_logits(same, [0] * 30)) == pytest.approx(0.0, abs=0.05)
    low = [[9.0, 0, 0]] * 30
    high = [[0.0, 9.0, 0]] * 30
    assert fs_score(model, split_from_logits(low, [0] * 30), split_from_logits(high, [0] * 30)) == pytest.approx(0.5)


def test_measure_reports_time_and_memory():
    size = 64 * 2**20
    with measure("cpu") as cost:
        # fresh anonymous pages: an array could reuse memory the allocator kept from earlier tests (seen once
        # in a full suite run: RSS grew by 4 KiB), these always add to the resident set once touched
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.05)  # memory is sampled every 5 ms: hold it long enough to be seen on a busy machine
    assert cost.time_s > 0
    assert cost.peak_mem_bytes >= 32 * 2**20
    block.close()


def _fr_fixture():
    """Class 0 (members) sits at logit pattern [6, 0, 0]; the other classes at [0, 6, 0] / [0, 0, 6]."""
    rng = np.random.default_rng(0)
    jitter = lambda n: rng.normal(0, 0.3, size=(n, 3))  # noqa: E731
    logits = np.concatenate([[6, 0, 0] + jitter(30), [0, 6, 0] + jitter(15), [0, 0, 6] + jitter(15)])
    return split_from_logits(logits.tolist(), [0] * 30 + [1] * 15 + [2] * 15)


class Forgetful(nn.Module):
    """An 'unlearned' model that answers class-0 inputs like another class (shifts the first logit)."""

    def forward(self, x):
        logits = x.flatten(1)[:, :3].clone()
        was_zero = logits[:, 0] > 3
        logits[was_zero] = torch.tensor([0.0, 6.0, 0.0])
        return logits


def test_fr_is_zero_for_the_original_and_one_when_class_c_looks_like_other_classes():
    train = _fr_fixture()
    original = FixedLogits()
    assert fr_score(original, original, train, forget_class=0) == 0.0
    assert fr_score(original, Forgetful(), train, forget_class=0) == 1.0


def test_classifier_report_carries_fr_fr_member_and_authors_at_ag():
    train = _fr_fixture()
    # test split: ten class-0 images, then other classes with 2 of 3 right
    test = split_from_logits([[6, 0, 0]] * 10 + [[0, 6, 0], [0, 0, 6], [0, 0, 6]], [0] * 10 + [1, 2, 1])
    mask = (train.y == 0).numpy()
    report = classifier_report(Forgetful(), train, test, mask, forget_class=0, original=FixedLogits())
    assert report["Fr"] == 1.0
    assert 0.0 <= report["Fr_member"] <= 1.0
    assert report["At"] == report["TA_forget"] == 0.0  # Forgetful predicts 1 for every class-0 image
    assert report["Ag"] == report["TA_retained"] == pytest.approx(2 / 3)
    on_train = classifier_report(Forgetful(), train, test, mask, forget_class=0, original=FixedLogits(),
                                 at_ag_split="train")
    assert on_train["At"] == 0.0 and on_train["Ag"] == 1.0
