"""MNIST-5k determinism, content ids, subjects, tombstones and the folder loaders."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from unlearn_core.data import (build_mnist5k, hash_images, load_cifar10_folder, load_dataset,
                               load_image_folder, load_images, load_mnist_folder, read_manifest,
                               read_tombstones, tombstone, write_dataset)
from unlearn_core.errors import InputError


def test_build_is_byte_deterministic(mnist_dir, tmp_path):
    again = build_mnist5k(tmp_path / "again")
    files = sorted(p.relative_to(mnist_dir) for p in mnist_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 3 * 10 + 1  # 5,000 rows in 512-row shards (whole subjects), + tombstones.csv
    for name in files:
        assert (again / name).read_bytes() == (mnist_dir / name).read_bytes(), name


def test_manifest_ids_are_content_hashes_and_split_is_stratified(mnist_dir, mnist):
    images = load_images(mnist_dir)[0]
    manifest = read_manifest(mnist_dir)
    assert len(manifest) == len(images) == 5000
    assert [r["sample_id"] for r in manifest[:20]] == hash_images(images[:20])
    assert len(mnist.train) == 4000 and len(mnist.test) == 1000
    assert np.bincount(mnist.test.y.numpy()).tolist() == [100] * 10
    assert not set(mnist.train.ids) & set(mnist.test.ids)
    assert float(mnist.train.x.min()) == 0.0 and float(mnist.train.x.max()) == 1.0


def test_subjects_own_several_training_samples(mnist):
    subjects, counts = np.unique(mnist.train.subjects, return_counts=True)
    assert len(subjects) == 800 and set(counts) == {5}
    assert set(mnist.test.subjects) == {""}


def test_tombstone_removes_bytes_and_hides_ids(mnist_dir, tmp_path):
    work = build_mnist5k(tmp_path / "d")
    before = load_dataset(work)
    doomed = list(before.train.ids[:3])
    doomed_bytes = [(before.train.x[i] * 255).round().byte().numpy().tobytes() for i in range(3)]
    assert tombstone(work, doomed, request_id="req-1") == 3
    after = load_dataset(work)
    assert len(after.train) == len(before.train) - 3
    assert not set(doomed) & after.all_ids()
    assert {t["sample_id"] for t in read_tombstones(work)} == set(doomed)
    raw = b"".join(p.read_bytes() for p in work.glob("shards/*/images.npy"))
    assert all(b not in raw for b in doomed_bytes)
    # idempotent: tombstoning the same ids again removes nothing more
    assert tombstone(work, doomed, request_id="req-2") == 0
    assert len(read_tombstones(work)) == 3



def test_a_subject_deletion_rewrites_one_shard_and_keeps_the_load_order(mnist_dir, tmp_path):
    work = build_mnist5k(tmp_path / "d")
    before = {p.relative_to(work): p.read_bytes() for p in work.rglob("*") if p.is_file()}
    old = load_dataset(work)
    subject = old.train.subjects[7]
    doomed = old.train.ids[old.train.subjects == subject]
    assert tombstone(work, doomed, request_id="req-1") == 5
    after = {p.relative_to(work): p.read_bytes() for p in work.rglob("*") if p.is_file()}
    changed = sorted(str(k) for k in before if before[k] != after.get(k))
    assert len(changed) == 4, changed  # one shard's images, labels and manifest + tombstones.csv
    assert changed[-1] == "tombstones.csv" and len({k.rsplit("/", 1)[0] for k in changed[:3]}) == 1
    new = load_dataset(work)  # the surviving samples keep their order, so training sees the same sequence
    keep = ~np.isin(old.train.ids, doomed)
    assert (new.train.ids == old.train.ids[keep]).all()
    assert (new.train.x == old.train.x[keep]).all()


def test_an_emptied_shard_is_removed(tmp_path):
    images = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2)
    rows = [{"sample_id": f"s{i}", "label": i % 2, "split": "train", "subject_id": f"p{i // 2}"} for i in range(6)]
    out = write_dataset(tmp_path / "d", images, np.arange(6) % 2, rows, tombstones=[], shard_rows=2)
    assert len(list(out.glob("shards/*"))) == 3
    assert tombstone(out, ["s2", "s3"], "req") == 2
    assert len(list(out.glob("shards/*"))) == 2
    assert [r["sample_id"] for r in read_manifest(out)] == ["s0", "s1", "s4", "s5"]
    assert load_images(out)[0].tolist() == images[[0, 1, 4, 5]].tolist()

def _write_idx(path, array, magic_type=0x08):
    header = struct.pack(">HBB", 0, magic_type, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_folder_loader_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    x, y = load_mnist_folder(tmp_path, train=True)
    assert x.shape == (7, 1, 28, 28) and x.dtype == np.uint8
    assert y.tolist() == list(range(7))
    x_test, _ = load_mnist_folder(tmp_path, train=False)
    assert len(x_test) == 3
    with pytest.raises(InputError, match="root"):
        load_mnist_folder(tmp_path / "empty", train=True)


def test_cifar10_folder_loader_reads_pickled_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [3, 1, 4, 1]}, fh)
    x, y = load_cifar10_folder(tmp_path, train=False)
    assert x.shape == (4, 3, 32, 32) and np.array_equal(x.reshape(4, -1), data)
    assert y.tolist() == [3, 1, 4, 1]
    with pytest.raises(InputError, match="data_batch_1"):
        load_cifar10_folder(tmp_path, train=True)


def test_image_folder_loader_and_shape_check(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y, classes = load_image_folder(tmp_path)
    assert x.shape == (4, 1, 28, 28) and classes == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1]
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "dog" / "bad.png")
    with pytest.raises(InputError, match="expected 28x28"):
        load_image_folder(tmp_path)


def test_import_writes_a_loadable_dataset_from_a_local_mnist_folder(tmp_path, capsys):
    from flows.cli import main

    raw = tmp_path / "src" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    assert main(["data", "import", "mnist", str(tmp_path / "src"), "--out", str(tmp_path / "ds")]) == 0
    ds = load_dataset(tmp_path / "ds")
    assert len(ds.train) == 12 and len(ds.test) == 4
    assert len(set(ds.train.subjects)) == 3  # 5 samples per subject
    assert main(["data", "import", "cifar10", str(tmp_path / "src"), "--out", str(tmp_path / "bad")]) == 2
    assert "missing CIFAR-10 batch file" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_mnist_as_published_gzipped_idx_files_in_the_root(tmp_path):
    import gzip

    rng = np.random.default_rng(4)
    for prefix, n in (("train", 5), ("t10k", 2)):
        for kind, array in (("images-idx3", rng.integers(0, 256, size=(n, 28, 28))), ("labels-idx1", np.arange(n))):
            plain = tmp_path / f"{prefix}-{kind}-ubyte"
            _write_idx(plain, array)
            (tmp_path / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
    x, y = load_mnist_folder(tmp_path, train=True)
    assert x.shape == (5, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4]
    truncated = tmp_path / "t10k-images-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(truncated.read_bytes())[:-10]))
    with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte.gz: 1558 data bytes .* \(truncated"):
        load_mnist_folder(tmp_path, train=False)


def test_cifar10_from_an_image_folder_tar_gz_as_published(tmp_path, capsys):
    import io
    import tarfile

    from flows.cli import main

    archive = tmp_path / "src" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    rng = np.random.default_rng(5)
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("train", 6), ("test", 2)):
            for cls in ("cat", "airplane"):  # labels are CIFAR-10's own: airplane 0, cat 3
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    x, y = load_cifar10_folder(archive.parent, train=True)
    assert x.shape == (12, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [0] * 6 + [3] * 6
    assert main(["data", "import", "cifar10", str(archive), "--out", str(tmp_path / "ds")]) == 0
    ds = load_dataset(tmp_path / "ds")
    assert (len(ds.train), len(ds.test), ds.image_shape) == (12, 4, (3, 32, 32))
    unknown = tmp_path / "unknown.tar.gz"
    with tarfile.open(unknown, "w:gz") as tar:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
        info = tarfile.TarInfo("train/kangaroo/0000.jpg")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    with pytest.raises(InputError, match=r"\['kangaroo'\] in unknown.tar.gz are not CIFAR-10 classes"):
        load_cifar10_folder(unknown, train=True)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("train/cat/0000.jpg")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    capsys.readouterr()
    assert main(["data", "import", "cifar10", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "root: train/cat/0000.jpg in bad.tar.gz is not an image" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
