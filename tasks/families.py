"""What differs between model families in the pipeline: load/save, base training, gates.

``process-request`` talks to a family object and never branches on the family
itself; adding a family means adding one class here and a ``models:`` entry.
"""
from __future__ import annotations

from pathlib import Path

import torch

from unlearn_core.config import Params, method_config
from unlearn_core.data import Dataset
from unlearn_core.gates import evaluate_gates, gates_params, thresholds_for
from unlearn_core.methods import ForgetRequest
from unlearn_core.metrics import classifier_report
from unlearn_core.models import build_model, load_model, pick_device, save_model
from unlearn_core.training import accuracy, train_classifier

REPORT_KEYS = ("UA", "RA", "TA", "TA_retained", "TA_forget", "MIA_efficacy", "Fs")


class ClassifierFamily:
    name = "classifier"
    exact_method = "retrain"

    def __init__(self, params: Params, arch: str, state_dir: Path):
        self.params, self.arch = params, arch

    def load(self, path) -> torch.nn.Module:
        return load_model(path, pick_device())[0]

    def save(self, model, path, dataset: Dataset) -> None:
        save_model(model.cpu(), self.arch, dataset.num_classes, dataset.image_shape[0], path)

    def train_base(self, data_dir: Path, workdir: Path, path: Path) -> dict:
        """The DVC pipeline's own stages (prepare -> train -> evaluate) on the dataset directory."""
        from unlearn_core.stages import evaluate, prepare, train

        prepare(data_dir, workdir / "prepared")
        train(workdir / "prepared", self.params, path)
        metrics = evaluate(workdir / "prepared", path, workdir / "metrics.json", workdir / "per_class.csv")
        return {"params": self.params.train.model_dump(), "metrics_after": metrics}

    def exact_config(self) -> dict:
        return self.params.train.model_dump(exclude={"model"})

    def method_kwargs(self, method: str, dataset: Dataset) -> dict:
        return {}

    def parent_report(self, parent, dataset: Dataset, request: ForgetRequest) -> dict:
        return classifier_report(parent, dataset.train, dataset.test, request.forget_mask, request.forget_class,
                                 seed=request.seed)

    def evaluate(self, method: str, parent, parent_report: dict, model, dataset: Dataset,
                 request: ForgetRequest) -> tuple[dict, dict]:
        report = self.parent_report(model, dataset, request)
        limits = thresholds_for(gates_params(self.params), method)
        outcome = evaluate_gates(request.kind, parent_report, report, limits, int(request.forget_mask.sum()))
        return _floats(report), {**outcome.to_dict(), "summary": outcome.failed()}

    def headline(self, report: dict) -> dict:
        return {k: report[k] for k in REPORT_KEYS if k in report}


class GanFamily:
    """DCGAN models: cascaded unlearning, exact GAN retraining, GAN gates (``gan_gates``)."""

    name = "gan"
    exact_method = "retrain_gan"

    def __init__(self, params: Params, arch: str, state_dir: Path):
        from unlearn_core.gan import GanParams

        self.params = params
        self.gan_params = GanParams(**method_config(params, "gan"))
        self.reference_path = Path(state_dir) / "references" / "gan-reference.pt"

    def load(self, path):
        from unlearn_core.gan import load_gan

        return load_gan(path, pick_device())

    def save(self, model, path, dataset: Dataset) -> None:
        from unlearn_core.gan import save_gan

        save_gan(model.cpu(), path)

    def train_base(self, data_dir: Path, workdir: Path, path: Path) -> dict:
        """The GAN and the reference classifier its metrics use (kept beside the state, md5 in lineage)."""
        import hashlib

        from unlearn_core.data import load_dataset
        from unlearn_core.gan import build_gan, train_gan

        dataset = load_dataset(data_dir)
        p = self.gan_params
        gan = build_gan(p, dataset.num_classes).to(pick_device())
        train_gan(gan, dataset.train.x, dataset.train.y if gan.conditional else None, epochs=p.epochs,
                  batch_size=p.batch_size, lr=p.lr, beta1=p.beta1, seed=p.seed, progress=True)
        self.save(gan, path, dataset)
        reference = build_model(p.reference_model, dataset.num_classes, dataset.image_shape[0]).to(pick_device())
        train_classifier(reference, dataset.train.x, dataset.train.y, epochs=p.reference_epochs, lr=p.reference_lr,
                         seed=p.seed)
        self.reference_path.parent.mkdir(parents=True, exist_ok=True)
        save_model(reference.cpu(), p.reference_model, dataset.num_classes, dataset.image_shape[0],
                   self.reference_path)
        digest = hashlib.md5(self.reference_path.read_bytes()).hexdigest()
        return {"params": p.model_dump(), "reference": {"md5": digest,
                                                        "test_acc": accuracy(reference, dataset.test)}}

    def reference(self):
        return load_model(self.reference_path, pick_device())[0]

    def exact_config(self) -> dict:
        return self.gan_params.model_dump()

    @staticmethod
    def holdout_halves(dataset: Dataset):
        """Held-out real images split in two: one half calibrates cascade_gan's stopping rule, the
        other scores the membership gate, so the gate never judges on what the method tuned to."""
        n = len(dataset.test)
        return dataset.test.subset(range(0, n, 2)), dataset.test.subset(range(1, n, 2))

    def method_kwargs(self, method: str, dataset: Dataset) -> dict:
        if method != "cascade_gan":
            return {}
        return {"reference": self.reference(), "holdout": self.holdout_halves(dataset)[0]}

    def parent_report(self, parent, dataset: Dataset, request: ForgetRequest) -> dict:
        return {}  # gan_gate_report scores parent and candidate together

    def evaluate(self, method: str, parent, parent_report: dict, model, dataset: Dataset,
                 request: ForgetRequest) -> tuple[dict, dict]:
        from unlearn_core.gan_metrics import gan_gate_report

        gates = method_config(self.params, "gan_gates")
        holdout = self.holdout_halves(dataset)[1] if request.kind == "samples" else None
        report = gan_gate_report(parent, model, request, self.reference(), holdout=holdout, gates=gates)
        failures = report.pop("failures", [])
        passed = bool(report.pop("passed"))
        return _floats(report), {"passed": passed, "failures": failures,
                                 "summary": ", ".join(failures)}

    def headline(self, report: dict) -> dict:
        return report


FAMILIES = {f.name: f for f in (ClassifierFamily, GanFamily)}


def _floats(report: dict) -> dict:
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float))}
