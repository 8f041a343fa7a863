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

from contextlib import nullcontext
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
from .tuning import single_thread


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
    reads_forget_set = False  # zero-shot: substitutes and the parent only
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
        analysis, check = self._image_sets(request.substitute)
        with torch.no_grad():  # one forward pass for both sets: the head's inputs
            features = model.features(torch.cat([analysis, check]).to(self.device))
        analysis_features, check_features = features[:len(analysis)], features[len(analysis):]
        # the rest is small tensor ops (a 64 x 512 product per try): on a shared CPU, waking the thread pool
        # for each costs ~100x the op itself (0.1-0.2 s vs 1 ms for the whole path search)
        with single_thread() if self.device.type == "cpu" else nullcontext():
            with torch.no_grad():
                predicted = model.head(analysis_features).argmax(1)
            target = predicted if p.start_from == "predicted" else torch.full_like(predicted, c)
            relevance = head_relevance(model.head, analysis_features, target, p.epsilon)
            ranked, counts = neuronal_path(relevance, p.analyze_top_n, model.head.in_features)
            # scope auto: the paper's class_row; all_classes only if class_row cannot pass the check
            scopes = ("class_row", "all_classes") if p.scope == "auto" else (p.scope,)
            evaluated: dict[str, list[int]] = {}
            for scope in scopes:
                path, recognised, evaluated[scope] = self._adaptive_path(model, c, ranked, check, check_features,
                                                                         request.seed, scope, p.recognised_max)
                if recognised <= p.recognised_max:
                    break
                if p.scope == "auto" and scope == "class_row":  # recognition is not monotone in the size:
                    looser = self._adaptive_path(model, c, ranked, check, check_features,  # search again
                                                 request.seed, scope, p.escalate_above)
                    evaluated[scope] += [size for size in looser[2] if size not in evaluated[scope]]
                    if looser[1] <= p.escalate_above:
                        path, recognised = looser[:2]
                        break
            self._perturb(model, c, path, request.seed, scope)
        return model, {
            "forget_class": c,
            "n_analysis": len(analysis),
            "n_check": len(check),
            "path_size": len(path),
            "path_cap": self._path_cap(model, len(ranked)),
            "scope_used": scope,
            "scopes_tried": list(evaluated),
            "path_sizes_tried": evaluated[scope],
            "path": path,
            "path_frequency": counts[path].tolist(),
            "substitute_predicted_as_class": float((predicted == c).float().mean()),
            "substitute_recognised_after": recognised,
        }

    def _image_sets(self, substitute: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The analysed substitutes and the recognition check set: up to ``n_check`` substitutes
        after the analysed ones (held out from the analysis); the analysed ones if there are no others.
        Both are bounded, so the cost does not depend on how many substitutes a request brings."""
        p = self.params
        analysis = substitute[:p.n_analysis]
        rest = substitute[p.n_analysis:p.n_analysis + p.n_check]
        return analysis, rest if len(rest) else analysis[:p.n_check]

    def _path_cap(self, model: nn.Module, n_ranked: int) -> int:
        p = self.params
        cap = min(p.max_perturb_top_n, int(p.max_path_share * model.head.in_features), n_ranked)
        return max(cap, min(p.perturb_top_n, n_ranked))

    def _adaptive_path(self, model: nn.Module, c: int, ranked: list[int], check: torch.Tensor,
                       check_features: torch.Tensor, seed: int, scope: str,
                       bound: float) -> tuple[list[int], float, list[int]]:
        """The smallest prefix of ``ranked`` (at least ``perturb_top_n``, at most the cap, to
        ``path_step`` neurons) whose perturbation leaves at most ``bound`` of the check
        images recognised as c (probability of c >= ``recognised_prob``): double the size from ``perturb_top_n`` until it passes, then bisect
        between the last failing and the first passing size. Each try perturbs, scores the check set
        and restores only the weights it touched; with the head-only scopes the check set's head
        inputs are computed once and a try is one small matrix product.
        Returns the path, the share of check images still recognised, and the sizes tried."""
        p = self.params
        cap = self._path_cap(model, len(ranked))
        tried: dict[int, float] = {}

        def recognised(size: int) -> float:
            if size not in tried:
                tried[size] = self._recognised(model, c, ranked[:size], check, check_features, seed, scope)
            return tried[size]

        failing, size = None, min(p.perturb_top_n, cap)
        while recognised(size) > bound and size < cap:
            failing, size = size, min(2 * size, cap)
        if recognised(size) <= bound and failing is not None:
            passing = size
            while passing - failing > p.path_step:
                mid = (failing + passing) // 2
                if recognised(mid) <= bound:
                    passing = mid
                else:
                    failing = mid
            size = passing
        return ranked[:size], recognised(size), list(tried)

    @torch.no_grad()
    def _recognised(self, model: nn.Module, c: int, path: list[int], check: torch.Tensor,
                    check_features: torch.Tensor, seed: int, scope: str) -> float:
        """Share of the check images the model, with ``path`` perturbed, still gives class c a
        probability of at least ``recognised_prob``; the model is restored."""
        idx = torch.tensor(path, dtype=torch.long, device=model.head.weight.device)
        head_w = model.head.weight
        saved = [(head_w, (slice(None), idx), head_w[:, idx].clone())]
        prev = previous_linear(model) if scope == "with_incoming" else None
        if prev is not None:
            saved.append((prev.weight, (idx,), prev.weight[idx].clone()))
            if prev.bias is not None:
                saved.append((prev.bias, (idx,), prev.bias[idx].clone()))
        self._perturb(model, c, path, seed, scope)
        logits = model(check.to(self.device)) if prev is not None else model.head(check_features)
        share = float((logits.softmax(1)[:, c] >= self.params.recognised_prob).float().mean())
        for tensor, where, values in saved:
            tensor[where] = values
        return share

    @torch.no_grad()
    def _perturb(self, model: nn.Module, c: int, path: list[int], seed: int, scope: str) -> None:
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
        rows = None if scope in ("all_classes", "with_incoming") else torch.tensor([c], device=head_w.device)
        apply(head_w, rows, idx_dev)
        if scope == "with_incoming":
            prev = previous_linear(model)
            apply(prev.weight.T, None, idx_dev)  # the path neurons' incoming rows (a view)
            if prev.bias is not None and p.perturbation == "zero":
                prev.bias[idx_dev] = 0.0
