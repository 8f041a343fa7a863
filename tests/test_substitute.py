"""fetch_substitute: .npy / .npz / PNG folders from the substitute root and from a real S3
server (the session's ``rclone serve s3``); traversal, foreign buckets and bad data rejected."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from adapters.substitute import fetch_substitute
from unlearn_core.errors import InputError


@pytest.fixture(scope="module")
def digits(mnist):
    """Twelve real test-split digits (uint8 [N,1,28,28]) with their labels."""
    te = mnist.test
    return (te.x[:12].numpy() * 255).round().astype(np.uint8), te.y[:12].numpy()


@pytest.fixture(scope="module")
def root(tmp_path_factory, digits):
    """A substitute root holding the same digits as .npy, .npz and a PNG class folder."""
    images, labels = digits
    root = tmp_path_factory.mktemp("substitutes")
    np.save(root / "three.npy", images[:, 0])
    np.savez(root / "labelled.npz", images=images, labels=labels)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / "folder" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")
    return root


def _fetch(ref, root, s3=None, workdir=None, **kw):
    return fetch_substitute(ref, root, s3, workdir or root / "_unused", **kw)


def _sorted(images, labels):
    """Canonical order (ImageFolder reads class by class)."""
    order = sorted(range(len(images)), key=lambda i: (int(labels[i]), images[i].tobytes()))
    return images[order], labels[order]


def test_local_formats(root, digits):
    images, labels = digits
    got, none = _fetch("three.npy", root)
    assert none is None and got.dtype == np.uint8 and np.array_equal(got, images)
    got, got_labels = _fetch(str(root / "labelled.npz"), root)  # absolute but inside the root
    assert np.array_equal(got, images) and np.array_equal(got_labels, labels)
    got, got_labels = _fetch("folder", root, image_shape=(1, 28, 28))
    assert got.shape == images.shape and got_labels.dtype == np.int64
    for a, b in zip(_sorted(got, got_labels), _sorted(images, labels)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("ref", ["../outside.npy", "folder/../../outside.npy", "folder/../three.npy", "/etc/passwd",
                                 "http://example.com/x.npy", "", "missing.npy"])
def test_local_refs_outside_root_or_missing_are_rejected(root, ref):
    (root.parent / "outside.npy").write_bytes(b"")
    with pytest.raises(InputError) as err:
        _fetch(ref, root)
    assert err.value.field == "substitute"


def test_symlink_out_of_root_is_rejected(root, tmp_path):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((2, 28, 28), np.uint8))
    link = root / "link.npy"
    link.symlink_to(secret)
    try:
        with pytest.raises(InputError, match="outside the substitute root"):
            _fetch("link.npy", root)
    finally:
        link.unlink()


@pytest.mark.parametrize("name, content", [
    ("empty.npy", np.zeros((0, 28, 28), np.uint8)),
    ("flat.npy", np.zeros((5, 784), np.uint8)),
    ("nolabels.npz", {"pixels": np.zeros((2, 1, 28, 28), np.uint8)}),
    ("badlabels.npz", {"images": np.zeros((2, 1, 28, 28), np.uint8), "labels": np.zeros(3, np.int64)}),
    ("pickled.npy", np.array([{"a": 1}], dtype=object)),
    ("notes.txt", "hello"),
])
def test_bad_data_names_substitute(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(InputError) as err:
        _fetch(name, tmp_path)
    assert err.value.field == "substitute"


def test_png_folder_without_integer_class_names_is_rejected(tmp_path, digits):
    (tmp_path / "sub" / "three").mkdir(parents=True)
    Image.fromarray(digits[0][0, 0]).save(tmp_path / "sub" / "three" / "a.png")
    with pytest.raises(InputError, match="integer labels"):
        _fetch("sub", tmp_path)


def test_size_cap(root):
    with pytest.raises(InputError, match="larger than"):
        _fetch("labelled.npz", root, max_bytes=100)


def test_fetch_from_s3(s3, root, digits, tmp_path):
    images, labels = digits
    client = s3.client()
    client.upload_file(str(root / "labelled.npz"), s3.bucket, "substitutes/req-1/labelled.npz")
    for png in (root / "folder").rglob("*.png"):
        key = "substitutes/req-1/pngs/" + png.relative_to(root / "folder").as_posix()
        client.upload_file(str(png), s3.bucket, key)

    workdir = tmp_path / "req-1"
    got, got_labels = fetch_substitute(f"s3://{s3.bucket}/substitutes/req-1/labelled.npz", root, s3, workdir)
    assert np.array_equal(got, images) and np.array_equal(got_labels, labels)
    assert (workdir / "substitute" / "labelled.npz").is_file()

    got, got_labels = fetch_substitute(f"s3://{s3.bucket}/substitutes/req-1/pngs", root, s3, workdir,
                                       image_shape=(1, 28, 28))
    for a, b in zip(_sorted(got, got_labels), _sorted(images, labels)):
        assert np.array_equal(a, b)
    downloaded = [p for p in workdir.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(workdir.resolve()) for p in downloaded)
    assert len(downloaded) == 1 + len(images)


def test_s3_refs_rejected(s3, root, tmp_path):
    bad = ["s3://other-bucket/substitutes/x.npz", f"s3://{s3.bucket}", f"s3://{s3.bucket}/",
           f"s3://{s3.bucket}/substitutes/../dvc/x.npz", f"s3://{s3.bucket}/no/such/object.npz",
           f"s3://{s3.bucket}/no/such/prefix"]
    for ref in bad:
        with pytest.raises(InputError) as err:
            fetch_substitute(ref, root, s3, tmp_path)
        assert err.value.field == "substitute", ref
    with pytest.raises(InputError, match="none is configured"):
        fetch_substitute(f"s3://{s3.bucket}/x.npz", root, None, tmp_path)
    assert not (tmp_path / "substitute").exists()


def test_s3_download_is_capped_before_downloading(s3, root, tmp_path):
    client = s3.client()
    client.upload_file(str(root / "labelled.npz"), s3.bucket, "substitutes/big/labelled.npz")
    with pytest.raises(InputError, match="more than"):
        fetch_substitute(f"s3://{s3.bucket}/substitutes/big", root, s3, tmp_path, max_bytes=100)
    assert not (tmp_path / "substitute").exists()


def test_wrong_s3_keys_are_an_error_not_a_silent_empty_result(s3, root, tmp_path):
    wrong = replace(s3, secret_key="not-the-secret")
    with pytest.raises(ClientError) as err:
        fetch_substitute(f"s3://{s3.bucket}/substitutes/req-1/labelled.npz", root, wrong, tmp_path)
    assert err.value.response["Error"]["Code"] in ("403", "SignatureDoesNotMatch", "AccessDenied")
    assert s3.secret_key not in str(err.value)
    assert os.listdir(tmp_path) == []
