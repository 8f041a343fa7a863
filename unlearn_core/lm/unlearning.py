"""What every language-model unlearning method shares: the request, the base class, the fine-tuning loop.

Same shape as the classifier methods (``unlearn_core.methods.base``): a class
constructed with the model and its params.yaml section; ``unlearn(request)``
returns a NEW model (the input is never modified) and an ``UnlearnResult``.

The loop takes a forget batch and a retain batch per step (``retain_per_forget``
retain rows per forget row), lets the method turn them into a loss, and steps
AdamW with warm-up + cosine decay. With ``lora: true`` only LoRA adapters on
the attention projections train (peft; ``fan_in_fan_out`` for GPT-2's Conv1D)
and are merged back, so the saved model is a plain GPT-2 again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..errors import InputError
from ..methods.base import MethodParams, UnlearnMethod, UnlearnResult, check_retained_only
from ..metrics import measure
from .corpus import QARow
from .model import Batch, LanguageModel, lr_lambda, make_batch, seed_everything, sequence_nll

LM_KINDS = ("samples", "subject")


@dataclass
class LMForgetRequest:
    """Rows to forget and the rows the model must keep (retained authors and the general sets)."""

    kind: str
    forget: list[QARow]
    retain: list[QARow]
    seed: int = 0
    retained_only: bool = False  # a re-derivation's request: the forget rows are erased (see ForgetRequest)

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject_id for r in self.forget if r.subject_id})


class LMLoopParams(MethodParams):
    """The fine-tuning loop's settings; each method's params.yaml section adds its own."""

    epochs: int = Field(5, ge=1)            # passes over the forget rows
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)       # forget rows per step
    retain_per_forget: float = Field(1.0, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    seed: int = 0


class LMUnlearnMethod(UnlearnMethod):
    """Base class: validates config and request, copies the model, measures cost."""

    kinds: ClassVar[tuple[str, ...]] = LM_KINDS
    Params: ClassVar[type[BaseModel]] = LMLoopParams
    needs_reference: ClassVar[bool] = False  # the loss compares with the model before unlearning

    def check(self, request: LMForgetRequest) -> None:
        if request.kind not in self.kinds:
            raise InputError("kind", f"method {self.name!r} handles {'/'.join(self.kinds)} requests, "
                                     f"not {request.kind!r}")
        check_retained_only(self, request.retained_only)
        if not request.retained_only and not request.forget:
            raise InputError("forget", "the forget set is empty")
        if not request.retain:
            raise InputError("forget", "the forget set is the whole corpus; retrain nothing")

    def unlearn(self, request: LMForgetRequest) -> tuple[LanguageModel, UnlearnResult]:
        self.check(request)
        lm = self.model.copy()
        lm.net.to(self.device).eval()
        with measure(self.device) as cost:
            lm, details = self._run(lm, request)
        result = UnlearnResult(self.name, self.params.model_dump(), cost.time_s, cost.peak_mem_bytes,
                               cost.mem_kind, details)
        lm.net.eval()
        return lm, result

    def _run(self, lm: LanguageModel, request: LMForgetRequest) -> tuple[LanguageModel, dict]:
        raise NotImplementedError


class LossMethod(LMUnlearnMethod):
    """A method defined by its loss on one forget batch and one retain batch (the OpenUnlearning shape)."""

    def forget_batch(self, lm: LanguageModel, rows: list[QARow]) -> Batch:
        """The forget rows as the loss sees them (poisoning methods rewrite the answers)."""
        return make_batch(lm, [r.question for r in rows], [r.answer for r in rows])

    def loss(self, net: torch.nn.Module, ref: torch.nn.Module | None, forget: Batch, retain: Batch | None,
             rows: list[QARow]) -> torch.Tensor:
        """The step's loss; ``ref`` is the frozen model before unlearning (methods with ``needs_reference``)."""
        raise NotImplementedError

    def trainable(self, net: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters the loop updates: every one that requires a gradient (LoRA: the adapters)."""
        return [x for x in net.parameters() if x.requires_grad]

    def prepare(self, lm: LanguageModel, request: LMForgetRequest) -> dict:
        """Work before the loop (e.g. attributions); returns details for the receipt."""
        return {}

    def _run(self, lm: LanguageModel, request: LMForgetRequest) -> tuple[LanguageModel, dict]:
        p = self.params
        self.lm = lm  # the tokenizer, for losses that build batches of their own
        details = self.prepare(lm, request)
        seed_everything(p.seed)
        ref = None
        if self.needs_reference:
            ref = lm.copy().net.to(self.device).eval()
            for param in ref.parameters():
                param.requires_grad_(False)
        net = with_lora(lm.net, p) if p.lora else lm.net
        net.train()
        trainable = self.trainable(net)
        chosen = {id(x) for x in trainable}
        for x in net.parameters():  # no gradients computed for what does not train
            x.requires_grad_(id(x) in chosen)
        steps_per_epoch = math.ceil(len(request.forget) / p.batch_size)
        total = p.epochs * steps_per_epoch
        opt = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, p.warmup_fraction))
        rng = np.random.default_rng(p.seed)
        n_retain = max(0, int(round(p.batch_size * p.retain_per_forget)))
        losses = []
        for _ in range(p.epochs):
            order = rng.permutation(len(request.forget))
            for i in range(0, len(order), p.batch_size):
                rows = [request.forget[j] for j in order[i:i + p.batch_size]]
                fb = self.forget_batch(lm, rows).to(self.device)
                rb = None
                if n_retain:
                    pick = rng.choice(len(request.retain), size=min(n_retain, len(request.retain)), replace=False)
                    rr = [request.retain[j] for j in pick]
                    rb = make_batch(lm, [r.question for r in rr], [r.answer for r in rr]).to(self.device)
                loss = self.loss(net, ref, fb, rb, rows)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
        net.eval()
        if p.lora:  # a plain GPT-2 again
            net = net.merge_and_unload()
        for param in net.parameters():  # peft or ``trainable`` froze weights the next method must be able to train
            param.requires_grad_(True)
        lm.net = net
        return lm, {**details, "steps": total, "final_loss": round(losses[-1], 5) if losses else None}


def with_lora(net: torch.nn.Module, p: LMLoopParams) -> torch.nn.Module:
    """LoRA on the attention projections: GPT-2's fused ``c_attn`` (a Conv1D), else (Llama) ``q_proj``/``v_proj``."""
    from peft import LoraConfig, get_peft_model

    gpt2 = net.config.model_type == "gpt2"
    config = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                        target_modules=["c_attn"] if gpt2 else ["q_proj", "v_proj"], fan_in_fan_out=gpt2,
                        bias="none")
    return get_peft_model(net, config)


def nll_sum(net: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed answer-token NLL per sequence [n]: -log pi(y|x)."""
    from .model import token_nll

    nll, _ = token_nll(net, batch)
    return nll.sum(1)


def retain_nll(net: torch.nn.Module, retain: Batch | None) -> torch.Tensor:
    """NLL_r: mean answer NLL on the retain batch (0 without one)."""
    if retain is None:
        return torch.zeros(())
    return sequence_nll(net, retain).mean()
