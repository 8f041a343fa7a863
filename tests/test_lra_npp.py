"""LRA-NPP on the real trained CNN: forgets the class, keeps the rest, refuses training data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearn_core.errors import InputError
from unlearn_core.methods import ForgetRequest, get_method
from unlearn_core.methods.lra_npp import head_relevance, neuronal_path
from unlearn_core.metrics import acc

FORGET = 3


def class_request(mnist, substitute=None, forget_class=FORGET) -> ForgetRequest:
    if substitute is None:
        substitute = mnist.test.x[mnist.test.y == forget_class]
    return ForgetRequest("class", mnist.train, (mnist.train.y == forget_class).numpy(), mnist.num_classes,
                         "mnist_cnn", forget_class=forget_class, substitute=substitute)


def split_by_class(split, c):
    in_c = (split.y == c).numpy()
    return split.subset(np.flatnonzero(in_c)), split.subset(np.flatnonzero(~in_c))


def test_lra_npp_forgets_class_and_keeps_retained_accuracy(mnist, trained_cnn):
    before = {k: trained_cnn.head.weight.detach().clone() for k in ("w",)}
    model, result = get_method("lra_npp")(trained_cnn, {"scope": "class_row"}, device="cpu").unlearn(
        class_request(mnist))
    forget_train, _ = split_by_class(mnist.train, FORGET)
    _, retained_test = split_by_class(mnist.test, FORGET)
    assert acc(trained_cnn, forget_train) > 0.9
    assert acc(model, forget_train) <= 0.05
    assert acc(model, retained_test) >= acc(trained_cnn, retained_test) - 0.02
    # only W_out[c, path] changed, and the input model is untouched
    assert torch.equal(trained_cnn.head.weight, before["w"])
    changed = (model.head.weight != trained_cnn.head.weight).nonzero()
    assert set(changed[:, 0].tolist()) == {FORGET}
    assert sorted(changed[:, 1].tolist()) == sorted(result.details["path"])
    assert 80 <= len(result.details["path"]) == result.details["path_size"] <= result.details["path_cap"] == 256
    assert result.time_s > 0 and result.method == "lra_npp"


def test_adaptive_path_grows_until_the_class_is_forgotten(mnist, trained_cnn):
    """A small fixed path leaves the class partly recognised; the adaptive one grows past it."""
    forget_train, _ = split_by_class(mnist.train, FORGET)
    fixed, fixed_result = get_method("lra_npp")(
        trained_cnn, {"perturb_top_n": 10, "max_perturb_top_n": 10, "scope": "class_row"},
        device="cpu").unlearn(class_request(mnist))
    adaptive, result = get_method("lra_npp")(
        trained_cnn, {"perturb_top_n": 10, "max_perturb_top_n": 400, "scope": "class_row"},
        device="cpu").unlearn(class_request(mnist))
    assert fixed_result.details["path_size"] == 10
    assert acc(fixed, forget_train) > 0.02
    assert 10 < result.details["path_size"] <= 256  # max_path_share 0.5 of the head's 512 inputs
    assert result.details["substitute_recognised_after"] <= 0.02  # recognised_max
    assert acc(adaptive, forget_train) <= 0.02
    assert fixed_result.details["path"] == result.details["path"][:10]  # the path grows, it is not re-chosen
    # doubling then bisection: the last size tried that passed is the one used, and it is the smallest
    # passing size to path_step: path_size - path_step failed (or is below the start)
    tried = result.details["path_sizes_tried"]
    assert tried[0] == 10 and result.details["path_size"] in tried and len(tried) <= 12


def test_scope_auto_escalates_to_all_classes_only_when_class_row_cannot_pass(mnist, trained_cnn):
    model, result = get_method("lra_npp")(trained_cnn, {}, device="cpu").unlearn(class_request(mnist))
    assert result.details["scopes_tried"] == ["class_row"] and result.details["scope_used"] == "class_row"
    changed = (model.head.weight != trained_cnn.head.weight).nonzero()
    assert set(changed[:, 0].tolist()) == {FORGET}  # the paper's perturbation sufficed
    # a 10-neuron cap: class_row cannot pass the check, so the same path is cut from every class
    capped, capped_result = get_method("lra_npp")(
        trained_cnn, {"perturb_top_n": 10, "max_perturb_top_n": 10}, device="cpu").unlearn(class_request(mnist))
    assert capped_result.details["scopes_tried"] == ["class_row", "all_classes"]
    assert capped_result.details["scope_used"] == "all_classes"
    assert torch.count_nonzero(capped.head.weight[:, capped_result.details["path"]]) == 0


def test_scope_auto_keeps_class_row_when_it_misses_only_within_escalate_above(mnist, trained_cnn):
    """recognised_max 0 cannot be met; whether that escalates depends on how far class_row misses it."""
    strict = {"recognised_max": 0.0, "recognised_prob": 1e-6}  # every check image is still "recognised"
    _, kept = get_method("lra_npp")(trained_cnn, {**strict, "escalate_above": 1.0}, device="cpu").unlearn(
        class_request(mnist))
    assert kept.details["scopes_tried"] == ["class_row"] and kept.details["scope_used"] == "class_row"
    assert kept.details["path_size"] == 80  # the smallest path within escalate_above 1.0: the first size tried
    _, escalated = get_method("lra_npp")(trained_cnn, {**strict, "escalate_above": 0.0}, device="cpu").unlearn(
        class_request(mnist))
    assert escalated.details["scopes_tried"] == ["class_row", "all_classes"]
    assert escalated.details["scope_used"] == "all_classes"


def test_check_set_is_a_fixed_number_of_held_out_substitutes(mnist, trained_cnn):
    """The recognition check scores n_check substitutes after the analysed ones, however many
    the request brings, so the method's cost does not grow with the data."""
    all_sub = mnist.test.x[mnist.test.y == FORGET]
    assert len(all_sub) > 36 + 32
    seen = []
    method = get_method("lra_npp")(trained_cnn, {"scope": "with_incoming", "n_check": 32},
                                     device="cpu")  # with_incoming: a full forward per check
    original_forward = type(trained_cnn).forward

    def spy(self, x):
        seen.append(len(x))
        return original_forward(self, x)

    type(trained_cnn).forward = spy
    try:
        _, result = method.unlearn(class_request(mnist, all_sub))
    finally:
        type(trained_cnn).forward = original_forward
    assert result.details["n_analysis"] == 36 and result.details["n_check"] == 32
    assert seen and set(seen) == {32}
    _, few = get_method("lra_npp")(trained_cnn, {}, device="cpu").unlearn(class_request(mnist, all_sub[:20]))
    assert few.details["n_analysis"] == 20 and few.details["n_check"] == 20  # no others: the analysed ones


def test_scope_all_classes_zeroes_the_path_columns(mnist, trained_cnn):
    model, result = get_method("lra_npp")(trained_cnn, {"scope": "all_classes"}, device="cpu").unlearn(
        class_request(mnist))
    path = result.details["path"]
    assert torch.count_nonzero(model.head.weight[:, path]) == 0


def test_with_incoming_zeroes_incoming_rows(mnist, trained_cnn):
    model, result = get_method("lra_npp")(trained_cnn, {"scope": "with_incoming"}, device="cpu").unlearn(
        class_request(mnist))
    path = result.details["path"]
    assert torch.count_nonzero(model.fc1.weight[path]) == 0
    assert torch.count_nonzero(model.fc1.bias[path]) == 0


def test_relevance_and_path_by_hand():
    head = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0]]))
    features = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 3.0, 1.0, 2.0]])
    rel = head_relevance(head, features, torch.tensor([0, 0]), epsilon=0.1)
    # epsilon rule on one linear layer: R_i = x_i w_0i * z_0 / (z_0 + eps)
    z = torch.tensor([2.0, 4.0])
    expected = features * head.weight[0] * (z / (z + 0.1))[:, None]
    assert torch.allclose(rel, expected, atol=1e-5)
    path, counts = neuronal_path(rel, analyze_top_n=1, perturb_top_n=1)
    assert path == [1] and counts.tolist() == [0, 2, 0, 0]


def test_refuses_substitutes_from_the_training_set(mnist, trained_cnn):
    leaked = torch.cat([mnist.test.x[mnist.test.y == FORGET][:5], mnist.train.x[mnist.train.y == FORGET][:2]])
    with pytest.raises(InputError, match=r"substitute: 2 substitute image\(s\) are in the training set"):
        get_method("lra_npp")(trained_cnn, {}, device="cpu").unlearn(class_request(mnist, leaked))


@pytest.mark.parametrize("substitute, message", [
    (torch.empty(0, 1, 28, 28), "none given"),
    (torch.zeros(3, 1, 32, 32), "shape"),
    (torch.full((3, 1, 28, 28), 2.0), r"\[0, 1\]"),
])
def test_rejects_bad_substitutes(mnist, trained_cnn, substitute, message):
    with pytest.raises(InputError, match=message):
        get_method("lra_npp")(trained_cnn, {}, device="cpu").unlearn(class_request(mnist, substitute))


def test_rejects_class_outside_label_set_and_bad_config(mnist, trained_cnn):
    with pytest.raises(InputError, match="forget_class"):
        get_method("lra_npp")(trained_cnn, {}, device="cpu").unlearn(class_request(mnist, forget_class=10))
    with pytest.raises(InputError, match="lra_npp.perturb_top_n"):
        get_method("lra_npp")(trained_cnn, {"perturb_top_n": "many"})
    with pytest.raises(InputError, match="method"):
        get_method("nope")
