"""``unlearn bench storage``: what one deletion adds to the DVC remote, sharded dataset vs one file.

Both layouts hold the same dataset in the real registry (git + DVC + the embedded S3 server), each
under its own remote prefix. One subject deletion is committed as v0.0.2 with the parent's model bytes
(so the model dedups and only the dataset's growth is measured), pushed, promoted, and the superseded
data erased; then every object left under the prefix is scanned for the deleted images' bytes.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from adapters.registry import RegistryWorkspace
from adapters.services import EmbeddedS3
from unlearn_core.bench.report import markdown_table, write_report
from unlearn_core.data import (SHARD_ROWS, build_mnist5k, load_images, read_manifest, read_tombstones,
                               tombstone, write_dataset)

TARGET_GROWTH = 0.02  # a one-subject deletion adds at most 2% of the dataset's bytes to the remote
MODEL = "storage-bench"


def run(out_dir: str | Path, data_dir: str | None = None, subjects: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="unlearnops-bench-storage-") as tmp:
        tmp = Path(tmp)
        source = Path(data_dir) if data_dir else build_mnist5k(tmp / "mnist5k")
        images, labels = load_images(source)
        rows = [{k: r[k] for k in ("sample_id", "label", "split", "subject_id")} for r in read_manifest(source)]
        doomed_subjects = sorted({r["subject_id"] for r in rows if r["split"] == "train" and r["subject_id"]})
        doomed_subjects = doomed_subjects[:subjects]
        doomed = [r["sample_id"] for r in rows if r["subject_id"] in doomed_subjects]
        doomed_bytes = [images[i].tobytes() for i, r in enumerate(rows) if r["subject_id"] in doomed_subjects]
        s3 = EmbeddedS3.start(tmp / "state")
        model = tmp / "model.bin"
        model.write_bytes(np.random.default_rng(0).bytes(4096))
        results = []
        try:
            for layout, shard_rows in (("sharded", SHARD_ROWS), ("one file", len(rows))):
                data = write_dataset(tmp / layout / "data", images, labels, rows, read_tombstones(source),
                                     shard_rows=shard_rows)
                results.append(_measure(tmp / layout / "registry", data, s3, layout, shard_rows, model,
                                        doomed, doomed_bytes))
        finally:
            EmbeddedS3(tmp / "state").stop()
    sharded, one_file = results
    ratio = one_file["added_bytes"] / max(sharded["added_bytes"], 1)
    md = ["# Storage benchmark: bytes one deletion adds to the DVC remote", "",
          f"Dataset: {len(rows):,} samples, {sharded['dataset_bytes'] / 1e6:.1f} MB as stored; deletion: "
          f"{len(doomed_subjects)} subject(s), {len(doomed)} samples. Each layout is a real registry on the embedded "
          "S3 server; v0.0.2 = the deletion with the parent's model bytes, so the growth is the dataset's.", "",
          markdown_table(results, ("layout", "shard_rows", "files", "dataset_bytes", "added_bytes", "added_pct",
                                   "commit_push_s", "erased_everywhere")), "",
          "## Targets", "",
          f"- {'PASS' if sharded['added_pct'] <= 100 * TARGET_GROWTH else 'MISS'}: a deletion adds <= 2% of the "
          f"dataset's bytes to the remote (sharded: {sharded['added_pct']:.2f}%, one file: "
          f"{one_file['added_pct']:.2f}%, {ratio:.0f}x less)",
          f"- {'PASS' if all(r['erased_everywhere'] for r in results) else 'MISS'}: after the superseded data is "
          "erased, no object on the remote holds a deleted sample's bytes (every layout)"]
    paths = write_report(out_dir, "storage", results, "\n".join(md) + "\n",
                         {"data": str(data_dir or "mnist5k"), "subjects": subjects, "growth_ratio": ratio})
    paths["plot"] = _plot(results, Path(out_dir) / "storage.png")
    return {"paths": paths, "rows": results}


def _measure(path: Path, data: Path, s3_config, layout: str, shard_rows: int, model: Path,
             doomed: list[str], doomed_bytes: list[bytes]) -> dict:
    prefix = "storage-" + layout.replace(" ", "-")
    ws = RegistryWorkspace(path, s3_config, {"remote_prefix": prefix})
    ws.init_from(data, model, MODEL, {})
    before = _bucket_bytes(s3_config, prefix)
    started = time.perf_counter()
    version = ws.commit_version(MODEL, model, "req-storage", {}, doomed, "v0.0.1",
                                lambda d: tombstone(d, doomed, "req-storage"))
    ws.push(version)
    elapsed = time.perf_counter() - started
    added = _bucket_bytes(s3_config, prefix) - before
    ws.promote(MODEL, version)
    ws.purge_superseded_data()
    dataset_bytes = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    return {"layout": layout, "shard_rows": shard_rows, "files": sum(1 for p in data.rglob("*") if p.is_file()),
            "dataset_bytes": dataset_bytes, "added_bytes": added, "added_pct": 100 * added / dataset_bytes,
            "commit_push_s": elapsed, "erased_everywhere": not _remote_holds(s3_config, prefix, doomed_bytes)}


def _objects(s3_config, prefix: str):
    client = s3_config.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_config.bucket, Prefix=prefix + "/"):
        yield from page.get("Contents", [])


def _bucket_bytes(s3_config, prefix: str) -> int:
    return sum(obj["Size"] for obj in _objects(s3_config, prefix))


def _remote_holds(s3_config, prefix: str, needles: list[bytes]) -> bool:
    client = s3_config.client()
    for obj in _objects(s3_config, prefix):
        body = client.get_object(Bucket=s3_config.bucket, Key=obj["Key"])["Body"].read()
        if any(n in body for n in needles):
            return True
    return False


def _plot(rows: list[dict], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["layout"] for r in rows], [r["added_pct"] for r in rows], color=["tab:green", "tab:gray"])
    ax.axhline(100 * TARGET_GROWTH, color="tab:red", linestyle="--", label="target: 2%")
    ax.set_ylabel("% of dataset bytes added")
    ax.set_title("Remote growth for one deletion")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
