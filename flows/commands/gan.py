"""``unlearn gan train|train-reference|evaluate``: the GAN DVC stages (train_gan, train_reference, evaluate_gan)."""
from __future__ import annotations

import argparse
import json

from flows.commands.data import reproducible


def register(sub: argparse._SubParsersAction) -> None:
    gan = sub.add_parser("gan", help="GAN stages: train the DCGAN and its reference classifier")
    cmds = gan.add_subparsers(dest="gan_cmd", required=True)
    t = cmds.add_parser("train", help="train the DCGAN on the prepared training split (params: gan)")
    t.add_argument("--prepared", default="prepared")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--model", default="models/gan.pt")
    t.set_defaults(handler=_train)
    r = cmds.add_parser("train-reference", help="train the reference classifier of the GAN metrics")
    r.add_argument("--prepared", default="prepared")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--model", default="models/reference.pt")
    r.set_defaults(handler=_train_reference)
    e = cmds.add_parser("evaluate", help="FID, label agreement and membership AUC of the base GAN")
    e.add_argument("--prepared", default="prepared")
    e.add_argument("--params", default="params.yaml")
    e.add_argument("--model", default="models/gan.pt")
    e.add_argument("--reference", default="models/reference.pt")
    e.add_argument("--metrics", default="metrics/gan.json")
    e.add_argument("--per-class", default="metrics/gan_per_class.csv")
    e.set_defaults(handler=_evaluate)


def _gan_params(path):
    from unlearn_core.config import load_params, method_config
    from unlearn_core.errors import InputError
    from unlearn_core.gan import GanParams
    from pydantic import ValidationError

    try:
        return GanParams(**method_config(load_params(path), "gan"))
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: gan.") from None


def _train(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.stages import train_gan_stage

    p = _gan_params(args.params)
    with reproducible(load_params(args.params)):
        print(json.dumps(train_gan_stage(args.prepared, p, args.model)))
    return 0


def _train_reference(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.stages import train_reference_stage

    p = _gan_params(args.params)
    with reproducible(load_params(args.params)):
        print(json.dumps(train_reference_stage(args.prepared, p, args.model)))
    return 0


def _evaluate(args) -> int:
    from unlearn_core.config import load_params, method_config
    from unlearn_core.gan_metrics import GATE_DEFAULTS
    from unlearn_core.stages import evaluate_gan

    params = load_params(args.params)
    gates = {**GATE_DEFAULTS, **method_config(params, "gan_gates")}
    with reproducible(params):
        print(json.dumps(evaluate_gan(args.prepared, args.model, args.reference, args.metrics, args.per_class,
                                      n_samples=gates["n_samples"], seed=gates["seed"])))
    return 0
