"""Architectures: shapes, the features/head contract every last-layer method relies on, save/load."""
from __future__ import annotations

import pytest
import torch

from unlearn_core.errors import InputError
from unlearn_core.methods import ForgetRequest, get_method
from unlearn_core.models import build_model, load_model, save_model


@pytest.mark.parametrize("name, channels, size", [("mnist_cnn", 1, 28), ("cifar_cnn", 3, 32),
                                                    ("resnet18", 3, 32), ("resnet18", 1, 32)])
def test_features_feed_the_head(name, channels, size):
    model = build_model(name, num_classes=10, in_channels=channels).eval()
    x = torch.rand(2, channels, size, size)
    feats = model.features(x)
    assert feats.shape == (2, model.head.in_features)
    assert torch.allclose(model(x), model.head(feats))


def test_save_and_load_roundtrip(tmp_path):
    model = build_model("mnist_cnn")
    save_model(model, "mnist_cnn", 10, 1, tmp_path / "m.pt")
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta == {"arch": "mnist_cnn", "num_classes": 10, "in_channels": 1}
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_unknown_model_names_the_field():
    with pytest.raises(InputError, match="model: unknown model 'vgg'"):
        build_model("vgg")


def test_lra_npp_runs_on_resnet_and_refuses_with_incoming(mnist):
    """ResNet-18 has no linear layer before its head: class_row works, with_incoming is refused."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 1).eval()
    small = mnist.train.subset(range(64))
    pad = lambda x: torch.nn.functional.pad(x, (2, 2, 2, 2))  # noqa: E731 - 28x28 digits into 32x32
    small.x = pad(small.x)
    substitute = pad(mnist.test.x[mnist.test.y == 1][:8])
    request = ForgetRequest("class", small, (small.y == 1).numpy(), 10, "resnet18", forget_class=1,
                            substitute=substitute)
    new, result = get_method("lra_npp")(model, {"analyze_top_n": 20, "perturb_top_n": 40}, "cpu").unlearn(request)
    assert torch.count_nonzero(new.head.weight[1, result.details["path"]]) == 0
    with pytest.raises(InputError, match="lra_npp.scope"):
        get_method("lra_npp")(model, {"scope": "with_incoming"}, "cpu").unlearn(request)
