"""params.yaml is the single source of settings: every section must validate against its consumer."""
from __future__ import annotations

from pathlib import Path

import pytest

from unlearn_core.config import load_params, method_config, parse_params
from unlearn_core.errors import InputError
from unlearn_core.gates import gates_params, thresholds_for
from unlearn_core.methods import METHODS, get_method

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_section_and_retry_validates(method):
    config = method_config(PARAMS, method) if method not in ("retrain", "retrain_gan") else {}
    get_method(method)(None, config, "cpu")
    stronger = gates_params(PARAMS).retry.get(method)
    if stronger:
        get_method(method)(None, {**config, **stronger}, "cpu")


def test_gate_overrides_name_known_methods_and_fields():
    gp = gates_params(PARAMS)
    assert set(gp.per_method) <= set(METHODS) and set(gp.retry) <= set(METHODS)
    for method in gp.per_method:
        thresholds_for(gp, method)


def test_a_wrong_gate_value_names_the_field():
    with pytest.raises(InputError, match="gates.default.max_ra_drop"):
        gates_params(parse_params({"gates": {"default": {"max_ra_drop": "lots"}}}))


def test_retention_and_verify_sections_validate_and_name_a_wrong_field():
    from adapters.retention import retention_params
    from adapters.verification import verify_params

    assert retention_params(PARAMS).superseded_models_days == 30
    assert verify_params(PARAMS).metric_tolerance == 0.005
    with pytest.raises(InputError, match="retention.superseded_models_days"):
        retention_params(parse_params({"retention": {"superseded_models_days": -1}}))
    with pytest.raises(InputError, match="verify.metric_tolerance"):
        verify_params(parse_params({"verify": {"metric_tolerance": "close"}}))
