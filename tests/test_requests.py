"""Deletion-request schema and submit-time checks: every bad input names its field."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from unlearn_core.data import hash_images, tombstone, write_dataset
from unlearn_core.errors import InputError
from unlearn_core.requests import (GDPR_RESPONSE_DAYS, DeletionRequest, ModelInfo, SubmitContext,
                                   json_schema, parse_request)

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "deletion_request.schema.json"
BUCKET = "unlearn"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A 12-sample dataset (3 subjects x 4) with the first sample tombstoned."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    ids = hash_images(images)
    rows = [{"sample_id": sid, "label": int(lab), "split": "train", "subject_id": f"subject-{i // 4:04d}"}
            for i, (sid, lab) in enumerate(zip(ids, labels))]
    out = write_dataset(tmp_path_factory.mktemp("req") / "data", images, labels, rows, tombstones=[])
    tombstone(out, [ids[0]], request_id="earlier")
    return out, ids


@pytest.fixture
def ctx(data_dir, tmp_path):
    (tmp_path / "subs" / "class3").mkdir(parents=True)
    return SubmitContext.from_data_dir(
        data_dir[0], models={"mnist-cnn": ModelInfo("classifier", 10), "dcgan": ModelInfo("gan")},
        methods={"lra_npp", "retrain"}, substitute_root=tmp_path / "subs", bucket=BUCKET)


def payload(**overrides):
    base = {"subject_id": "subject-0001", "kind": "class", "model": "mnist-cnn", "forget": {"class": 3}}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rejected(ctx, body) -> InputError:
    with pytest.raises(InputError) as info:
        parse_request(body, ctx)
    return info.value


def test_committed_schema_matches_generated():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()


def test_schema_accepts_valid_and_ties_forget_key_to_kind():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(payload())
    assert not validator.is_valid(payload(kind="samples"))  # forget has "class", kind needs sample_ids
    assert not validator.is_valid(payload(forget={"class": 3, "subject": "subject-0001"}))
    assert not validator.is_valid(payload(extra=1))


def test_valid_requests_get_defaults(ctx, data_dir):
    _, ids = data_dir
    req = parse_request(json.dumps(payload(substitute="class3")), ctx)
    assert req.kind == "class" and req.forget.class_ == 3 and req.method == "auto"
    assert req.deadline - req.submitted_at == timedelta(days=GDPR_RESPONSE_DAYS)
    assert req.submitted_at.tzinfo is not None and len(req.idempotency_key) == 64

    a = parse_request(payload(kind="samples", forget={"sample_ids": [ids[1], ids[2]]}), ctx)
    b = parse_request(payload(kind="samples", forget={"sample_ids": [ids[2], ids[1]]}), ctx)
    assert a.request_id != b.request_id
    assert a.idempotency_key == b.idempotency_key  # derived from content, sample order ignored
    c = parse_request(payload(kind="subject", forget={"subject": "subject-0002"}, method="retrain",
                              substitute=f"s3://{BUCKET}/subs/class3/"), ctx)
    assert c.idempotency_key not in (a.idempotency_key, req.idempotency_key)
    explicit = parse_request(payload(idempotency_key="client-key-1"), ctx)
    assert explicit.idempotency_key == "client-key-1"
    # the stored JSON round-trips to the same request
    assert DeletionRequest.model_validate_json(c.to_json()) == c


@pytest.mark.parametrize("body, field", [
    ('{"subject_id": "s", "kind": ', "payload"),
    ("[1, 2]", "payload"),
    ('{"subject_id": "s", "kind": "class", "model": "mnist-cnn", "forget": {"class": NaN}}', "payload"),
    (payload(image=b"\x00\x01"), "payload"),  # bytes never make it into a request
    (b"\xff\xfe{}", "payload"),
    ('{"subject_id": "a", "subject_id": "b"}', "subject_id"),
    (payload(colour="blue"), "colour"),
    (payload(forget={"class": 3, "label": 3}), "forget.label"),
    (payload(forget={"class": "3"}), "forget.class"),
    (payload(forget={"class": True}), "forget.class"),
    (payload(subject_id=7), "subject_id"),
    (payload(kind="everything"), "kind"),
    (payload(kind="samples"), "forget"),
    (payload(forget={"class": 3, "subject": "subject-0001"}), "forget"),
    (payload(kind="samples", forget={"sample_ids": ["ab" * 32, "not-a-sha"]}), "forget.sample_ids[1]"),
    (payload(kind="samples", forget={"sample_ids": []}), "forget.sample_ids"),
    (payload(forget=None), "forget"),
    (payload(request_id="123"), "request_id"),
    (payload(submitted_at="2026-01-01T00:00:00"), "submitted_at"),  # no timezone
    (payload(submitted_at="2026-01-02T00:00:00Z", deadline="2026-01-01T00:00:00Z"), "deadline"),
    (payload(model="nope"), "model"),
    (payload(forget={"class": 10}), "forget.class"),
    (payload(kind="class", model="dcgan"), "kind"),
    (payload(method="magic"), "method"),
    (payload(kind="subject", forget={"subject": "subject-9999"}), "forget.subject"),
])
def test_bad_input_names_the_field(ctx, body, field):
    assert rejected(ctx, body).field == field


def test_sample_ids_unknown_deleted_or_duplicate(ctx, data_dir):
    _, ids = data_dir
    unknown = "0" * 64
    err = rejected(ctx, payload(kind="samples", forget={"sample_ids": [ids[1], ids[2], unknown]}))
    assert err.field == "forget.sample_ids[2]" and "not in the dataset manifest" in err.reason
    err = rejected(ctx, payload(kind="samples", forget={"sample_ids": [ids[1], ids[0]]}))
    assert err.field == "forget.sample_ids[1]" and "already deleted" in err.reason
    err = rejected(ctx, payload(kind="samples", forget={"sample_ids": [ids[1], ids[3], ids[1]]}))
    assert err.field == "forget.sample_ids[2]" and "duplicate" in err.reason


def test_oversize_payload(ctx, data_dir):
    _, ids = data_dir
    big = payload(kind="samples", forget={"sample_ids": [ids[1]] * 1000})  # ~70 KB of ids
    err = rejected(ctx, big)
    assert err.field == "payload" and "exceeds" in err.reason
    # an image smuggled in as a string is both oversize and an unknown field
    assert rejected(ctx, payload(image="A" * 70_000)).field == "payload"
    assert rejected(ctx, payload(image="A" * 700)).field == "image"


@pytest.mark.parametrize("ref", [
    "../outside", "class3/../../etc", "/etc/passwd", "s3://other-bucket/subs/", f"s3://{BUCKET}/",
    f"s3://{BUCKET}/a/../../x", "http://example.com/x", "missing-dir", "escape-link",
])
def test_substitute_outside_root_or_bucket(ctx, tmp_path, ref):
    (ctx.substitute_root / "escape-link").symlink_to(tmp_path)  # inside-looking, points outside
    assert rejected(ctx, payload(substitute=ref)).field == "substitute"


def test_substitute_inside_root(ctx):
    absolute = str(ctx.substitute_root / "class3")
    assert parse_request(payload(substitute=absolute), ctx).substitute == absolute
    (ctx.substitute_root / "inner-link").symlink_to(ctx.substitute_root / "class3")
    assert parse_request(payload(substitute="inner-link"), ctx).substitute == "inner-link"


def test_deadline_explicit_and_utc(ctx):
    req = parse_request(payload(submitted_at="2026-11-24T10:00:00+02:00",
                                deadline="2026-12-01T00:00:00Z"), ctx)
    assert req.submitted_at == datetime(2026, 11, 24, 8, tzinfo=timezone.utc)
    assert req.submitted_at.utcoffset() == timedelta(0)
    assert req.deadline == datetime(2026, 12, 1, tzinfo=timezone.utc)
