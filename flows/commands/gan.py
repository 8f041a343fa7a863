"""``unlearn gan train|train-reference``: the GAN DVC stages (dvc.yaml: train_gan, train_reference)."""
from __future__ import annotations

import argparse
import json


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
    from unlearn_core.gan import build_gan, save_gan, train_gan
    from unlearn_core.models import pick_device
    from unlearn_core.stages import load_prepared

    p = _gan_params(args.params)
    train, _, summary = load_prepared(args.prepared)
    gan = build_gan(p, summary["num_classes"]).to(pick_device())
    train_gan(gan, train.x, train.y if gan.conditional else None, epochs=p.epochs, batch_size=p.batch_size,
              lr=p.lr, beta1=p.beta1, seed=p.seed, progress=True)
    save_gan(gan.cpu(), args.model)
    print(json.dumps({"model": args.model, **gan.arch, "n_train": len(train)}))
    return 0


def _train_reference(args) -> int:
    from pathlib import Path

    from unlearn_core.models import build_model, pick_device, save_model
    from unlearn_core.stages import load_prepared
    from unlearn_core.training import accuracy, train_classifier

    p = _gan_params(args.params)
    train, test, summary = load_prepared(args.prepared)
    model = build_model(p.reference_model, summary["num_classes"], summary["image_shape"][0]).to(pick_device())
    train_classifier(model, train.x, train.y, epochs=p.reference_epochs, lr=p.reference_lr, seed=p.seed,
                     progress=True)
    Path(args.model).parent.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), p.reference_model, summary["num_classes"], summary["image_shape"][0], args.model)
    print(json.dumps({"model": args.model, "test_acc": accuracy(model, test)}))
    return 0
