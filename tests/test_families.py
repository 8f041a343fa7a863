"""Model families: the warm worker's logits reuse gives the same report as a fresh forward pass."""
from __future__ import annotations

import copy

import numpy as np
import torch

from unlearn_core.families.classifier import _logits, scored_splits
from unlearn_core.metrics import classifier_report


def test_reused_logits_give_the_same_report_on_what_remains(trained_cnn, mnist):
    _logits.clear()
    mask = (mnist.train.y == 3).numpy()
    fresh = classifier_report(trained_cnn, mnist.train, mnist.test, mask, 3)
    first = classifier_report(trained_cnn, mnist.train, mnist.test, mask, 3, scored=scored_splits(trained_cnn, mnist))
    same_weights = copy.deepcopy(trained_cnn)  # e.g. the committed version loaded back from the registry
    again = classifier_report(same_weights, mnist.train, mnist.test, mask, 3, scored=scored_splits(same_weights, mnist))
    assert fresh == first == again and len(_logits) == 1

    # after a deletion the dataset is a subset: the kept rows' logits are reused, row for row
    kept = np.flatnonzero(~mask)[::2]
    smaller = copy.copy(mnist)
    smaller.train = mnist.train.subset(kept)
    train, _ = scored_splits(trained_cnn, smaller)
    assert list(train.split.ids) == list(mnist.train.ids[kept])
    assert np.array_equal(train.logits.numpy(), scored_splits(trained_cnn, mnist)[0].logits.numpy()[kept])

    changed = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        changed.head.bias += 1.0
    scored_splits(changed, mnist)
    assert len(_logits) == 2  # other weights, another entry
