"""Deletion requests: the schema clients submit and the checks made at submit time.

A request carries only ids and references (sample ids are sha256 content ids,
a subject id, a substitute-data path or ``s3://`` URI), never image bytes.
:func:`parse_request` rejects bad input with :class:`InputError` naming the
field by its dotted path (``forget.sample_ids[3]``) before anything is queued.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints,
                      ValidationError, ValidationInfo, field_validator)

from .errors import InputError

GDPR_RESPONSE_DAYS = 30  # art. 12(3): one month to act on an erasure request
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
FORGET_KEY = {"class": "class", "samples": "sample_ids", "subject": "subject"}
SCHEMA_ID = "https://unlearnops.local/schemas/deletion_request.schema.json"

Kind = Literal["class", "samples", "subject"]
SampleId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class ForgetSpec(BaseModel):
    """What to forget: exactly one key, the one the request's kind needs."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              json_schema_extra={"minProperties": 1, "maxProperties": 1})

    class_: int | None = Field(None, alias="class", ge=0, description="class index (kind=class)")
    sample_ids: list[SampleId] | None = Field(
        None, min_length=1, max_length=1000,
        description="sha256 content ids from the dataset manifest (kind=samples)")
    subject: str | None = Field(None, pattern=_NAME, description="data subject id (kind=subject)")

    def keys_set(self) -> set[str]:
        """Keys present in the payload (an explicit null counts: the schema allows one key)."""
        return {type(self).model_fields[name].alias or name for name in self.model_fields_set}


def _kind_rules() -> list[dict]:
    return [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
             "then": {"properties": {"forget": {"required": [key]}}}}
            for kind, key in FORGET_KEY.items()]


class DeletionRequest(BaseModel):
    """One right-to-erasure request against one model."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="DeletionRequest",
                              json_schema_extra={"allOf": _kind_rules()})

    request_id: str = Field(default_factory=lambda: str(uuid.uuid4()),
                            description="uuid4; generated when absent")
    subject_id: str = Field(pattern=_NAME, description="the data subject making the request")
    kind: Kind
    model: str = Field(pattern=_NAME, description="model registry name, e.g. mnist-cnn")
    forget: ForgetSpec
    substitute: str | None = Field(
        None, min_length=1, max_length=1024,
        description="substitute data: a path under the substitute root or s3://BUCKET/PREFIX")
    method: str = Field("auto", pattern=_NAME, description="'auto' or a method registry name")
    submitted_at: AwareDatetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    deadline: AwareDatetime | None = Field(
        None, validate_default=True,
        description=f"default submitted_at + {GDPR_RESPONSE_DAYS} days; must be after submitted_at")
    # declared last: its default is derived from the fields above
    idempotency_key: str | None = Field(
        None, pattern=_NAME, validate_default=True,
        description="same key = same request; when absent, sha256 of the canonical JSON of "
                    "(model, kind, forget, subject_id)")

    @field_validator("request_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("not a UUID") from None

    @field_validator("forget")
    @classmethod
    def _matches_kind(cls, spec: ForgetSpec, info: ValidationInfo) -> ForgetSpec:
        kind = info.data.get("kind")
        if kind is not None and spec.keys_set() != {FORGET_KEY[kind]}:
            raise ValueError(f"kind {kind!r} needs exactly {{{FORGET_KEY[kind]!r}: ...}}, "
                             f"got keys {sorted(spec.keys_set())}")
        return spec

    @field_validator("submitted_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        submitted = info.data.get("submitted_at")
        if submitted is None:
            return value
        if value is None:
            return submitted + timedelta(days=GDPR_RESPONSE_DAYS)
        if value <= submitted:
            raise ValueError("deadline must be after submitted_at")
        return value.astimezone(timezone.utc)

    @field_validator("idempotency_key")
    @classmethod
    def _default_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None or not {"model", "kind", "forget", "subject_id"} <= info.data.keys():
            return value
        return content_key(info.data["model"], info.data["kind"], info.data["forget"],
                           info.data["subject_id"])

    def content_key(self) -> str:
        return content_key(self.model, self.kind, self.forget, self.subject_id)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def content_key(model: str, kind: str, forget: ForgetSpec, subject_id: str) -> str:
    """sha256 over the canonical JSON of what the request deletes (sample order ignored)."""
    spec = forget.model_dump(by_alias=True, exclude_none=True)
    if "sample_ids" in spec:
        spec["sample_ids"] = sorted(spec["sample_ids"])
    canon = json.dumps({"model": model, "kind": kind, "forget": spec, "subject_id": subject_id},
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a submitted deletion request."""
    schema = DeletionRequest.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def write_json_schema(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2) + "\n")
    return path


# ---------------------------------------------------------------- submit-time checks

@dataclass(frozen=True)
class ModelInfo:
    family: Literal["classifier", "gan", "lm"]
    num_classes: int | None = None  # None: no class requests (an unconditional GAN, a language model)


@dataclass(frozen=True)
class RowIndex:
    """The deletable rows of one kind of data: their ids, live rows per subject (and per class), what is deleted."""

    ids: set[str]
    subjects: dict[str, int]  # subject -> live rows
    tombstoned: set[str]
    name: str = "dataset manifest"
    labels: dict[int, int] = field(default_factory=dict)  # class -> live rows (images only)


@dataclass
class SubmitContext:
    """What a request is checked against at submit time."""

    models: dict[str, ModelInfo]
    images: RowIndex
    methods: set[str]
    substitute_root: Path
    bucket: str
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    corpus: RowIndex = RowIndex(set(), {}, set(), "corpus")  # the language models' QA corpus (data/corpus/)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, **kwargs) -> "SubmitContext":
        """Ids, subjects and tombstones read from a dataset directory (see data.py and lm/corpus.py)."""
        from .data import read_manifest, read_tombstones  # data imports torch; submit need not
        from .lm.corpus import read_row_index

        stones = {t["sample_id"] for t in read_tombstones(data_dir)}
        rows = [r for r in read_manifest(data_dir) if r["sample_id"] not in stones]
        images = RowIndex({r["sample_id"] for r in rows}, Counter(r["subject_id"] for r in rows if r["subject_id"]),
                          stones, labels=Counter(r["label"] for r in rows if r["split"] == "train"))
        corpus_dir = Path(data_dir) / "corpus"
        if corpus_dir.exists():
            kwargs["corpus"] = RowIndex(*read_row_index(corpus_dir), "corpus")
        return cls(images=images, **kwargs)

    def index_for(self, family: str) -> RowIndex:
        return self.corpus if family == "lm" else self.images


def forget_size(request: DeletionRequest, ctx: SubmitContext) -> tuple[int, int]:
    """(rows the request deletes, deletable training rows) of its model's data, for the quotas."""
    index = ctx.index_for(ctx.models[request.model].family)
    total = sum(index.labels.values()) or len(index.ids)
    if request.kind == "class":
        return index.labels.get(request.forget.class_, 0), total
    if request.kind == "samples":
        return len(request.forget.sample_ids), total
    return index.subjects.get(request.forget.subject, 0), total


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InputError(key, "appears twice in the payload")
        seen[key] = value
    return seen


def _reject_constant(name: str):
    raise InputError("payload", f"{name} is not valid JSON")


def load_json_object(payload: bytes | str, max_bytes: int) -> dict:
    """A JSON object from untrusted bytes: bounded size, UTF-8, no duplicate keys, no NaN; raise InputError."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(raw) > max_bytes:
        raise InputError("payload", f"{len(raw)} bytes exceeds the {max_bytes}-byte limit "
                                    "(requests carry ids and references, never data)")
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise InputError("payload", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError("payload", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise InputError("payload", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_request(payload: bytes | str | dict, ctx: SubmitContext) -> DeletionRequest:
    """Validate a submitted payload against the schema and the current data; raise InputError."""
    if isinstance(payload, dict):
        try:
            payload = json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError("payload", f"not representable as JSON ({exc})") from None
    load_json_object(payload, ctx.max_payload_bytes)
    text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
    try:
        request = DeletionRequest.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise InputError.from_validation(exc) from None
    _check_against(request, ctx)
    return request


def _check_against(request: DeletionRequest, ctx: SubmitContext) -> None:
    info = ctx.models.get(request.model)
    if info is None:
        raise InputError("model", f"unknown model {request.model!r}; known: {', '.join(sorted(ctx.models))}")
    if request.method != "auto" and request.method not in ctx.methods:
        raise InputError("method", f"unknown method {request.method!r}; use 'auto' or one of "
                                   f"{', '.join(sorted(ctx.methods))}")
    forget = request.forget
    if request.kind == "class":
        if info.num_classes is None:
            raise InputError("kind", f"model {request.model!r} has no classes")
        if forget.class_ >= info.num_classes:
            raise InputError("forget.class", f"{forget.class_} is out of range for {request.model!r} "
                                             f"(0..{info.num_classes - 1})")
    elif request.kind == "samples":
        index = ctx.index_for(info.family)
        seen: set[str] = set()
        for i, sid in enumerate(forget.sample_ids):
            where = f"forget.sample_ids[{i}]"
            if sid in seen:
                raise InputError(where, "duplicate sample id")
            if sid in index.tombstoned:
                raise InputError(where, f"sample {sid[:12]}... is already deleted")
            if sid not in index.ids:
                raise InputError(where, f"sample {sid[:12]}... is not in the {index.name}")
            seen.add(sid)
    elif forget.subject not in ctx.index_for(info.family).subjects:
        raise InputError("forget.subject", f"subject {forget.subject!r} has no samples in the dataset")
    if request.substitute is not None:
        check_substitute(request.substitute, ctx.substitute_root, ctx.bucket)


def check_substitute(ref: str, root: str | Path, bucket: str) -> Path | tuple[str, str]:
    """Resolve a substitute reference: a local Path inside ``root`` or (bucket, key prefix).

    Local paths are relative to ``root`` (absolute ones must lie inside it); any
    ``..`` component and any symlink that resolves outside ``root`` is refused.
    """
    if "://" in ref:
        url = urlsplit(ref)
        if url.scheme != "s3":
            raise InputError("substitute", f"scheme {url.scheme!r} is not supported; use a path or s3://")
        if url.netloc != bucket:
            raise InputError("substitute", f"bucket {url.netloc!r} is outside the configured bucket {bucket!r}")
        key = url.path.lstrip("/")
        if not key or ".." in PurePosixPath(key).parts or url.query or url.fragment:
            raise InputError("substitute", "s3 URI needs a plain key prefix (no '..', query or fragment)")
        return bucket, key
    if "\x00" in ref:
        raise InputError("substitute", "path contains a NUL byte")
    path = Path(ref)
    if ".." in path.parts:
        raise InputError("substitute", "path traversal ('..') is not allowed")
    root = Path(root).resolve()
    resolved = (root / path).resolve()  # an absolute ``path`` replaces root here
    if not resolved.is_relative_to(root):
        raise InputError("substitute", f"path resolves outside the substitute root {root}")
    if not resolved.exists():
        raise InputError("substitute", "path does not exist under the substitute root")
    return resolved
