"""Fetch a request's substitute images from a local path or the configured S3 bucket.

A reference is either a path inside ``substitute_root`` (relative to it, or
absolute but inside it) or ``s3://<configured bucket>/<key or prefix>``.
Formats: ``.npy`` (uint8 [N,H,W] or [N,C,H,W]), ``.npz`` with ``images``
(+ optional ``labels``), or a folder ``<class label>/*.png`` (ImageFolder
layout, folder names are the integer labels).

S3 objects are downloaded into ``workdir``, the per-request temp dir the
caller purges when the request ends. The pixel dtype and value range are not
coerced here: :func:`adapters.validation.validate_substitute` checks them so a
bad upload is rejected with GX results in the receipt.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from unlearn_core.data import load_image_folder
from unlearn_core.errors import InputError
from unlearn_core.requests import check_substitute

from .validation import ValidationParams

ARRAY_SUFFIXES = (".npy", ".npz")


def fetch_substitute(ref: str, substitute_root: str | Path, s3: Any | None, workdir: str | Path, *,
                     image_shape: tuple[int, int, int] | None = None,
                     max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Load substitute images [N,C,H,W] and labels (or None).

    ``s3`` is S3Config-like (endpoint_url, access_key, secret_key, bucket).
    ``image_shape`` (C,H,W) picks grayscale/RGB and the size for PNG folders.
    ``max_bytes`` caps what is read or downloaded (default: params.yaml
    ``validation.substitute_max_bytes``). Every bad reference raises
    InputError('substitute', ...) before anything is downloaded.
    """
    if max_bytes is None:
        max_bytes = ValidationParams().substitute_max_bytes
    if not isinstance(ref, str) or not ref.strip():
        raise InputError("substitute", "empty reference")
    if ref.startswith("s3://") and s3 is None:
        raise InputError("substitute", "s3:// references need an S3 store and none is configured")
    # The submit-time check again: the filesystem (symlinks) may have changed since.
    target = check_substitute(ref, substitute_root, s3.bucket if s3 is not None else "")
    if isinstance(target, tuple):
        path = _download(ref, target[1], s3, Path(workdir), max_bytes)
    else:
        path = target
    return _load(path, image_shape, max_bytes)


def _safe_parts(key: str, ref: str) -> tuple[str, ...]:
    """Path parts of a listed object key below the prefix; refuses keys that would escape workdir."""
    parts = PurePosixPath(key).parts
    if key.startswith("/") or "\\" in key or any(p in ("..", ".") for p in key.split("/")):
        raise InputError("substitute", f"{ref!r}: path traversal in the object key")
    return parts


def _download(ref: str, key: str, s3: Any, workdir: Path, max_bytes: int) -> Path:
    """Download one object (``.npy``/``.npz`` key) or every object under a prefix into workdir."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    bucket = s3.bucket

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key,
                          region_name=getattr(s3, "region", None) or "us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    dest = workdir / "substitute"
    if key.endswith(ARRAY_SUFFIXES):
        try:
            size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise InputError("substitute", f"no object {ref}") from None
            raise
        objects = [(key, size)]
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    else:
        prefix = key.rstrip("/") + "/"
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(o["Key"], o["Size"]) for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        if not objects:
            raise InputError("substitute", f"no objects under {ref}")
    total = sum(size for _, size in objects)
    if total > max_bytes:
        raise InputError("substitute", f"{ref} holds {total} bytes, more than the {max_bytes} allowed")
    targets = [(obj_key, dest.joinpath(*_safe_parts(obj_key[len(prefix):], ref))) for obj_key, _ in objects]
    for obj_key, local in targets:
        local.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj_key, str(local))
    return dest / key[len(prefix):] if key.endswith(ARRAY_SUFFIXES) else dest


def _load(path: Path, image_shape: tuple[int, int, int] | None, max_bytes: int):
    if path.is_dir():
        images, labels = _load_folder(path, image_shape, max_bytes)
    elif path.suffix in ARRAY_SUFFIXES:
        if path.stat().st_size > max_bytes:
            raise InputError("substitute", f"{path.name} is larger than the {max_bytes} bytes allowed")
        images, labels = _load_array(path)
    else:
        raise InputError("substitute", f"{path.name}: expected a .npy, a .npz or a folder of PNGs")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise InputError("substitute", f"images must be [N,H,W] or [N,C,H,W], got shape {images.shape}")
    if images.shape[0] == 0 or images[0].size == 0:
        raise InputError("substitute", f"no image data (shape {images.shape})")
    if labels is not None:
        if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
            raise InputError("substitute", f"labels must be {images.shape[0]} integers, got {labels.dtype} "
                                           f"{labels.shape}")
        labels = labels.astype(np.int64)
    return images, labels


def _load_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise InputError("substitute", f"{path.name} has no 'images' array (has {', '.join(data.files)})")
            labels = np.asarray(data["labels"]) if "labels" in data.files else None
            return np.asarray(data["images"]), labels
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise InputError("substitute", f"{path.name} is not a readable numpy file ({exc})") from None


def _load_folder(root: Path, image_shape, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    root = root.resolve()
    files = [p for p in root.rglob("*") if not p.is_dir()]
    if any(not p.resolve().is_relative_to(root) for p in files):
        raise InputError("substitute", "the folder links to files outside it")
    if sum(p.stat().st_size for p in files) > max_bytes:
        raise InputError("substitute", f"the folder holds more than the {max_bytes} bytes allowed")
    grayscale = image_shape is None or image_shape[0] == 1
    size = tuple(image_shape[1:]) if image_shape is not None else None
    try:
        images, index, classes = load_image_folder(root, grayscale=grayscale, size=size)
    except InputError as exc:
        raise InputError("substitute", exc.reason) from None
    except ValueError as exc:  # images of different sizes cannot be stacked
        raise InputError("substitute", f"images in the folder differ in size ({exc})") from None
    except OSError as exc:  # PIL cannot decode a file
        raise InputError("substitute", f"unreadable image in the folder ({exc})") from None
    if not all(name.isdigit() for name in classes):
        raise InputError("substitute", f"class folder names must be integer labels, got {classes}")
    return images, np.asarray([int(classes[i]) for i in index], dtype=np.int64)
