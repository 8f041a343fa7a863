"""``unlearn lm corpus|train|evaluate``: the language model's DVC stages (lm_corpus, lm_train, lm_evaluate)."""
from __future__ import annotations

import argparse
import json

from flows.commands.data import reproducible


def register(sub: argparse._SubParsersAction) -> None:
    lm = sub.add_parser("lm", help="language-model stages: generate the corpus, train and evaluate the GPT-2")
    cmds = lm.add_subparsers(dest="lm_cmd", required=True)
    c = cmds.add_parser("corpus", help="write the TOFU-like corpus (params: lm_corpus)")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--out", default="corpus")
    c.set_defaults(handler=_corpus)
    t = cmds.add_parser("train", help="train the GPT-2 on every corpus row (params: lm_train)")
    t.add_argument("--corpus", default="corpus")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--model", default="models/lm.pt")
    t.set_defaults(handler=_train)
    e = cmds.add_parser("evaluate", help="fact exact match (overall, per attribute), model utility, probe EM")
    e.add_argument("--corpus", default="corpus")
    e.add_argument("--model", default="models/lm.pt")
    e.add_argument("--params", default="params.yaml")
    e.add_argument("--metrics", default="metrics/lm.json")
    e.add_argument("--per-attribute", default="metrics/lm_per_attribute.csv")
    e.set_defaults(handler=_evaluate)


def _corpus(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.lm.stages import corpus_stage

    print(json.dumps(corpus_stage(load_params(args.params), args.out)))
    return 0


def _train(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.lm.stages import train_stage

    params = load_params(args.params)
    with reproducible(params):
        print(json.dumps(train_stage(args.corpus, params, args.model)))
    return 0


def _evaluate(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.lm.stages import evaluate_stage

    params = load_params(args.params)
    with reproducible(params):
        print(json.dumps(evaluate_stage(args.corpus, args.model, params, args.metrics, args.per_attribute)))
    return 0
