"""GAN unlearning metrics (docs/methods.md, GAN metrics) and the gate report.

- Feature-FID: Frechet distance between Gaussians fitted to the reference
  classifier's penultimate features (``model.features``) of real and generated
  images. Inception weights are not available offline; the reference is the
  project's own MNIST classifier, so values are NOT comparable to published
  FIDs, only to each other. Real images = the request's retain set D_r, so
  an unlearned GAN is scored against the data it should now model (the
  original GAN of a class request is scored against D_r too: its class-c
  samples count against it exactly as they would against a retrained GAN).
- Forgotten-class generation rate: share of generated samples (balanced
  labels for a conditional GAN) the reference classifier assigns to c.
- Membership attack AUC: the discriminator's score as the attack statistic,
  members = D_f, non-members = held-out real images (``roc_auc_score``);
  0.5 = no signal, 1.0 = D separates the forget images perfectly.
- Downstream accuracy: a small MLP trained only on generated samples
  (conditioning labels; reference-classifier pseudo-labels when
  unconditional), tested on real test images.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from scipy import linalg
from sklearn.metrics import roc_auc_score

from .data import Split
from .errors import InputError
from .gan import GAN, sample
from .gates import GateCheck, GateOutcome
from .training import extract_features, predict_logits, train_classifier

GATE_DEFAULTS = {"n_samples": 2000, "max_fid_ratio": 1.10, "max_class_rate": 0.01,
                 "max_membership_auc": 0.55, "downstream": False, "downstream_samples": 5000,
                 "downstream_epochs": 3, "seed": 0}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature matrices [N, d].

    ReLU features have dead units, so both covariances get ``1e-6 * I``
    (pytorch-fid's fix for a singular product) to keep ``sqrtm`` stable.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def features(reference: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Penultimate features of the reference classifier as float64 [N, d]."""
    return extract_features(reference, x).double().numpy()


def feature_fid(reference: nn.Module, real: torch.Tensor | np.ndarray, fake_x: torch.Tensor) -> float:
    """``real`` is images or their precomputed :func:`features` (reused across models)."""
    real_f = real if isinstance(real, np.ndarray) else features(reference, real)
    return frechet_distance(real_f, features(reference, fake_x))


def class_rate(reference: nn.Module, fake_x: torch.Tensor, c: int) -> float:
    return float((predict_logits(reference, fake_x).argmax(1) == c).float().mean())


def membership_auc(gan: GAN, members: Split, non_members: Split) -> float:
    """AUC of the discriminator score separating members (1) from non-members (0)."""
    if len(members) == 0 or len(non_members) == 0:
        raise InputError("membership", "needs at least one member and one non-member image")
    scores = torch.cat([gan.score(members.x, members.y), gan.score(non_members.x, non_members.y)]).numpy()
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    return float(roc_auc_score(labels, scores))


def downstream_accuracy(gan: GAN, test: Split, reference: nn.Module | None = None, n: int = 5000,
                        epochs: int = 3, seed: int = 0, exclude_class: int | None = None) -> float:
    """Accuracy on real ``test`` of an MLP trained on ``n`` generated samples only.

    ``exclude_class`` drops that class from the test images (after class
    unlearning the GAN is not supposed to teach it).
    """
    x, y = sample(gan, n, seed=seed + 7919)
    if y is None:
        if reference is None:
            raise InputError("reference", "downstream accuracy of an unconditional GAN needs the reference "
                                          "classifier to label generated samples")
        y = predict_logits(reference, x).argmax(1)
    num_classes = gan.num_classes or int(test.y.max()) + 1
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, num_classes))
    train_classifier(mlp, x, y, epochs=epochs, lr=1e-3, batch_size=64, seed=seed)
    if exclude_class is not None:
        test = test.subset(np.flatnonzero((test.y != exclude_class).numpy()))
    with torch.no_grad():
        return float((mlp(test.x).argmax(1) == test.y).float().mean())


def gan_report(gan: GAN, request, reference: nn.Module, holdout: Split | None = None,
               settings: dict | None = None, real_features: np.ndarray | None = None) -> dict:
    """The metrics of one GAN for one request: fid, class_rate, membership_auc, downstream_acc.

    ``real_features``: precomputed :func:`features` of ``request.retain.x``.
    """
    s = {**GATE_DEFAULTS, **(settings or {})}
    fake, _ = sample(gan, s["n_samples"], seed=s["seed"])
    real = real_features if real_features is not None else request.retain.x
    out = {"fid": feature_fid(reference, real, fake), "class_rate": None,
           "membership_auc": None, "downstream_acc": None}
    if request.kind == "class":
        out["class_rate"] = class_rate(reference, fake, request.forget_class)
    if holdout is not None:
        out["membership_auc"] = membership_auc(gan, request.forget, holdout)
        if s["downstream"]:
            out["downstream_acc"] = downstream_accuracy(
                gan, holdout, reference, s["downstream_samples"], s["downstream_epochs"], s["seed"],
                exclude_class=request.forget_class if request.kind == "class" else None)
    return out


def gan_gate_report(before: GAN, after: GAN, request, reference_classifier: nn.Module,
                    holdout: Split | None = None, gates: dict | None = None) -> tuple[dict, GateOutcome]:
    """Metrics of the GAN before and after unlearning, and the gate verdict.

    ``gates`` is the ``gan_gates`` section of params.yaml. Keys returned:
    ``fid_before``/``fid_after``/``fid_ratio`` (lower is better; gate
    ``fid_ratio <= max_fid_ratio``); for class requests
    ``class_rate_before``/``class_rate_after`` (lower is better; gate
    ``class_rate_after <= max_class_rate``); when ``holdout`` is given
    ``membership_auc_before``/``_after`` (0.5 is ideal; gate for sample requests
    ``membership_auc_after <= max_membership_auc``) and, with
    ``downstream: true``, ``downstream_acc_before``/``_after`` (higher is
    better; reported, not gated). Returns the report and the gates' outcome.
    """
    unknown = set(gates or {}) - set(GATE_DEFAULTS)
    if unknown:
        raise InputError(f"gan_gates.{sorted(unknown)[0]}", f"unknown setting; known: {', '.join(GATE_DEFAULTS)}")
    s = {**GATE_DEFAULTS, **(gates or {})}
    if request.kind == "samples" and holdout is None:
        raise InputError("holdout", "the membership gate of an item request needs held-out real images")
    real = features(reference_classifier, request.retain.x)
    b = gan_report(before, request, reference_classifier, holdout, s, real)
    a = gan_report(after, request, reference_classifier, holdout, s, real)
    report = {f"{k}_{when}": v for when, r in (("before", b), ("after", a)) for k, v in r.items()
              if v is not None}
    report["fid_ratio"] = a["fid"] / b["fid"] if b["fid"] > 0 else float("inf")
    checks = [GateCheck("fid_ratio", report["fid_ratio"], s["max_fid_ratio"],
                        report["fid_ratio"] <= s["max_fid_ratio"])]
    if request.kind == "class":
        checks.append(GateCheck("class_rate", a["class_rate"], s["max_class_rate"],
                                a["class_rate"] <= s["max_class_rate"]))
    if request.kind == "samples":
        checks.append(GateCheck("membership_auc", a["membership_auc"], s["max_membership_auc"],
                                a["membership_auc"] <= s["max_membership_auc"]))
    return report, GateOutcome.of(checks)
