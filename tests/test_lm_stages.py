"""The language model's DVC stages (`unlearn lm corpus|train|evaluate`): same inputs, same bytes."""
from __future__ import annotations

import csv
import hashlib
import json

import pytest
import yaml

from flows.cli import main

TINY = {"lm_corpus": {"n_authors": 3}, "lm_train": {"n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 3},
        "lm_gates": {"probe_authors": 2, "utility_rows": 20}}


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def params(tmp_path):
    raw = yaml.safe_load(open("params.yaml"))
    for section, values in TINY.items():
        raw[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_stages_repeat_their_bytes_and_write_metrics(params, tmp_path, capsys):
    for run in ("a", "b"):
        assert main(["lm", "corpus", "--params", str(params), "--out", str(tmp_path / run / "corpus")]) == 0
        assert main(["lm", "train", "--corpus", str(tmp_path / run / "corpus"), "--params", str(params),
                     "--model", str(tmp_path / run / "lm.pt")]) == 0
    shards = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").glob("corpus/**/*") if p.is_file())
    assert shards and all(md5(tmp_path / "a" / p) == md5(tmp_path / "b" / p) for p in shards)
    assert md5(tmp_path / "a" / "lm.pt") == md5(tmp_path / "b" / "lm.pt")

    metrics, per_attribute = tmp_path / "lm.json", tmp_path / "per_attribute.csv"
    assert main(["lm", "evaluate", "--corpus", str(tmp_path / "a" / "corpus"), "--model", str(tmp_path / "a" / "lm.pt"),
                 "--params", str(params), "--metrics", str(metrics), "--per-attribute", str(per_attribute)]) == 0
    m = json.loads(metrics.read_text())
    assert m["n_rows"] == 3 * 20 + 16 + 20 and 0 <= m["train_fact_em"] <= 1 and 0 < m["model_utility"] <= 1
    rows = list(csv.DictReader(per_attribute.open()))
    assert len(rows) == 20 and {r["attribute"] for r in rows} >= {"birthplace", "genre", "award"}


def test_bad_stage_params_name_the_field(params, tmp_path, capsys):
    raw = yaml.safe_load(params.read_text())
    raw["lm_train"]["n_head"] = 5  # 32 is not divisible by 5
    params.write_text(yaml.safe_dump(raw))
    main(["lm", "corpus", "--params", str(params), "--out", str(tmp_path / "corpus")])
    assert main(["lm", "train", "--corpus", str(tmp_path / "corpus"), "--params", str(params),
                 "--model", str(tmp_path / "lm.pt")]) == 2
    assert "lm_train.n_head" in capsys.readouterr().err
    raw["lm_train"]["epochs"] = "many"
    params.write_text(yaml.safe_dump(raw))
    assert main(["lm", "train", "--corpus", str(tmp_path / "corpus"), "--params", str(params),
                 "--model", str(tmp_path / "lm.pt")]) == 2
    assert "params.yaml: lm_train.epochs" in capsys.readouterr().err
    assert not (tmp_path / "lm.pt").exists()
