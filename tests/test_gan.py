"""GAN unlearning: tiny DCGANs trained in seconds on MNIST-5k slices.

Reference classifier = the session's ``trained_cnn``. The conditional GAN
learns only the 0s and 1s (10 labels), which a width-8 GAN renders after a
few epochs. Stated bounds: after class unlearning of 0, at most 30% of the
class-0-conditioned samples are recognised as 0 (at least 50% before) and the
feature-FID vs D_r stays within 10% of the original's;
after item unlearning of a GAN whose discriminator leaks the forget set,
the membership AUC on held-out images the stop rule never saw (at least
0.6 before) goes down and ends at or below 0.65, with either forget target
(``fake``: the stop rule, rank-AUC variant, brings it to 0.5 on its own
calibration half; the halves are ~100 images each, so the other half keeps
some of the leak; ``holdout`` pulls the forget scores to the held-out ones
from above, so that rule need not fire within the rounds). After class
unlearning with ``forget_target: holdout`` the forgotten 0s score like unseen
images (membership AUC within 0.15 of 0.5), with ``fake`` far below them. The
full-size benchmark shows the MNIST-5k figures.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unlearn_core.errors import InputError
from unlearn_core.gan import GAN, load_gan, sample, save_gan, train_gan
from unlearn_core.gan_metrics import class_rate, feature_fid, gan_gate_report, membership_auc
from unlearn_core.methods import ForgetRequest, get_method
from unlearn_core.methods.cascade_gan import CascadeGan


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convs run faster on one thread than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train_slice(mnist):
    """The ~800 training 0s and 1s: a distribution a tiny GAN learns in seconds."""
    return mnist.train.subset(np.flatnonzero((mnist.train.y <= 1).numpy()))


@pytest.fixture(scope="module")
def holdouts(mnist):
    """Held-out 0s and 1s, halved: stop-rule set, attack/evaluation set."""
    rows = np.flatnonzero((mnist.test.y <= 1).numpy())
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    return mnist.test.subset(rows[: len(rows) // 2]), mnist.test.subset(rows[len(rows) // 2:])


@pytest.fixture(scope="module")
def cgan(train_slice):
    """Conditional (10 labels) DCGAN, width 8, 6 epochs on the 0s and 1s."""
    torch.manual_seed(0)  # initial weights
    return train_gan(GAN(num_classes=10, width=8), train_slice.x, train_slice.y, epochs=6, seed=0)


def _state(gan):
    return {k: v.clone() for k, v in gan.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_class_unlearning_lowers_class_rate_and_keeps_fid(cgan, train_slice, holdouts, trained_cnn):
    before = _state(cgan)
    request = ForgetRequest("class", train_slice, (train_slice.y == 0).numpy(), 10, "dcgan", forget_class=0)
    # no reference: the donor class is c + 1 = 1, the other class this GAN knows
    new, result = CascadeGan(cgan, {}, "cpu", holdout=holdouts[0]).unlearn(request)
    assert _same(before, _state(cgan)), "the input GAN must not change"
    assert result.method == "cascade_gan" and result.details["rounds"] >= 15
    assert result.details["donor_class"] == 1

    c_labels = torch.zeros(300, dtype=torch.long)
    rate_before = class_rate(trained_cnn, sample(cgan, 300, labels=c_labels)[0], 0)
    rate_after = class_rate(trained_cnn, sample(new, 300, labels=c_labels)[0], 0)
    assert rate_before >= 0.5 and rate_after <= 0.3, (rate_before, rate_after)

    # retained classes: bit-identical generation (only the class-c conditioning moved)
    others = torch.ones(100, dtype=torch.long)
    assert torch.equal(sample(cgan, 100, labels=others)[0], sample(new, 100, labels=others)[0])

    # samples of the two trained labels vs D_r (the 1s): within 10% of the original's FID
    labels = torch.arange(400) % 2
    fid_before = feature_fid(trained_cnn, request.retain.x, sample(cgan, 400, labels=labels)[0])
    fid_after = feature_fid(trained_cnn, request.retain.x, sample(new, 400, labels=labels)[0])
    assert fid_after <= 1.10 * fid_before, (fid_before, fid_after)


@pytest.mark.parametrize("forget_target", ["holdout", "fake"])
def test_item_unlearning_removes_discriminator_membership_signal(forget_target, cgan, train_slice, holdouts):
    mask = np.zeros(len(train_slice), dtype=bool)
    mask[np.random.default_rng(0).choice(len(mask), 64, replace=False)] = True
    request = ForgetRequest("samples", train_slice, mask, 10, "dcgan")
    forget = request.forget
    # A discriminator that leaks D_f: 150 extra D steps scoring the forget images real (1)
    # and other training images fake (0).
    rest = request.retain
    leaky = GAN(**cgan.arch)
    leaky.load_state_dict(cgan.state_dict())
    d = leaky.discriminator.train()
    opt = torch.optim.Adam(d.parameters(), 2e-3)
    for i in range(150):
        other = torch.randint(len(rest), (64,), generator=torch.Generator().manual_seed(i))
        loss = (F.binary_cross_entropy_with_logits(d(forget.x, forget.y), torch.ones(64))
                + F.binary_cross_entropy_with_logits(d(rest.x[other], rest.y[other]), torch.zeros(64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    leaky.eval()
    auc_before = membership_auc(leaky, forget, holdouts[1])
    config = {"lr_d": 2e-3, "rounds": 300, "stop_statistic": "auc", "forget_target": forget_target,
              "stop_margin_item": 0.0}
    new, result = CascadeGan(leaky, config, "cpu", holdout=holdouts[0]).unlearn(request)
    auc_after = membership_auc(new, forget, holdouts[1])
    assert auc_before >= 0.6, auc_before
    assert auc_after < auc_before and auc_after <= 0.65, (auc_before, auc_after)
    if forget_target == "fake":  # 0 overshoots the held-out scores, so the rank-AUC rule fires
        assert result.details["stopped"] == "forget_score_reached_holdout"


def test_class_unlearning_scores_forgotten_images_like_unseen_ones(cgan, train_slice, holdouts):
    """forget_target holdout: D ends scoring the forgotten 0s like held-out images it never saw
    (membership AUC on the attack half near 0.5); fake (target 0) drives them far below (0.24 measured)."""
    request = ForgetRequest("class", train_slice, (train_slice.y == 0).numpy(), 10, "dcgan", forget_class=0)
    out = {}
    for target in ("holdout", "fake"):
        new, result = CascadeGan(cgan, {"forget_target": target}, "cpu", holdout=holdouts[0]).unlearn(request)
        out[target] = (membership_auc(new, request.forget, holdouts[1]),
                       result.details["d_holdout_after"] - result.details["d_forget_after"])
    (auc_h, gap_h), (auc_f, gap_f) = out["holdout"], out["fake"]
    assert abs(auc_h - 0.5) <= 0.15 and gap_h <= 0.05, out
    assert auc_f <= 0.35 and gap_f >= 0.5, out


def test_unconditional_class_request_needs_reference_and_runs_with_it(mnist, holdouts, trained_cnn):
    part = mnist.train.subset(np.arange(0, len(mnist.train), 8))
    gan = train_gan(GAN(num_classes=0), part.x, None, epochs=1, seed=0)
    request = ForgetRequest("class", part, (part.y == 1).numpy(), 10, "dcgan", forget_class=1)
    with pytest.raises(InputError) as err:
        CascadeGan(gan, {}, "cpu", holdout=holdouts[0]).unlearn(request)
    assert err.value.field == "reference"
    new, result = CascadeGan(gan, {"rounds": 3, "min_rounds_class": 3, "latent_pool": 64}, "cpu",
                             reference=trained_cnn, holdout=holdouts[0]).unlearn(request)
    assert result.details["rounds"] == 3
    assert not _same(_state(gan), _state(new))


@pytest.mark.parametrize("case", ["shape", "class", "too_many", "substitute", "holdout"])
def test_bad_input_is_rejected_and_changes_nothing(case, cgan, train_slice, holdouts):
    before = _state(cgan)
    mask = np.zeros(len(train_slice), dtype=bool)
    mask[:64] = True
    kwargs = {"holdout": holdouts[0]}
    request = ForgetRequest("samples", train_slice, mask, 10, "dcgan")
    field = {"shape": "forget", "class": "forget_class", "too_many": "forget_mask", "substitute": "substitute",
             "holdout": "holdout"}[case]
    if case == "shape":
        bad = type(train_slice)(torch.zeros(len(train_slice), 1, 32, 32), train_slice.y, train_slice.ids,
                                train_slice.subjects)
        request = ForgetRequest("samples", bad, mask, 10, "dcgan")
    elif case == "class":
        request = ForgetRequest("class", train_slice, mask, 10, "dcgan", forget_class=12)
    elif case == "too_many":
        request = ForgetRequest("samples", train_slice, np.ones(len(train_slice) + 5, dtype=bool), 10, "dcgan")
    elif case == "substitute":
        request.substitute = train_slice.x[:3].clone()  # the first forget images themselves
    else:
        kwargs["holdout"] = train_slice.subset(np.arange(64, 128))  # training images are not held out
    with pytest.raises(InputError) as err:
        CascadeGan(cgan, {}, "cpu", **kwargs).unlearn(request)
    assert err.value.field == field
    assert _same(before, _state(cgan))


def test_bad_config_names_the_field(cgan):
    with pytest.raises(InputError) as err:
        CascadeGan(cgan, {"rounds": 0}, "cpu")
    assert err.value.field == "cascade_gan.rounds"


def test_save_load_roundtrip_and_registry(cgan, tmp_path):
    save_gan(cgan, tmp_path / "gan.pt")
    again = load_gan(tmp_path / "gan.pt")
    assert again.arch == cgan.arch
    assert torch.equal(sample(again, 20)[0], sample(cgan, 20)[0])
    assert get_method("cascade_gan") is CascadeGan and get_method("retrain_gan").name == "retrain_gan"


def test_gate_report_keys_and_verdict(cgan, train_slice, holdouts, trained_cnn):
    request = ForgetRequest("class", train_slice, (train_slice.y == 0).numpy(), 10, "dcgan", forget_class=0)
    report, outcome = gan_gate_report(cgan, cgan, request, trained_cnn, holdout=holdouts[1],
                             gates={"n_samples": 300, "max_class_rate": 0.0})
    assert report["fid_ratio"] == pytest.approx(1.0)
    assert report["class_rate_before"] == report["class_rate_after"] > 0
    assert outcome.passed is False and [c.name for c in outcome.checks if not c.passed] == ["class_rate"]
    assert {"fid_before", "fid_after", "membership_auc_before", "membership_auc_after"} <= report.keys()
    with pytest.raises(InputError) as err:
        gan_gate_report(cgan, cgan, request, trained_cnn, gates={"max_fid": 1.0})
    assert err.value.field == "gan_gates.max_fid"
    with pytest.raises(InputError):
        gan_gate_report(cgan, cgan, ForgetRequest("samples", train_slice, (train_slice.y == 0).numpy(), 10,
                                                  "dcgan"), trained_cnn)


def test_stage_command_trains_and_saves_a_gan(train_slice, tmp_path):
    import json

    from flows.cli import main

    prepared = tmp_path / "prepared"  # the layout of `unlearn stage prepare`, 256 training digits
    prepared.mkdir()
    for name, part in (("train", train_slice.subset(np.arange(256))), ("test", train_slice.subset(np.arange(8)))):
        np.savez(prepared / f"{name}.npz", x=(part.x * 255).round().to(torch.uint8).numpy(), y=part.y.numpy(),
                 ids=part.ids, subjects=part.subjects)
    (prepared / "summary.json").write_text(json.dumps({"num_classes": 10, "image_shape": [1, 28, 28]}))
    (tmp_path / "params.yaml").write_text("gan:\n  epochs: 1\n  width: 4\n  conditional: false\n")
    rc = main(["gan", "train", "--prepared", str(tmp_path / "prepared"), "--params", str(tmp_path / "params.yaml"),
               "--model", str(tmp_path / "gan.pt")])
    assert rc == 0
    gan = load_gan(tmp_path / "gan.pt")
    assert gan.arch == {"z_dim": 32, "num_classes": 0, "width": 4}
    (tmp_path / "bad.yaml").write_text("gan:\n  epochs: 0\n")
    assert main(["gan", "train", "--prepared", str(tmp_path / "prepared"), "--params",
                 str(tmp_path / "bad.yaml"), "--model", str(tmp_path / "bad.pt")]) == 2
    assert not (tmp_path / "bad.pt").exists()


def test_retrain_gan_trains_a_fresh_gan_on_the_retain_set(cgan, train_slice):
    before = _state(cgan)
    request = ForgetRequest("class", train_slice, (train_slice.y == 0).numpy(), 10, "dcgan", forget_class=0)
    fresh, result = get_method("retrain_gan")(cgan, {"epochs": 1}, "cpu").unlearn(request)
    assert fresh.arch == cgan.arch and fresh is not cgan
    assert result.details == {"n_retain": int((train_slice.y != 0).sum()), "epochs": 1}
    assert _same(before, _state(cgan)) and not _same(before, _state(fresh))
