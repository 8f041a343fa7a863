"""Cascaded GAN unlearning (Sun, Zhu, Chang, Zhou; arXiv 2308.09881): item and class.

The paper body was not available; this module is our reference
interpretation of its abstract (docs/methods.md, cascade_gan). Every design
decision is listed here and in docs/gan_unlearning.md.

1. Substitution. Every forget image gets a stand-in that keeps the latent
   space continuous:
   - item: the nearest retained image (same label for a conditional GAN) in
     pixel space (default) or the reference classifier's penultimate feature
     space (``substitute_space: reference``); pixel space is the default
     because one reference pass over D_r costs more than the whole unlearning.
     User-supplied substitute images (``request.substitute``) replace these;
     they must not share content with the forget set (sha256 check).
   - class: retained images of other classes. For a conditional GAN they are
     presented under the forgotten label c, which is how the class-c
     conditioning is steered to them.
2. Fake label. The discriminator is taught to score substitutes plus a batch
   of retained images 1 (real) and forget images lower: with
   ``forget_target: fake`` 0, as the abstract says; with ``holdout`` (default)
   its current scores on a batch of held-out real images, matched by rank, so
   the forget scores take the held-out score distribution and forgotten images
   end up scored like images D never saw, which is what retraining produces.
   A hard 0 over-forgets: D then scores them far below unseen images
   (membership AUC 0.05 where retraining gives 0.48), which reveals exactly
   what was forgotten.
3. Cascade. Each round is one D-unlearning step (2.) followed by one
   G-learning step against the updated D. G's loss on "forget latents" is the
   non-saturating adversarial loss plus a substitution pull; on all other
   latents a latent anchor keeps G(z) close to the original G0(z) (MSE):
   - conditional class: forget latents = (z, c); pull G(z, c) towards
     G0(z, d) for the donor class d (the class the reference classifier finds
     closest to c on G0's class-c samples, else c+1), so the same z keeps the
     same style. Anchor latents = (z, y != c).
   - unconditional class: a pool of latents is judged once by the reference
     classifier; latents whose G0 sample is class c are forget latents and are
     pulled to G0 of their nearest non-c latent; the rest are anchored.
   - item: the pool latent whose G0 sample is nearest to each forget image is
     its forget latent (adversarial loss only, no pull: we do not teach G a
     retained image); all other latents are anchored.
   G runs in eval mode (BatchNorm statistics frozen), so the anchor compares
   like with like and retained generation is not disturbed by the batches.
4. Stopping rule. After ``min_rounds_*``, stop as soon as D's mean score on
   the forget images is at or below its mean score on held-out real images
   (+ ``stop_margin_class`` / ``stop_margin_item``); otherwise stop after
   ``rounds`` (K). With
   ``stop_statistic: auc`` the rule compares whole score distributions
   instead: stop when the rank AUC of forget vs held-out scores is <= 0.5 +
   margin (stricter: equal means can hide a separable ordering). For class
   unlearning the held-out images are those of the retained classes (class-c
   images are what D now rejects).

The caller passes ``holdout`` (real images not in D, e.g. the test split;
needed by the stopping rule) and ``reference`` (the project's reference
classifier; needed for unconditional class unlearning and for
``substitute_space: reference``, optional otherwise).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..data import Split, hash_images
from ..errors import InputError
from ..gan import GAN, check_images
from ..training import extract_features, predict_logits
from .base import ForgetRequest, MethodParams, UnlearnMethod


class CascadeGanParams(MethodParams):
    rounds: int = Field(60, ge=1)
    min_rounds_class: int = Field(15, ge=1)
    min_rounds_item: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_d: float = Field(1e-3, gt=0)
    lr_g: float = Field(2e-3, gt=0)
    lr_g_conditioning: float = Field(5e-2, gt=0)
    g_scope: Literal["conditioning", "all"] = "conditioning"
    anchor_weight: float = Field(100.0, ge=0)
    substitute_weight: float = Field(10.0, ge=0)
    adversarial_weight: float = Field(0.1, ge=0)
    substitute_space: Literal["pixel", "reference"] = "pixel"
    latent_pool: int = Field(1024, ge=16)
    donor_samples: int = Field(64, ge=1)
    holdout_size: int = Field(256, ge=8)
    stop_statistic: Literal["mean", "auc"] = "mean"
    stop_margin_class: float = 0.02
    stop_margin_item: float = 0.005
    forget_target: Literal["fake", "holdout"] = "holdout"
    seed: int = 0


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def _nearest(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index of each query's nearest candidate (squared L2 on flattened vectors)."""
    return torch.cdist(queries.flatten(1), candidates.flatten(1)).argmin(1)


class CascadeGan(UnlearnMethod):
    name = "cascade_gan"
    Params = CascadeGanParams

    def __init__(self, model: GAN, config=None, device=None, reference: nn.Module | None = None,
                 holdout: Split | None = None):
        super().__init__(model, config, device)
        self.reference = reference
        self.holdout = holdout

    # ------------------------------------------------------------ checks

    def check(self, request: ForgetRequest) -> None:
        gan = self.model
        if not isinstance(gan, GAN):
            raise InputError("model", f"cascade_gan unlearns a GAN, got {type(gan).__name__}")
        if len(request.forget_mask) != len(request.train):
            raise InputError("forget_mask", f"{len(request.forget_mask)} forget flags for a training set of "
                                            f"{len(request.train)} images")
        check_images(request.train.x, "forget")
        if gan.conditional and request.num_classes != gan.num_classes:
            raise InputError("num_classes", f"request has {request.num_classes} classes, the GAN "
                                            f"{gan.num_classes}")
        if request.kind == "class" and gan.conditional and request.forget_class is not None \
                and not 0 <= request.forget_class < gan.num_classes:
            raise InputError("forget_class", f"{request.forget_class} is not a class of this conditional GAN "
                                             f"(0..{gan.num_classes - 1})")
        super().check(request)
        if request.kind == "class" and not gan.conditional and self.reference is None:
            raise InputError("reference", "class unlearning on an unconditional GAN needs the reference "
                                          "classifier to judge which latents generate the class")
        if self.params.substitute_space == "reference" and self.reference is None:
            raise InputError("reference", "substitute_space 'reference' needs the reference classifier")
        if self.holdout is None or len(self.holdout) == 0:
            raise InputError("holdout", "the stopping rule needs held-out real images (not in the training set)")
        check_images(self.holdout.x, "holdout")
        if set(self.holdout.ids) & set(request.train.ids):
            raise InputError("holdout", "held-out images overlap the training set")
        if request.substitute is not None:
            check_images(request.substitute, "substitute")
            forget_ids = set(request.train.ids[request.forget_mask])
            if any(h in forget_ids for h in hash_images(_as_uint8(request.substitute))):
                raise InputError("substitute", "substitute images overlap the forget set")

    # ------------------------------------------------------------ the method

    def _run(self, gan: GAN, request: ForgetRequest) -> tuple[GAN, dict]:
        p = self.params
        dev = self.device
        gen = torch.Generator().manual_seed(p.seed + request.seed)
        forget, retain = request.forget, request.retain
        cond = gan.conditional
        c = request.forget_class if request.kind == "class" else None

        G0 = GAN(**gan.arch).to(dev).generator
        G0.load_state_dict(gan.generator.state_dict())
        G0.eval().requires_grad_(False)
        G, D = gan.generator.eval(), gan.discriminator.train()
        conditioning_only = c is not None and cond and p.g_scope == "conditioning"
        if conditioning_only:  # only the first layer's weights; all but the class-c column masked below
            G.requires_grad_(False)
            g_params = [G.fc[0].weight.requires_grad_(True)]
            keep = torch.zeros_like(G.fc[0].weight)
            keep[:, G.z_dim + c] = 1
            hook = G.fc[0].weight.register_hook(lambda grad: grad * keep)
        else:
            g_params = list(G.parameters())
        opt_g = torch.optim.Adam(g_params, lr=p.lr_g_conditioning if conditioning_only else p.lr_g,
                                 betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=p.lr_d, betas=(0.5, 0.999))

        xf, yf = forget.x.to(dev), forget.y.to(dev)
        xs, ys = self._substitutes(request, forget, retain, gen)
        xs, ys = xs.to(dev), ys.to(dev)
        hold = self.holdout
        if c is not None:
            hold = hold.subset(np.flatnonzero((hold.y != c).numpy()))
        hold = hold.subset(torch.randperm(len(hold), generator=gen)[:p.holdout_size].numpy())
        xh, yh = hold.x.to(dev), hold.y.to(dev)
        latents = self._latent_plan(gan, G0, request, forget, gen)

        def lab(y):
            return y if cond else None

        def d_score(x, y) -> float:
            with torch.no_grad():
                return float(torch.sigmoid(D(x, lab(y))).mean())

        def forget_target(logit_f: torch.Tensor) -> torch.Tensor:
            """D's BCE target per forget image: 0 ("fake"), or ("holdout") D's current scores on an equally
            large batch of held-out real images, matched by rank (the forget image D scores k-th highest gets
            the k-th highest held-out score): forget scores are pulled to the held-out score distribution,
            so forgotten images end up scored like images D never saw, neither above nor below them."""
            if p.forget_target == "fake":
                return torch.zeros_like(logit_f)
            hi = torch.randint(len(xh), (len(logit_f),), generator=gen).to(dev)
            with torch.no_grad():
                held_out = torch.sigmoid(D(xh[hi], lab(yh[hi])))
            target = torch.empty_like(logit_f)
            target[logit_f.detach().argsort()] = held_out.sort().values
            return target

        margin = p.stop_margin_class if c is not None else p.stop_margin_item

        def reached() -> bool:
            """Stop rule: D's forget scores have come down to its held-out scores."""
            with torch.no_grad():
                sf, sh = D(xf, lab(yf)), D(xh, lab(yh))
            if p.stop_statistic == "mean":
                return float(torch.sigmoid(sf).mean()) <= float(torch.sigmoid(sh).mean()) + margin
            above = (sf[:, None] > sh[None, :]).float() + 0.5 * (sf[:, None] == sh[None, :]).float()
            return float(above.mean()) <= 0.5 + margin  # rank AUC, forget vs held-out

        rounds_run, stopped = 0, "max_rounds"
        score_before = (d_score(xf, yf), d_score(xh, yh))
        for r in range(p.rounds):
            # D-unlearning step: forget -> held-out scores (or 0), substitutes + retained -> 1.
            fi = torch.randint(len(xf), (p.batch_size,), generator=gen).to(dev)
            si = torch.randint(len(xs), (p.batch_size,), generator=gen).to(dev)
            ri = torch.randint(len(retain), (p.batch_size,), generator=gen)
            xr, yr = retain.x[ri].to(dev), retain.y[ri].to(dev)
            logit_f, logit_s, logit_r = D(xf[fi], lab(yf[fi])), D(xs[si], lab(ys[si])), D(xr, lab(yr))
            loss_d = (F.binary_cross_entropy_with_logits(logit_f, forget_target(logit_f))
                      + F.binary_cross_entropy_with_logits(logit_s, torch.ones_like(logit_s))
                      + F.binary_cross_entropy_with_logits(logit_r, torch.ones_like(logit_r)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # G-learning step against the updated D, with the latent anchor.
            D.requires_grad_(False)  # G's step needs gradients through D, not for it
            loss_g = self._g_loss(G, G0, D, latents, gen, lab, anchored=not conditioning_only)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            rounds_run = r + 1
            if rounds_run >= (p.min_rounds_class if c is not None else p.min_rounds_item) and reached():
                stopped = "forget_score_reached_holdout"
                break
        if conditioning_only:
            hook.remove()
            G.requires_grad_(True)
        details = {"kind": request.kind, "n_forget": len(forget), "rounds": rounds_run, "stopped": stopped,
                   "d_forget_before": score_before[0], "d_holdout_before": score_before[1],
                   "d_forget_after": d_score(xf, yf), "d_holdout_after": d_score(xh, yh),
                   "donor_class": latents.get("donor")}
        return gan.eval(), details

    # ------------------------------------------------------------ pieces

    def _substitutes(self, request: ForgetRequest, forget: Split, retain: Split,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Substitute images and the labels they are shown to D with (see module doc, 1.)."""
        n = len(forget)
        if request.substitute is not None:
            reps = -(-n // len(request.substitute))
            return request.substitute.repeat(reps, 1, 1, 1)[:n].float(), forget.y
        if request.kind == "class":
            others = torch.randperm(len(retain), generator=gen)[:n]
            return retain.x[others], forget.y  # shown under label c (conditional GAN)
        space_q, space_c = forget.x, retain.x
        if self.params.substitute_space == "reference":
            space_q, space_c = extract_features(self.reference, forget.x), extract_features(self.reference, retain.x)
        out = torch.empty_like(forget.x)
        if self.model.conditional:
            for label in forget.y.unique():
                q, pool = (forget.y == label).nonzero().squeeze(1), (retain.y == label).nonzero().squeeze(1)
                out[q] = retain.x[pool[_nearest(space_q[q], space_c[pool])]]
        else:
            out = retain.x[_nearest(space_q, space_c)]
        return out, forget.y

    def _latent_plan(self, gan: GAN, G0: nn.Module, request: ForgetRequest, forget: Split,
                     gen: torch.Generator) -> dict:
        """Which latents are forget latents, and what their substitution target is."""
        p, dev = self.params, self.device
        if request.kind == "class" and gan.conditional:
            c = request.forget_class
            donor = (c + 1) % gan.num_classes
            if self.reference is not None:
                with torch.no_grad():
                    z = torch.randn(p.donor_samples, gan.z_dim, generator=gen).to(dev)
                    probs = F.softmax(predict_logits(self.reference, G0(z, torch.full((len(z),), c, device=dev))), 1)
                probs = probs.mean(0)
                probs[c] = -1
                donor = int(probs.argmax())
            return {"mode": "conditional_class", "c": c, "donor": donor}
        z = torch.randn(p.latent_pool, gan.z_dim, generator=gen).to(dev)
        y = torch.randint(gan.num_classes, (p.latent_pool,), generator=gen).to(dev) if gan.conditional else None
        with torch.no_grad():
            x0 = G0(z, y)
        if request.kind == "class":
            is_c = predict_logits(self.reference, x0).argmax(1) == request.forget_class
            fz, keep = z[is_c.to(dev)], z[~is_c.to(dev)]
            target = x0[~is_c.to(dev)][_nearest(fz, keep)] if len(fz) and len(keep) else fz.new_empty(0, 1, 28, 28)
            return {"mode": "pool", "fz": fz, "fy": None, "target": target, "az": keep, "ay": None}
        if gan.conditional:  # nearest same-label pool sample per forget image
            idx = torch.stack([
                (y == lab).nonzero().squeeze(1)[_nearest(img[None].to(dev), x0[y == lab]).item()]
                for img, lab in zip(forget.x, forget.y.to(dev))])
        else:
            idx = _nearest(forget.x.to(dev), x0)
        is_f = torch.zeros(len(z), dtype=torch.bool, device=dev)
        is_f[idx] = True
        return {"mode": "pool", "fz": z[is_f], "fy": y[is_f] if y is not None else None, "target": None,
                "az": z[~is_f], "ay": y[~is_f] if y is not None else None}

    def _g_loss(self, G, G0, D, plan: dict, gen: torch.Generator, lab, anchored: bool) -> torch.Tensor:
        """Adversarial + substitution loss on forget latents, anchor MSE on the others.

        ``anchored=False`` (conditioning-only updates) skips the anchor: the
        retained classes' generation cannot change, so it would be exactly 0.
        """
        p, dev = self.params, self.device
        bs = p.batch_size
        loss = torch.zeros((), device=dev)
        if plan["mode"] == "conditional_class":
            zf = torch.randn(bs, G.z_dim, generator=gen).to(dev)
            yf = torch.full((bs,), plan["c"], device=dev)
            with torch.no_grad():
                target = G0(zf, torch.full_like(yf, plan["donor"]))
            xf_g = G(zf, yf)
            if anchored:
                za = torch.randn(bs, G.z_dim, generator=gen).to(dev)
                ya = torch.randint(G.num_classes - 1, (bs,), generator=gen).to(dev)
                ya = ya + (ya >= plan["c"]).long()  # any class but c
                with torch.no_grad():
                    anchor_t = G0(za, ya)
                loss = loss + p.anchor_weight * F.mse_loss(G(za, ya), anchor_t)
        else:
            ai = torch.randint(len(plan["az"]), (bs,), generator=gen).to(dev)
            za, ya = plan["az"][ai], plan["ay"][ai] if plan["ay"] is not None else None
            with torch.no_grad():
                anchor_t = G0(za, ya)
            loss = loss + p.anchor_weight * F.mse_loss(G(za, ya), anchor_t)
            if not len(plan["fz"]):
                return loss
            fi = torch.randint(len(plan["fz"]), (bs,), generator=gen).to(dev)
            zf, yf = plan["fz"][fi], plan["fy"][fi] if plan["fy"] is not None else None
            target = plan["target"][fi] if plan["target"] is not None else None
            xf_g = G(zf, yf)
        logit = D(xf_g, lab(yf))
        loss = loss + p.adversarial_weight * F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        if target is not None:
            loss = loss + p.substitute_weight * F.mse_loss(xf_g, target)
        return loss
