"""Prefect tasks of ``process-request``: thin wrappers over unlearn_core and the adapters.

Caching is off for every task (``NO_CACHE``): inputs are datasets and models,
which must neither be hashed into cache keys nor persisted as results; a
forgotten sample must not survive in Prefect's storage. Logs carry request
ids, counts and versions, never sample bytes or secrets.
"""
from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from adapters.queue import Lease
from adapters.registry import Derivation, PushError, Superseded, Version
from adapters.runtime import Runtime
from adapters.substitute import fetch_substitute
from adapters.validation import (ValidationReport, validate_corpus_forget_set, validate_forget_set,
                                 validate_request, validate_substitute)
from unlearn_core.config import method_config
from unlearn_core.data import Dataset, read_manifest, read_tombstones
from unlearn_core.families import ModelFamily
from unlearn_core.gates import GateOutcome, gates_params
from unlearn_core.methods import ForgetRequest, UnlearnResult, get_method
from unlearn_core.models import pick_device
from unlearn_core.requests import DeletionRequest
from unlearn_core.training import reproducible

GPU_LIMIT = "gpu"
GPU_LEASE_S = 60  # a killed holder's slot comes back after this long (Prefect renews it while held)


@task(name="claim-requests", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def claim_requests(rt: Runtime, request_id: str | None, worker_id: str, batch_max: int,
                   batch_models: list[str]) -> list[Lease]:
    """Lease ``request_id`` (or the oldest claimable request) and, for models in ``batch_models``, up to
    ``batch_max - 1`` pending requests to forget with it."""
    return rt.queue.claim_batch(worker_id, batch_max, request_id, batch_models=batch_models)


@task(name="validate", cache_policy=NO_CACHE)
def validate(rt: Runtime, family: ModelFamily, request: DeletionRequest, forget_rows: list[dict], data,
             workdir: Path) -> tuple[list[ValidationReport], np.ndarray | None]:
    """GX suites over the request, the resolved forget set and (if any) the substitute data."""
    reports = [validate_request(request)]
    if family.data_kind == "corpus":
        reports.append(validate_corpus_forget_set(pd.DataFrame(forget_rows), data.all_ids(), set(data.tombstoned),
                                                  request.kind, corpus_size=len(data.rows)))
        return reports, None
    return _validate_images(rt, request, forget_rows, data, workdir, reports)


def _validate_images(rt: Runtime, request: DeletionRequest, forget_rows: list[dict], dataset: Dataset,
                     workdir: Path, reports: list[ValidationReport]) -> tuple[list[ValidationReport], np.ndarray | None]:
    data_dir = rt.registry.data_dir()
    manifest_ids = {r["sample_id"] for r in read_manifest(data_dir)}
    tombstoned = {t["sample_id"] for t in read_tombstones(data_dir)}
    train_ids = set(dataset.train.ids)
    reports.append(validate_forget_set(pd.DataFrame(forget_rows), manifest_ids, tombstoned, dataset.num_classes,
                                       request.kind, train_size=len(train_ids)))
    substitute = None
    if request.substitute:
        vp = (rt.params.model_extra or {}).get("validation") or {}
        images, labels = fetch_substitute(request.substitute, rt.substitute_root, rt.s3, workdir,
                                          image_shape=dataset.image_shape, max_bytes=vp.get("substitute_max_bytes"))
        if request.kind == "class":
            reports.append(validate_substitute(images, labels, dataset.image_shape, dataset.num_classes,
                                               request.forget.class_, train_ids, vp.get("substitute_min_rows", 1),
                                               vp.get("substitute_max_rows", 5000)))
        substitute = images
    return reports, substitute


@cache
def ensure_gpu_limit() -> None:
    """Create the ``gpu`` global concurrency limit (1 slot) if the API has none yet.

    ``run_unlearning`` takes its slot strictly, so a missing limit is an error, never a no-op.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)
        except ObjectAlreadyExists:  # another worker created it between our read and our create
            pass


@task(name="unlearn", cache_policy=NO_CACHE)
def run_unlearning(parent, method: str, config: dict, request: ForgetRequest, method_kwargs: dict,
                   cpu_threads: int = 1) -> tuple[object, UnlearnResult]:
    """Run one method while holding the ``gpu`` global concurrency slot (strict: the limit must exist).

    Under ``training.reproducible(cpu_threads)``, as the registry's DVC stage re-runs it: on CPU the
    version's bytes are then the ones ``dvc repro`` re-derives (``unlearn verify --recompute``). One
    request holds the slot at a time, so the process-wide thread count is not contended.
    """
    with concurrency(GPU_LIMIT, occupy=1, strict=True, lease_duration=GPU_LEASE_S), reproducible(cpu_threads):
        return get_method(method)(parent, config, pick_device(), **method_kwargs).unlearn(request)


@task(name="evaluate-gates", cache_policy=NO_CACHE)
def evaluate(family: ModelFamily, method: str, parent, parent_report: dict, model, dataset: Dataset,
             request: ForgetRequest) -> tuple[dict, GateOutcome]:
    """The family's metrics of the candidate and its gate verdict."""
    return family.evaluate(method, parent, parent_report, model, dataset, request)


@task(name="commit-version", cache_policy=NO_CACHE)
def commit_version(rt: Runtime, family: ModelFamily, model_name: str, model, dataset: Dataset,
                   request: DeletionRequest, parent: str, lineage: dict, deleted: dict[str, list[str]],
                   workdir: Path, guard: Callable[[], object], substitute: np.ndarray | None = None) -> Version:
    """Commit model + tombstoned dataset + lineage + the DVC stage that re-derives the model (no push);
    refused if ``parent`` is no longer the head.

    ``deleted``: the sample ids of each request the version serves (one, or a batch); each id's
    tombstone names its own request. ``substitute``: the images the method read, kept as the stage's input.
    """
    path = workdir / "model.pt"
    family.save(model, path, dataset)

    def tombstone_all(data_dir: Path) -> None:
        for request_id, ids in deleted.items():
            family.tombstone(data_dir, ids, request_id)

    all_ids = sorted({i for ids in deleted.values() for i in ids})
    spec = {"kind": request.kind, "forget": request.forget.model_dump(by_alias=True, exclude_none=True),
            "request_ids": list(deleted)}
    method = get_method(lineage["method"])  # substitutes are kept only where the method read them
    derivation = Derivation.from_lineage(lineage, spec, substitute if method.needs_substitute else None,
                                         reads_forget_set=method.reads_forget_set)
    return rt.registry.commit_version(model_name, path, request.request_id, lineage, all_ids, parent=parent,
                                      guard=guard, dataset_change=tombstone_all, batch=list(deleted),
                                      derivation=derivation)


@task(name="push-version", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def push_version(rt: Runtime, version: Version) -> None:
    """``dvc push`` of the version's own objects to S3; retried when S3 is down. Nothing is promoted before."""
    try:
        rt.registry.push(version)
    except PushError:
        get_run_logger().warning("dvc push failed; S3 unreachable? (retrying)")
        raise


@task(name="promote-version", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def promote_version(rt: Runtime, model_name: str, version: Version, guard: Callable[[], object]) -> str:
    """Give the version ``prod``; returns the version that holds prod afterwards.

    A later version already in prod was derived from this one (compare-and-swap keeps one chain per
    model), so it holds this deletion too: prod stays where it is.
    """
    try:
        rt.registry.promote(model_name, version.number, "prod", guard=guard)
    except Superseded as exc:
        return exc.current
    return version.semver


@task(name="erase-superseded-data", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def erase_superseded_data(rt: Runtime) -> int:
    """Older dataset versions still hold the deleted samples' bytes: erase them (cache and bucket)."""
    return len(rt.registry.purge_superseded_data())


def method_attempts(rt: Runtime, method: str, family: ModelFamily) -> list[tuple[str, dict]]:
    """The plan: the method, once more with the stronger ``gates.retry`` settings, then exact retraining."""
    exact = family.exact_method
    base = family.exact_config() if method == exact else method_config(rt.params, method)
    plan = [(method, base)]
    stronger = gates_params(rt.params).retry.get(method)
    if stronger and method != exact:
        plan.append((method, {**base, **stronger}))
    if method != exact:
        plan.append((exact, family.exact_config()))
    return plan


def purge(workdir: Path) -> None:
    """Remove every per-request copy of forget/substitute data and candidate models."""
    shutil.rmtree(workdir, ignore_errors=True)
