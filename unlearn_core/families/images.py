"""The image dataset side shared by the image families (classifier, GAN): ``data/`` shards and manifests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unlearn_core.data import Dataset, load_dataset, read_manifest, tombstone
from unlearn_core.forget import build_forget_request, method_request, resolve_forget_rows


class ImageData:
    data_kind = "images"

    def prepare_data(self, data_dir: Path) -> None:
        """The image dataset is built by `unlearn data build` / `unlearn init`; nothing to add."""

    def load_data(self, data_dir: Path) -> Dataset:
        return load_dataset(data_dir)

    def forget_rows(self, request, data_dir: Path, dataset: Dataset) -> list[dict]:
        return resolve_forget_rows(request, read_manifest(data_dir))

    def forget_request(self, request, dataset: Dataset, arch: str, forget_ids: list[str], substitute=None):
        return build_forget_request(request, dataset, arch, forget_ids, substitute)

    def retained_request(self, spec: dict, dataset: Dataset, arch: str, substitute=None):
        """A version's method request rebuilt from its dataset version alone (the deleted rows are gone)."""
        mask = np.zeros(len(dataset.train), dtype=bool)
        return method_request(spec["kind"], dataset, arch, mask, (spec.get("forget") or {}).get("class"), substitute,
                              retained_only=True)

    def tombstone(self, data_dir: Path, ids: list[str], request_id: str) -> None:
        tombstone(data_dir, ids, request_id)
