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
