"""Concept bank, PCBM, IG ranking, donor rule, and concept-folder validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from unlearn_core.concepts import (cav_bank, class_attributions, fit_pcbm, load_concept_folders, paste_donor_patch,
                                   prototype_bank, select_donor, top_concepts)
from unlearn_core.errors import InputError
from unlearn_core.methods import ForgetRequest, get_method
from unlearn_core.training import extract_features, train_classifier

PLANTED = 3


class TinyCNN(nn.Module):
    """A small classifier with the ``features``/``head`` interface, trains in ~1 s."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.fc = nn.Linear(8 * 14 * 14, 64)
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return F.relu(self.fc(torch.flatten(F.relu(self.conv(x)), 1)))

    def forward(self, x):
        return self.head(self.features(x))


def square(x):
    x = x.clone()
    x[:, :, 1:8, 1:8] = 1.0
    return x


def bar(x):
    x = x.clone()
    x[:, :, 24:27, 2:26] = 1.0
    return x


def dots(x):
    x = x.clone()
    x[:, :, 2:4, 22:24] = 1.0
    x[:, :, 24:26, 2:4] = 1.0
    return x


@pytest.fixture(scope="module")
def planted(mnist):
    """1,500 digits where every image of class 3 carries a bright square patch,
    a tiny CNN trained on them, and concept example sets built from other classes."""
    order = np.random.default_rng(0).permutation(len(mnist.train))  # the split is sorted by label
    train = mnist.train.subset(np.sort(order[:1500]))
    x = train.x.clone()
    is3 = train.y == PLANTED
    x[is3] = square(x[is3])
    train.x = x
    torch.manual_seed(0)  # the weight init must not depend on which tests ran before
    model = train_classifier(TinyCNN(), train.x, train.y, epochs=3, lr=2e-3, seed=0)
    rest = mnist.train.subset(order[1500:1560])
    others = rest.x[rest.y != PLANTED][:40]
    concepts = {"square": square(others), "bar": bar(others), "dots": dots(others)}
    return train, model, concepts


def test_ig_ranks_the_planted_concept_first(planted):
    train, model, concepts = planted
    feats = extract_features(model, train.x)
    bank = cav_bank(model, concepts, feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:300]])
    scores = bank.scores(feats)
    pcbm = fit_pcbm(scores, train.y, 10)
    attr = class_attributions(pcbm, scores, train.y, 10, n_steps=16)
    assert bank.names[top_concepts(attr, PLANTED, 1)[0]] == "square"
    # the square pushes the class-3 logit up more than any other class's logit
    assert int(attr[:, bank.names.index("square")].argmax()) == PLANTED


def _write_folder(root, concepts):
    for name, images in concepts.items():
        (root / name).mkdir(parents=True)
        for i, img in enumerate(images):
            Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).save(root / name / f"{i}.png")


def test_concept_poison_names_the_planted_concept_and_forgets(planted, tmp_path):
    train, model, concepts = planted
    _write_folder(tmp_path / "concepts", concepts)
    request = ForgetRequest("class", train, (train.y == PLANTED).numpy(), 10, "tiny", forget_class=PLANTED)
    method = get_method("concept_poison")(model, {"concept_dir": str(tmp_path / "concepts"), "epochs": 10}, "cpu")
    new, result = method.unlearn(request)
    d = result.details
    assert d["concept_source"] == "folders"
    assert d["forgotten_concepts"][0]["concept"] == "square"
    assert d["donor_class"] != PLANTED and len(d["donor_concepts"]) == 3
    forget_acc = (new(train.x[train.y == PLANTED]).argmax(1) == PLANTED).float().mean()
    assert forget_acc <= 0.05


def test_donor_patch_is_pasted_into_one_window_per_image(planted):
    train, model, concepts = planted
    feats = extract_features(model, train.x)
    bank = cav_bank(model, concepts, feats[:300])
    forget = train.x[train.y == PLANTED][:8]
    donors = train.x[train.y == 5][:20]
    out = paste_donor_patch(model, forget, donors, bank, bank.names.index("square"), bank.names.index("bar"), 5)
    changed = (out != forget).flatten(1)
    assert changed.any(1).all()
    patches = set()
    for img, new in zip(forget, out):
        rows, cols = torch.nonzero((img != new)[0], as_tuple=True)
        assert rows.max() - rows.min() < 5 and cols.max() - cols.min() < 5  # inside one 5x5 window
        r0, c0 = rows.min().item(), cols.min().item()
        patches.add(new[0, r0:r0 + 5, c0:c0 + 5].sum().item() > 0)
    assert patches == {True}


def test_prototype_bank_names_concepts_by_class(mnist):
    feats = torch.randn(200, 16) + torch.repeat_interleave(torch.eye(16)[:4] * 5, 50, 0)
    labels = torch.repeat_interleave(torch.arange(4), 50)
    bank = prototype_bank(feats, labels, per_class=2)
    assert len(bank.names) == 8 and bank.names[0] == "class 0 prototype 0"
    assert torch.allclose(bank.vectors.norm(dim=1), torch.ones(8), atol=1e-5)


# ---- donor rule on hand-made matrices: rows = classes, columns = concepts

def test_donor_shared_top_concept():
    attributions = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0],   # c = 0: top-2 concepts 0, 1
                                 [0.0, 0.0, 0.0, 9.0, 0.0],   # class 1: top-1 = 3 (not shared)
                                 [0.0, 7.0, 0.0, 0.0, 0.0],   # class 2: top-1 = 1 (shared, rank 2)
                                 [0.0, 0.0, 6.0, 0.0, 0.0]])  # class 3: top-1 = 2 (not in top-2)
    weights = torch.zeros(4, 5)
    weights[1, 0] = 10.0  # would win the fallback; must not be used
    assert select_donor(0, attributions, weights, top_k=2) == (2, "shared_concept")
    # with top-3, class 3's concept 2 is also shared; class 2's concept ranks higher for c
    assert select_donor(0, attributions, weights, top_k=3) == (2, "shared_concept")


def test_donor_prefers_the_higher_ranked_shared_concept():
    attributions = torch.tensor([[1.0, 5.0, 3.0],
                                 [0.0, 0.0, 2.0],   # top-1 = 2, rank 2 for c
                                 [0.0, 4.0, 0.0]])  # top-1 = 1, rank 1 for c
    assert select_donor(0, attributions, torch.zeros(3, 3), top_k=3) == (2, "shared_concept")


def test_donor_falls_back_to_pcbm_weight():
    attributions = torch.tensor([[5.0, 1.0, 0.0],
                                 [0.0, 0.0, 3.0],
                                 [0.0, 0.0, 2.0]])
    weights = torch.tensor([[9.0, 0.0, 0.0],    # c itself is excluded
                            [0.5, 0.0, 0.0],
                            [2.0, 0.0, 0.0]])   # largest weight on c's top-1 concept (0)
    assert select_donor(0, attributions, weights, top_k=2) == (2, "pcbm_weight")


# ---- bad input

def test_empty_concept_folder(tmp_path):
    (tmp_path / "stripes").mkdir()
    with pytest.raises(InputError, match="'stripes' is empty") as err:
        load_concept_folders(tmp_path, (1, 28, 28), field="concept_poison.concept_dir")
    assert err.value.field == "concept_poison.concept_dir"


def test_concept_root_without_folders(tmp_path):
    with pytest.raises(InputError, match="no concept folders"):
        load_concept_folders(tmp_path, (1, 28, 28))


def test_concept_images_of_wrong_shape(tmp_path):
    (tmp_path / "blob").mkdir()
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "blob" / "a.png")
    with pytest.raises(InputError, match="expected 28x28") as err:
        load_concept_folders(tmp_path, (1, 28, 28), field="concept_dir")
    assert err.value.field == "concept_dir"
