"""GX suites: clean data passes, each expectation fails on data built to violate it
and the report names it; reports are JSON-able and hold ids, never pixels."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from adapters import validation as v
from unlearn_core.config import parse_params
from unlearn_core.errors import InputError


@pytest.fixture(scope="module")
def train_rows(mnist):
    tr = mnist.train
    return pd.DataFrame({"sample_id": tr.ids, "label": tr.y.numpy(), "split": "train",
                         "subject_id": tr.subjects})


@pytest.fixture(scope="module")
def class3(train_rows):
    return train_rows[train_rows.label == 3].reset_index(drop=True)


@pytest.fixture(scope="module")
def substitutes(mnist):
    """Test-split digits of class 3: real images the model never trained on."""
    te = mnist.test
    images = (te.x[te.y == 3].numpy() * 255).round().astype(np.uint8)
    return images, np.full(len(images), 3)


def _forget(mnist, rows, kind="class", tombstoned=()):
    return v.validate_forget_set(rows, mnist.all_ids(), set(tombstoned), mnist.num_classes, kind,
                                 train_size=len(mnist.train))


def _substitute(mnist, images, labels, shape=(1, 28, 28), min_rows=1, max_rows=5000):
    return v.validate_substitute(images, labels, shape, mnist.num_classes, 3, set(mnist.train.ids),
                                 min_rows, max_rows)


def _failing(report) -> set[tuple[str, str | None]]:
    return {(r["expectation"], r["column"]) for r in report.results if not r["success"]}


def _assert_no_pixels(report, images) -> None:
    text = json.dumps(report.to_dict())  # raises if not JSON-serialisable
    assert images[0].tobytes().hex()[:64] not in text

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            assert len(node) <= 10, f"long list in a report: {node[:12]}"
            for value in node:
                walk(value)
    walk(report.to_dict())


# ---------------------------------------------------------------- forget set

def test_clean_forget_sets_pass(mnist, train_rows, class3):
    assert _forget(mnist, class3).success
    subject = train_rows[train_rows.subject_id == train_rows.subject_id.iloc[0]]
    assert len(subject) >= 1
    report = _forget(mnist, subject, kind="subject")
    assert report.success and report.failed() == ""
    assert _forget(mnist, train_rows.iloc[[0, 7, 11]], kind="samples").success
    assert report.suite == "forget_set.subject"


def _with(rows, index, column, value):
    rows = rows.copy()
    rows.loc[index, column] = value
    return rows


@pytest.mark.parametrize("case, expectation, column", [
    ("unknown_id", "expect_column_values_to_be_in_set", "in_manifest"),
    ("tombstoned", "expect_column_values_to_be_in_set", "tombstoned"),
    ("label_range", "expect_column_values_to_be_in_set", "label"),
    ("duplicate", "expect_column_values_to_be_unique", "sample_id"),
    ("test_split", "expect_column_values_to_be_in_set", "split"),
    ("two_classes", "expect_column_unique_value_count_to_be_between", "label"),
])
def test_each_forget_expectation_fails_on_its_violation(mnist, class3, train_rows, case, expectation, column):
    bad_id = "f" * 64
    rows, tombstoned = class3, ()
    if case == "unknown_id":
        rows = _with(class3, 0, "sample_id", bad_id)
    elif case == "tombstoned":
        tombstoned = {class3.sample_id[1]}
    elif case == "label_range":
        rows = _with(class3, 2, "label", mnist.num_classes)
    elif case == "duplicate":
        rows = pd.concat([class3, class3.iloc[[3]]], ignore_index=True)
    elif case == "test_split":
        rows = _with(class3, 4, "split", "test")
    elif case == "two_classes":
        rows = pd.concat([class3, train_rows[train_rows.label == 5].iloc[:1]], ignore_index=True)
    report = _forget(mnist, rows, tombstoned=tombstoned)
    assert not report.success
    assert (expectation, column) in _failing(report)
    assert f"{expectation}({column})" in report.failed()
    failing = next(r for r in report.results if (r["expectation"], r["column"]) == (expectation, column))
    if "unexpected_ids" in failing:
        assert failing["unexpected_count"] >= 1 and failing["unexpected_ids"]
        assert all(len(i) == 64 for i in failing["unexpected_ids"])
    if case == "unknown_id":
        assert failing["unexpected_ids"] == [bad_id]
    if case == "label_range":
        assert failing["unexpected_values"] == [mnist.num_classes]


def test_forget_row_count_bounds(mnist, train_rows, class3):
    empty = _forget(mnist, class3.iloc[:0])
    whole = _forget(mnist, train_rows, kind="samples")
    for report, observed in ((empty, 0), (whole, len(train_rows))):
        entry = next(r for r in report.results if r["expectation"] == "expect_table_row_count_to_be_between")
        assert not entry["success"] and entry["observed_value"] == observed
        assert "expect_table_row_count_to_be_between" in report.failed()


def test_subject_kind_needs_one_named_subject(mnist, train_rows):
    two = train_rows[train_rows.subject_id.isin(train_rows.subject_id.unique()[:2])]
    assert ("expect_column_unique_value_count_to_be_between", "subject_id") in _failing(
        _forget(mnist, two, kind="subject"))
    blank = _with(train_rows.iloc[:3].reset_index(drop=True), slice(None), "subject_id", "")
    assert ("expect_column_values_to_not_be_null", "subject_id") in _failing(_forget(mnist, blank, kind="subject"))


def test_forget_set_bad_arguments_name_the_field(mnist, class3):
    with pytest.raises(InputError) as err:
        _forget(mnist, class3, kind="everything")
    assert err.value.field == "kind"
    with pytest.raises(InputError) as err:
        _forget(mnist, class3.drop(columns=["split"]))
    assert err.value.field == "rows" and "split" in err.value.reason


# ---------------------------------------------------------------- substitute

def test_clean_substitutes_pass(mnist, substitutes):
    images, labels = substitutes
    labelled = _substitute(mnist, images, labels)
    unlabelled = _substitute(mnist, images, None)
    assert labelled.success and unlabelled.success, labelled.failed() + unlabelled.failed()
    _assert_no_pixels(labelled, images)
    rows = next(r for r in labelled.results if r["expectation"] == "expect_table_row_count_to_be_between")
    assert rows["observed_value"] == len(images)


def test_overlap_with_training_is_caught_by_content(mnist, substitutes):
    images, labels = substitutes
    tr = mnist.train
    leaked_index = np.flatnonzero(tr.y.numpy() == 3)[:2]
    leaked = (tr.x[leaked_index].numpy() * 255).round().astype(np.uint8)
    report = _substitute(mnist, np.concatenate([images, leaked]), np.concatenate([labels, [3, 3]]))
    assert _failing(report) == {("expect_column_values_to_be_in_set", "in_train")}
    entry = next(r for r in report.results if r["column"] == "in_train")
    assert entry["unexpected_count"] == 2
    assert set(entry["unexpected_ids"]) == set(tr.ids[leaked_index])
    _assert_no_pixels(report, leaked)


@pytest.mark.parametrize("case, expectation, column", [
    ("channels", "expect_column_values_to_be_in_set", "channels"),
    ("height", "expect_column_values_to_be_in_set", "height"),
    ("dtype", "expect_column_values_to_be_in_set", "dtype"),
    ("negative", "expect_column_values_to_be_between", "min_pixel"),
    ("too_bright", "expect_column_values_to_be_between", "max_pixel"),
    ("labels", "expect_column_values_to_be_in_set", "label"),
    ("too_few", "expect_table_row_count_to_be_between", None),
    ("too_many", "expect_table_row_count_to_be_between", None),
    ("duplicates", "expect_column_values_to_be_unique", "sha256"),
])
def test_each_substitute_expectation_fails_on_its_violation(mnist, substitutes, case, expectation, column):
    images, labels = substitutes[0][:20], substitutes[1][:20]
    shape, min_rows, max_rows = (1, 28, 28), 1, 5000
    if case == "channels":
        shape = (3, 28, 28)
    elif case == "height":
        images = images[:, :, :27]
    elif case == "dtype":
        images = images.astype(np.float32) / 255
    elif case == "negative":
        images = images.astype(np.int16) - 1
    elif case == "too_bright":
        images = images.astype(np.int16) + 1
    elif case == "labels":
        labels = labels.copy()
        labels[5] = 4
    elif case == "too_few":
        min_rows = 21
    elif case == "too_many":
        max_rows = 19
    elif case == "duplicates":
        images, labels = np.concatenate([images, images[:1]]), np.concatenate([labels, labels[:1]])
    report = _substitute(mnist, images, labels, shape, min_rows, max_rows)
    assert not report.success
    assert (expectation, column) in _failing(report)
    assert expectation + (f"({column})" if column else "") in report.failed()
    _assert_no_pixels(report, images)
    if case == "labels":
        entry = next(r for r in report.results if r["column"] == "label")
        assert entry["unexpected_values"] == [4] and entry["unexpected_count"] == 1


def test_substitute_bad_arrays_raise_input_error(mnist, substitutes):
    images, labels = substitutes
    for bad_images, bad_labels in ((images[:, 0], labels), (images, labels[:-1])):
        with pytest.raises(InputError) as err:
            _substitute(mnist, bad_images, bad_labels)
        assert err.value.field == "substitute"


# ---------------------------------------------------------------- request

def _request(**changes):
    from unlearn_core.requests import DeletionRequest

    req = DeletionRequest.model_validate({"subject_id": "subject-0001", "kind": "class", "model": "mnist-cnn",
                                          "forget": {"class": 3}})
    return {**req.model_dump(by_alias=True), **changes}


def test_request_suite(mnist):
    from unlearn_core.requests import DeletionRequest

    assert v.validate_request(_request()).success
    model = DeletionRequest.model_validate({"subject_id": "s-1", "kind": "subject", "model": "mnist-cnn",
                                            "forget": {"subject": "s-1"}})
    assert v.validate_request(model).success
    now = datetime.now(timezone.utc)
    cases = {
        ("expect_column_values_to_be_in_set", "kind"): {"kind": "everything"},
        ("expect_column_values_to_not_be_null", "kind"): {"kind": None},
        ("expect_column_values_to_not_be_null", "model"): {"model": None},
        ("expect_column_pair_values_a_to_be_greater_than_b", "deadline_ts,submitted_at_ts"):
            {"submitted_at": now, "deadline": (now - timedelta(days=1)).isoformat()},
        ("expect_column_values_to_not_be_null", "deadline_ts"): {"deadline": "not a date"},
    }
    for key, change in cases.items():
        report = v.validate_request(_request(**change))
        assert not report.success and key in _failing(report), (key, report.failed())
        assert report.failed().startswith("request: ")
        json.dumps(report.to_dict())


# ---------------------------------------------------------------- context, params

def test_one_cached_context_per_process(mnist, class3):
    ctx = v.gx_context()
    _forget(mnist, class3)
    assert v.gx_context() is ctx
    assert ctx.variables.analytics_enabled is False


def test_validation_params_section():
    vp = v.validation_params(parse_params({"validation": {"substitute_max_rows": 10, "report_max_ids": 2}}))
    assert vp.substitute_max_rows == 10 and vp.report_max_ids == 2
    with pytest.raises(InputError) as err:
        v.validation_params(parse_params({"validation": {"substitute_max_rows": 0}}))
    assert err.value.field == "params.yaml: validation.substitute_max_rows"
    with pytest.raises(InputError):
        v.validation_params(parse_params({"validation": {"substitute_min_rows": 9, "substitute_max_rows": 3}}))


def test_concurrent_validations_keep_their_own_data(mnist, class3, substitutes):
    """Prefect may run tasks in threads: each call must see its own frame and parameters."""
    from concurrent.futures import ThreadPoolExecutor

    images, labels = substitutes
    tombstoned = {class3.sample_id[0]}
    calls = [lambda: _forget(mnist, class3), lambda: _forget(mnist, class3, tombstoned=tombstoned),
             lambda: _substitute(mnist, images, labels), lambda: _substitute(mnist, images, labels, max_rows=3)] * 2
    with ThreadPoolExecutor(4) as pool:
        outcomes = [f.result().success for f in [pool.submit(c) for c in calls]]
    assert outcomes == [True, False, True, False] * 2
