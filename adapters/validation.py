"""Great Expectations suites for deletion requests, forget sets and substitute data.

Plain functions, callable without Prefect. One ephemeral GX context per
process, built on first use (GX import dominates its cost) and cached. The
suites are defined below in code with ``$PARAMETER`` placeholders, so each is
registered once and every call supplies its own values (manifest ids, class
count, row limits) as expectation parameters.

Each validation returns a :class:`ValidationReport` that goes into the
deletion receipt verbatim: per expectation its type, column, outcome, observed
value or unexpected count and at most a few unexpected *ids*. The frames GX
sees hold ids, labels and summary numbers only, never pixel data.
"""
from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unlearn_core.config import Params, method_config
from unlearn_core.data import hash_images
from unlearn_core.errors import InputError
from unlearn_core.requests import Kind

REQUEST_KINDS = get_args(Kind)
FORGET_COLUMNS = ("sample_id", "label", "split", "subject_id")


class ValidationParams(BaseModel):
    """The ``validation`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid")
    substitute_min_rows: int = Field(1, ge=1)
    substitute_max_rows: int = Field(5000, ge=1)
    substitute_max_bytes: int = Field(64 * 2**20, ge=1)
    report_max_ids: int = Field(5, ge=0)


def validation_params(params: Params) -> ValidationParams:
    try:
        vp = ValidationParams.model_validate(method_config(params, "validation"))
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: validation.") from None
    if vp.substitute_min_rows > vp.substitute_max_rows:
        raise InputError("params.yaml: validation.substitute_min_rows", "must not exceed substitute_max_rows")
    return vp


@dataclass
class ValidationReport:
    """Outcome of one suite run, JSON-able (``to_dict``) for the deletion receipt."""

    suite: str
    success: bool
    results: list[dict[str, Any]] = field(default_factory=list)

    def failed(self) -> str:
        """One line naming each failing expectation, or '' when all passed."""
        parts = []
        for r in self.results:
            if r["success"]:
                continue
            where = f"({r['column']})" if r.get("column") else ""
            if r.get("error"):
                detail = f"error: {r['error']}"
            elif "unexpected_count" in r:
                detail = f"{r['unexpected_count']} unexpected"
                if r.get("unexpected_values"):
                    detail += f" (values {', '.join(map(str, r['unexpected_values']))})"
                if r.get("unexpected_ids"):
                    detail += f", first id {r['unexpected_ids'][0]}"
            else:
                detail = f"observed {r.get('observed_value')}"
            parts.append(f"{r['expectation']}{where}: {detail}")
        return f"{self.suite}: " + "; ".join(parts) if parts else ""

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "success": self.success, "results": self.results}


# ---------------------------------------------------------------- GX context and suites

_lock = threading.RLock()
_context = None
_registered: dict[str, tuple[Any, Any]] = {}


def gx_context():
    """The process-wide ephemeral context: in-memory stores, no analytics, no progress bars.

    The first call imports GX (3-6 s on 2 busy cores); a long-running worker calls
    this at start so no request pays for it.
    """
    global _context
    with _lock:
        if _context is None:
            _context = _new_context()
    return _context


def _new_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

    config = DataContextConfig(analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False),
                               store_backend_defaults=InMemoryStoreBackendDefaults())
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.data_sources.add_pandas("unlearnops")
    return context


def _param(name: str) -> dict:
    return {"$PARAMETER": name}


def _forget_set_expectations(kind: str) -> list:
    import great_expectations.expectations as gxe

    common = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=_param("max_rows")),
        gxe.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="tombstoned", value_set=[False]),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=_param("labels")),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train"]),
    ]
    # A class request forgets one class, a subject request one subject's samples.
    per_kind = {
        "class": [gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=1, max_value=1)],
        "subject": [gxe.ExpectColumnValuesToNotBeNull(column="subject_id"),
                    gxe.ExpectColumnUniqueValueCountToBeBetween(column="subject_id", min_value=1, max_value=1)],
        "samples": [],
    }
    return common + per_kind[kind]


def _substitute_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=_param("min_rows"), max_value=_param("max_rows")),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=_param("channels")),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=_param("height")),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=_param("width")),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        gxe.ExpectColumnValuesToBeBetween(column="min_pixel", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeBetween(column="max_pixel", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=_param("labels")),
        gxe.ExpectColumnValuesToBeInSet(column="in_train", value_set=[False]),
        gxe.ExpectColumnValuesToBeUnique(column="sha256"),
    ]


def _request_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="kind"),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(REQUEST_KINDS)),
        gxe.ExpectColumnValuesToNotBeNull(column="model"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="model", min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="submitted_at_ts"),
        gxe.ExpectColumnValuesToNotBeNull(column="deadline_ts"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="deadline_ts", column_B="submitted_at_ts",
                                                    or_equal=False),
    ]


def _suite(name: str, build: Callable[[], list]):
    """(batch definition, suite) for ``name``, registered in the context on first use."""
    if name not in _registered:
        import great_expectations as gx

        ctx = gx_context()
        asset = ctx.data_sources.get("unlearnops").add_dataframe_asset(name)
        batch_def = asset.add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=build()))
        _registered[name] = (batch_def, suite)
    return _registered[name]


def _run(name: str, build: Callable[[], list], frame: pd.DataFrame, id_column: str,
         parameters: dict[str, Any], max_ids: int) -> ValidationReport:
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    with _lock:
        batch_def, suite = _suite(name, build)
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        outcome = batch.validate(suite, result_format=result_format, expectation_parameters=parameters)
    results = [_summarise(r, id_column, max_ids) for r in outcome.results]
    return ValidationReport(suite=name, success=bool(outcome.success), results=results)


# ---------------------------------------------------------------- report entries

def _plain(value: Any) -> Any:
    """JSON-able copy of a GX value (numpy scalars, tuples, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _expected(kwargs: dict) -> dict:
    """The bounds an expectation checked; long value sets only by size."""
    out = {}
    for key in ("min_value", "max_value", "or_equal"):
        if kwargs.get(key) is not None:
            out[key] = _plain(kwargs[key])
    if "value_set" in kwargs:
        values = list(kwargs["value_set"] or [])
        if len(values) <= 10:
            out["value_set"] = _plain(values)
        else:
            out["value_set_size"] = len(values)
    return out


def _summarise(r, id_column: str, max_ids: int) -> dict[str, Any]:
    config = r.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or ",".join(
        c for c in (kwargs.get("column_A"), kwargs.get("column_B")) if c) or None
    entry: dict[str, Any] = {"expectation": config.type, "column": column, "success": bool(r.success),
                             "expected": _expected(kwargs)}
    info = r.exception_info or {}
    errors = [info] if "raised_exception" in info else list(info.values())
    messages = [e.get("exception_message") for e in errors if e.get("raised_exception")]
    if messages:
        entry["success"] = False
        entry["error"] = str(messages[0])[:300]
        return entry
    res = r.result or {}
    if "observed_value" in res:
        entry["observed_value"] = _plain(res["observed_value"])
    if "unexpected_count" in res:
        entry["element_count"] = _plain(res.get("element_count"))
        entry["unexpected_count"] = _plain(res["unexpected_count"])
        ids: list = []
        for row in res.get("unexpected_index_list") or []:
            value = _plain(row.get(id_column)) if isinstance(row, dict) else None
            if value is not None and value not in ids:
                ids.append(value)
            if len(ids) >= max_ids:
                break
        entry["unexpected_ids"] = ids
        if column != id_column:
            counts = res.get("partial_unexpected_counts") or []
            entry["unexpected_values"] = [_plain(c["value"]) for c in counts[:max_ids]]
    return entry


# ---------------------------------------------------------------- public validations

def validate_forget_set(rows: pd.DataFrame, manifest_ids: set[str], tombstoned: set[str], num_classes: int,
                        expected_kind: str, *, train_size: int, max_ids: int = 5) -> ValidationReport:
    """Check a resolved forget set (columns sample_id, label, split, subject_id).

    ids in the manifest, not already deleted, unique; labels in 0..num_classes-1;
    all from the training split; 1 <= rows < ``train_size`` (the current
    training set, so a request can never empty it). Class requests must hold
    one label, subject requests one subject.
    """
    if expected_kind not in REQUEST_KINDS:
        raise InputError("kind", f"{expected_kind!r} is not one of {', '.join(REQUEST_KINDS)}")
    missing = [c for c in FORGET_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError("rows", f"forget set lacks column(s) {', '.join(missing)}")
    frame = rows.loc[:, list(FORGET_COLUMNS)].reset_index(drop=True)
    frame["subject_id"] = frame["subject_id"].replace("", None)
    # Membership as flag columns: GX re-serialises a large value_set per metric (~1 s per 5k ids).
    frame["in_manifest"] = frame["sample_id"].isin(manifest_ids)
    frame["tombstoned"] = frame["sample_id"].isin(tombstoned)
    parameters = {"labels": list(range(num_classes)), "max_rows": max(train_size - 1, 0)}
    return _run(f"forget_set.{expected_kind}", lambda: _forget_set_expectations(expected_kind), frame,
                "sample_id", parameters, max_ids)


def _corpus_forget_expectations(kind: str) -> list:
    import great_expectations.expectations as gxe

    common = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=_param("max_rows")),
        gxe.ExpectColumnValuesToBeInSet(column="in_corpus", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="tombstoned", value_set=[False]),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToMatchRegex(column="sample_id", regex="^[0-9a-f]{64}$"),
        # only authors' rows are personal data; the general sets are what every model must keep
        gxe.ExpectColumnValuesToBeInSet(column="set", value_set=["authors"]),
        gxe.ExpectColumnValuesToBeBetween(column="question_len", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="answer_len", min_value=1),
    ]
    if kind == "subject":
        common += [gxe.ExpectColumnValuesToNotBeNull(column="subject_id"),
                   gxe.ExpectColumnUniqueValueCountToBeBetween(column="subject_id", min_value=1, max_value=1)]
    return common


def validate_corpus_forget_set(rows: pd.DataFrame, corpus_ids: set[str], tombstoned: set[str], expected_kind: str,
                               *, corpus_size: int, max_ids: int = 5) -> ValidationReport:
    """Check a resolved LM forget set (columns sample_id, subject_id, set, question_len, answer_len).

    ids in the corpus, not already deleted, unique; authors' rows only; non-empty
    texts; 1 <= rows < ``corpus_size`` (a request can never empty the corpus);
    subject requests one subject.
    """
    if expected_kind not in ("samples", "subject"):
        raise InputError("kind", f"{expected_kind!r}: language models take samples and subject deletions")
    columns = ("sample_id", "subject_id", "set", "question_len", "answer_len")
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise InputError("rows", f"forget set lacks column(s) {', '.join(missing)}")
    frame = rows.loc[:, list(columns)].reset_index(drop=True)
    frame["subject_id"] = frame["subject_id"].replace("", None)
    frame["in_corpus"] = frame["sample_id"].isin(corpus_ids)
    frame["tombstoned"] = frame["sample_id"].isin(tombstoned)
    return _run(f"corpus_forget_set.{expected_kind}", lambda: _corpus_forget_expectations(expected_kind), frame,
                "sample_id", {"max_rows": max(corpus_size - 1, 0)}, max_ids)


def _image_ids(images: np.ndarray) -> list[str]:
    """Content ids; non-uint8 images cannot be training samples, so hash their raw bytes."""
    if images.dtype == np.uint8:
        return hash_images(images)
    return [hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images]


def validate_substitute(images: np.ndarray, labels: np.ndarray | None, expected_shape: tuple[int, int, int],
                        num_classes: int, forget_class: int, train_ids: set[str], min_rows: int, max_rows: int,
                        *, max_ids: int = 5) -> ValidationReport:
    """Check substitute images [N,C,H,W]: shape, dtype uint8, pixels 0..255, labels == forget_class
    (when given), min_rows <= N <= max_rows, none in the training set (by content id), no duplicates.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError("substitute", f"images must be [N, C, H, W], got shape {images.shape}")
    if images.dtype.kind not in "biuf":
        raise InputError("substitute", f"images have non-numeric dtype {images.dtype}")
    if images.shape[0] and not images[0].size:
        raise InputError("substitute", f"images are empty (shape {images.shape})")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],):
            raise InputError("substitute", f"labels have shape {labels.shape}, expected ({images.shape[0]},)")
    if not 0 <= forget_class < num_classes:
        raise InputError("forget_class", f"{forget_class} is not in 0..{num_classes - 1}")
    n = images.shape[0]
    ids = _image_ids(images)
    flat = images.reshape(n, int(np.prod(images.shape[1:])))
    frame = pd.DataFrame({
        "sha256": ids,
        "channels": [images.shape[1]] * n,
        "height": [images.shape[2]] * n,
        "width": [images.shape[3]] * n,
        "dtype": [str(images.dtype)] * n,
        "min_pixel": flat.min(axis=1).astype(float) if n else [],
        "max_pixel": flat.max(axis=1).astype(float) if n else [],
        "label": labels.tolist() if labels is not None else [None] * n,
        "in_train": [i in train_ids for i in ids],
    })
    c, h, w = expected_shape
    parameters = {"min_rows": min_rows, "max_rows": max_rows, "channels": [c], "height": [h], "width": [w],
                  "labels": [forget_class]}
    return _run("substitute", _substitute_expectations, frame, "sha256", parameters, max_ids)


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch; naive datetimes count as UTC; unparseable -> None."""
    if value is None:
        return None
    try:
        ts = pd.to_datetime(value, utc=True)
    except (ValueError, TypeError, OverflowError):
        return None
    return None if pd.isna(ts) else ts.timestamp()


def validate_request(request: dict | BaseModel, *, max_ids: int = 5) -> ValidationReport:
    """Check a request's fields: kind known, model named, deadline after submitted_at."""
    if isinstance(request, BaseModel):
        request = request.model_dump(by_alias=True)
    frame = pd.DataFrame([{
        "request_id": str(request.get("request_id")),
        "kind": request.get("kind"),
        "model": request.get("model"),
        "submitted_at_ts": _timestamp(request.get("submitted_at")),
        "deadline_ts": _timestamp(request.get("deadline")),
    }])
    for column in ("submitted_at_ts", "deadline_ts"):
        frame[column] = frame[column].astype(float)
    return _run("request", _request_expectations, frame, "request_id", {}, max_ids)
