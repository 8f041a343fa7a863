"""A language-model deletion through the flow: GX on corpus rows, LM method, LM gates, DVC version, receipt."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from flows.process_request import process_request
from signed import submit_signed
from unlearn_core.errors import InputError
from unlearn_core.lm.corpus import load_corpus

TINY_LM = {"lm_corpus": {"n_authors": 4},
           "lm_train": {"n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 15},
           "simnpo": {"epochs": 5},
           # a 15-epoch toy model knows few facts; this test is about routing, versioning and erasure
           "lm_gates": {"max_fact_em_gap": 1.0, "min_utility_ratio": 0.3, "probe_authors": 2, "utility_rows": 20}}


@pytest.fixture(scope="module")
def lm_pipeline(tmp_path_factory, s3, prefect_api, pipeline_template):
    """A state serving only tofu-gpt2 (a 1-layer GPT-2 on 4 authors), built once for this module."""
    from flows.setup import init_pipeline

    root = tmp_path_factory.mktemp("lm-pipeline")
    params = yaml.safe_load((pipeline_template / "params.yaml").read_text())
    for section, values in TINY_LM.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return init_pipeline(root / "state", root / "params.yaml", models=["tofu-gpt2"], progress=lambda *_: None)


def corpus(rt):
    return load_corpus(rt.registry.data_dir() / "corpus")


def tracked_text(rt) -> str:
    """Everything git tracks in the registry, at every commit (lineage, receipts, .dvc files)."""
    log = subprocess.run(["git", "log", "-p", "--all"], cwd=rt.registry.path, capture_output=True, text=True)
    return log.stdout


def test_subject_deletion_forgets_the_author_and_erases_their_rows(lm_pipeline):
    rt = lm_pipeline
    before = corpus(rt)
    author = before.subjects()[1]
    rows = before.rows_of([author])
    name = rows[0].question.split("born")[0].replace("Where was", "").strip()
    payload = {"subject_id": author, "kind": "subject", "model": "tofu-gpt2", "forget": {"subject": author}}
    request_id, _ = submit_signed(rt, json.dumps(payload).encode())
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    receipt_text = (rt.receipts_dir / f"{request_id}.json").read_text()
    receipt = json.loads(receipt_text)
    assert outcome["status"] == "done", [(a["method"], a["gates"]) for a in receipt["attempts"]]
    assert receipt["attempts"][0]["method"] == "simnpo"  # auto for LM subjects (docs/bench/llm.md)
    assert receipt["metrics_after"]["forget_prob"] < receipt["metrics_before"]["forget_prob"]
    assert all(r["success"] for r in receipt["validation"])
    assert sorted(receipt["deleted_sample_ids"]) == sorted(r.qa_id for r in rows)

    prod = rt.registry.prod("tofu-gpt2")
    assert prod.semver == "v0.0.2" and prod.lineage["family"] == "lm" and prod.lineage["gates"]["passed"]
    after = corpus(rt)
    assert author not in after.subjects() and not {r.qa_id for r in rows} & after.all_ids()
    assert {r.qa_id for r in rows} <= after.tombstoned
    assert len(after.rows) == len(before.rows) - len(rows)
    stored = "".join(p.read_text() for p in (rt.registry.data_dir() / "corpus").glob("shards/*/rows.jsonl"))
    assert name not in stored and all(r.answer not in stored for r in rows)
    # the author's words never reach the receipt, the registry's history or the model's tokenizer
    assert name not in receipt_text and all(r.answer not in receipt_text for r in rows)
    assert name not in tracked_text(rt)
    model = rt.family("tofu-gpt2").load(rt.registry.model_path("tofu-gpt2", prod))
    assert not any(part in model.tokenizer.get_vocab() for part in name.split())
    # the work directory (the forget rows' copies) is gone
    assert not rt.work_dir(request_id).exists()


def test_lm_receipt_verifies_from_a_fresh_clone(lm_pipeline, capsys):
    from flows.cli import main

    rt = lm_pipeline
    receipts = [json.loads(p.read_text()) for p in rt.receipts_dir.glob("*.json")]
    request_id = next(r["request_id"] for r in receipts if r["kind"] == "subject" and r["status"] == "done")
    assert main(["verify", request_id, "--registry", str(rt.registry_dir), "--state-dir", str(rt.state_dir)]) == 0
    out = capsys.readouterr().out
    assert "20 ids tombstoned and absent" in out


def test_samples_deletion_removes_just_those_rows(lm_pipeline):
    rt = lm_pipeline
    before = corpus(rt)
    doomed = [r.qa_id for r in before.of_set("authors")[:2]]
    payload = {"subject_id": "user-9", "kind": "samples", "model": "tofu-gpt2", "forget": {"sample_ids": doomed}}
    request_id, _ = submit_signed(rt, json.dumps(payload).encode())
    outcome = process_request(request_id=request_id, state_dir=str(rt.state_dir))
    assert outcome["status"] == "done"
    after = corpus(rt)
    assert after.all_ids() == before.all_ids() - set(doomed)


@pytest.mark.parametrize("body,field", [
    ({"kind": "class", "forget": {"class": 1}}, "kind"),
    ({"kind": "samples", "forget": {"sample_ids": ["0" * 64]}}, "forget.sample_ids[0]"),
    ({"kind": "subject", "forget": {"subject": "author-9999"}}, "forget.subject"),
])
def test_bad_lm_requests_are_refused_at_submit_and_enqueue_nothing(lm_pipeline, body, field):
    rt = lm_pipeline
    counts = rt.queue.counts()
    with pytest.raises(InputError) as err:
        submit_signed(rt, json.dumps({"subject_id": "s", "model": "tofu-gpt2", **body}).encode())
    assert err.value.field == field
    assert rt.queue.counts() == counts
