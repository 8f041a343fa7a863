"""DCGANs: cascaded unlearning, exact GAN retraining, GAN gates (``gan_gates``)."""
from __future__ import annotations

from pathlib import Path

from unlearn_core.config import Params, method_config
from unlearn_core.data import Dataset
from unlearn_core.families.base import floats
from unlearn_core.families.images import ImageData
from unlearn_core.gates import GateOutcome
from unlearn_core.methods import ForgetRequest
from unlearn_core.models import build_model, load_model, pick_device, save_model
from unlearn_core.training import accuracy, train_classifier


class GanFamily(ImageData):
    """DCGAN models: cascaded unlearning, exact GAN retraining, GAN gates (``gan_gates``)."""

    name = "gan"
    exact_method = "retrain_gan"
    train_section = "gan"
    batches = False

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
                 request: ForgetRequest) -> tuple[dict, GateOutcome]:
        from unlearn_core.gan_metrics import gan_gate_report

        gates = method_config(self.params, "gan_gates")
        holdout = self.holdout_halves(dataset)[1] if request.kind == "samples" else None
        report, outcome = gan_gate_report(parent, model, request, self.reference(), holdout=holdout, gates=gates)
        return floats(report), outcome

    def headline(self, report: dict) -> dict:
        return report
