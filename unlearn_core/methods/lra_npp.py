"""LRA-NPP: zero-shot class unlearning (Chang et al., arXiv 2410.23693).

Layer-wise relevance analysis finds the neurons feeding the final linear layer
that carry class c for images of c the model never trained on (substitutes);
neuronal path perturbation then cuts those neurons' weights into class c.
No training data is read and nothing is fine-tuned.

LRP (epsilon rule) runs through captum on the classifier head with cached
penultimate features as input; captum has no rules for Flatten/LayerNorm/GELU,
and the relevance the method needs is exactly the head's input relevance.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
from captum.attr import LRP
from captum.attr._utils.lrp_rules import EpsilonRule

from ..config import LraNppParams
from ..data import hash_images
from ..errors import InputError
from .base import ForgetRequest, UnlearnMethod


def substitute_overlap(substitute: torch.Tensor, train_ids) -> list[int]:
    """Positions of substitute images whose content hash is a training sample id."""
    as_uint8 = (substitute.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    train = set(train_ids)
    return [i for i, h in enumerate(hash_images(as_uint8)) if h in train]


def head_relevance(head: nn.Linear, features: torch.Tensor, target: torch.Tensor,
                   epsilon: float) -> torch.Tensor:
    """LRP-epsilon relevance of each head input neuron for the target logit, per image."""
    probe = nn.Sequential(nn.Linear(head.in_features, head.out_features, bias=head.bias is not None))
    probe = probe.to(features.device)
    probe[0].load_state_dict(head.state_dict())
    probe[0].rule = EpsilonRule(epsilon=epsilon)
    return LRP(probe).attribute(features.clone().requires_grad_(True), target=target).detach()


def neuronal_path(relevance: torch.Tensor, analyze_top_n: int, perturb_top_n: int) -> tuple[list[int], np.ndarray]:
    """Neurons most often among each image's top-``analyze_top_n`` by relevance.

    Returns the path (``perturb_top_n`` neurons, most frequent first, ties by
    total relevance, then index) and the per-neuron frequency counts. The
    relevance tie-break orders the neurons an adaptive path grows into beyond
    the analysed top (all with frequency 0).
    """
    n_neurons = relevance.shape[1]
    top = relevance.topk(min(analyze_top_n, n_neurons), dim=1).indices
    counts = np.bincount(top.flatten().cpu().numpy(), minlength=n_neurons)
    total = relevance.sum(0).cpu().numpy()
    order = np.lexsort((np.arange(n_neurons), -total, -counts))
    return order[:min(perturb_top_n, n_neurons)].tolist(), counts


def previous_linear(model: nn.Module) -> nn.Linear | None:
    """The last nn.Linear before the head (the layer whose outputs feed it)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not model.head]
    if linears and linears[-1].out_features == model.head.in_features:
        return linears[-1]
    return None


class LraNpp(UnlearnMethod):
    name = "lra_npp"
    kinds = ("class",)
    needs_substitute = True
    Params = LraNppParams
    perturbations: ClassVar[tuple[str, ...]] = ("zero", "gaussian", "laplace")

    def check(self, request: ForgetRequest) -> None:
        super().check(request)
        sub = request.substitute
        if sub is None or len(sub) == 0:
            raise InputError("substitute", "LRA-NPP needs substitute images of the class; none given")
        expected = tuple(request.train.x.shape[1:])
        if sub.ndim != 4 or tuple(sub.shape[1:]) != expected:
            raise InputError("substitute", f"images have shape {tuple(sub.shape[1:])}, the model takes {expected}")
        if not torch.isfinite(sub).all() or sub.min() < 0 or sub.max() > 1:
            raise InputError("substitute", "pixel values must be finite and in [0, 1]")
        overlap = substitute_overlap(sub, request.train.ids)
        if overlap:
            raise InputError("substitute", f"{len(overlap)} substitute image(s) are in the training set "
                                           f"(positions {overlap[:5]}); zero-shot unlearning must not use training data")
        if self.params.scope == "with_incoming" and previous_linear(self.model) is None:
            raise InputError("lra_npp.scope", "'with_incoming' needs a linear layer feeding the head; "
                                              "this architecture has none")

    def _run(self, model: nn.Module, request: ForgetRequest) -> tuple[nn.Module, dict]:
        p = self.params
        c = request.forget_class
        images = request.substitute[:p.n_analysis].to(self.device)
        with torch.no_grad():
            features = model.features(images)
            predicted = model.head(features).argmax(1)
        target = predicted if p.start_from == "predicted" else torch.full_like(predicted, c)
        relevance = head_relevance(model.head, features, target, p.epsilon)
        ranked, counts = neuronal_path(relevance, p.analyze_top_n, model.head.in_features)
        path, recognised = self._adaptive_path(model, c, ranked, request)
        return model, {
            "forget_class": c,
            "n_analysis": len(images),
            "path_size": len(path),
            "path": path,
            "path_frequency": counts[path].tolist(),
            "substitute_predicted_as_class": float((predicted == c).float().mean()),
            "substitute_recognised_after": recognised,
        }

    def _adaptive_path(self, model: nn.Module, c: int, ranked: list[int],
                       request: ForgetRequest) -> tuple[list[int], float]:
        """Perturb the top ``perturb_top_n`` of ``ranked``; while more than
        ``recognised_max`` of the substitute images are still predicted as c, restore
        and retry with ``path_step`` more neurons, up to ``max_perturb_top_n``.
        Returns the path used and the share of substitutes still predicted as c."""
        p = self.params
        limit = min(max(p.max_perturb_top_n, p.perturb_top_n), len(ranked))
        size = min(p.perturb_top_n, limit)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        substitute = request.substitute.to(self.device)
        while True:
            path = ranked[:size]
            self._perturb(model, c, path, request.seed)
            with torch.no_grad():
                recognised = float((model(substitute).argmax(1) == c).float().mean())
            if recognised <= p.recognised_max or size >= limit:
                return path, recognised
            model.load_state_dict(saved)
            size = min(size + p.path_step, limit)

    @torch.no_grad()
    def _perturb(self, model: nn.Module, c: int, path: list[int], seed: int) -> None:
        p = self.params
        gen = torch.Generator().manual_seed(seed)
        idx = torch.tensor(path, dtype=torch.long)

        def apply(weight: torch.Tensor, rows, cols) -> None:
            block = weight[rows][:, cols] if rows is not None else weight[:, cols]
            if p.perturbation == "zero":
                new = torch.zeros_like(block)
            elif p.perturbation == "gaussian":
                new = block + torch.randn(block.shape, generator=gen).to(block)
            else:
                new = block + torch.distributions.Laplace(0.0, 1.0).sample(block.shape).to(block)
            if rows is not None:
                weight[rows[:, None], cols[None, :]] = new
            else:
                weight[:, cols] = new

        head_w = model.head.weight
        idx_dev = idx.to(head_w.device)
        rows = None if p.scope in ("all_classes", "with_incoming") else torch.tensor([c], device=head_w.device)
        apply(head_w, rows, idx_dev)
        if p.scope == "with_incoming":
            prev = previous_linear(model)
            apply(prev.weight.T, None, idx_dev)  # the path neurons' incoming rows (a view)
            if prev.bias is not None and p.perturbation == "zero":
                prev.bias[idx_dev] = 0.0
