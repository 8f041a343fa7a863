"""``unlearn demo``: the whole product on one laptop, from a fresh state.

1. start the embedded S3 server, build MNIST-5k, train the base CNN, register it as prod;
2. register two governance submitters (private keys in a temporary directory, never in the state);
   one signs a class deletion (digit 3, zero-shot LRA-NPP with held-out substitute digits), which is
   held for approval and approved by the other, and a subject deletion (all samples of one data subject);
3. process both through the ``process-request`` flow (Prefect ephemeral API);
4. print the receipts and where the versions live; stop the S3 server (state kept).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

DEMO_CLASS = 3


def run_demo(state_dir: str | None, params_path: str) -> int:
    started = time.perf_counter()
    state = Path(state_dir).expanduser().resolve() if state_dir else Path(tempfile.mkdtemp(prefix="unlearnops-demo-"))
    state.mkdir(parents=True, exist_ok=True)  # Prefect's database goes in it: the server exits if it cannot write
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect-home"))  # keep Prefect's files with the demo
    from adapters.services import TemporaryPrefectApi

    with TemporaryPrefectApi(state):  # before Prefect is imported: its settings are read once
        return _run(state, params_path, started)


def _run(state: Path, params_path: str, started: float) -> int:
    import numpy as np

    import uuid

    from adapters.services import EmbeddedS3
    from adapters.submitters import Identity
    from flows.approval import decide
    from flows.process_request import process_request
    from flows.setup import init_pipeline
    from flows.submit import submit_payload
    from unlearn_core.data import load_dataset
    from unlearn_core.receipts import render_markdown

    print(f"== UnlearnOps demo, state in {state}")
    rt = init_pipeline(state, params_path, models=["mnist-cnn"])
    try:
        ds = load_dataset(rt.registry.data_dir())
        held_out = (ds.test.x[ds.test.y == DEMO_CLASS] * 255).round().byte().numpy()
        np.savez(rt.substitute_root / f"digit{DEMO_CLASS}.npz", images=held_out,
                 labels=np.full(len(held_out), DEMO_CLASS))
        subject = str(ds.train.subjects[0])
        requests = [
            {"subject_id": "ml-governance", "kind": "class", "model": "mnist-cnn",
             "forget": {"class": DEMO_CLASS}, "substitute": f"digit{DEMO_CLASS}.npz"},
            {"subject_id": subject, "kind": "subject", "model": "mnist-cnn", "forget": {"subject": subject}},
        ]
        keys = tempfile.mkdtemp(prefix="unlearnops-demo-keys-")
        tag = uuid.uuid4().hex[:6]  # submitter names are never reused, and a rerun on this state adds new ones
        submitter = Identity.create(state, f"demo-governance-{tag}", "governance", keys)
        approver = Identity.create(state, f"demo-approver-{tag}", "governance", keys)
        print(f"== submitters {submitter.name} and {approver.name} (governance); private keys in {keys}")
        for payload in requests:
            request_id, _ = submit_payload(rt, submitter.sign(payload), notify=False)
            held = rt.queue.status(request_id)
            if held["state"] == "awaiting_approval":
                print(f"== {payload['kind']} deletion {request_id} held: {held['details']['hold']['reason']}")
                print(f"   {decide(rt, request_id, approver.name, True, 'demo: approved by a second person')}")
            print(f"== submitted {payload['kind']} deletion {request_id}; processing ...")
            outcome = process_request(request_id=request_id, state_dir=str(state))
            receipt = json.loads((rt.receipts_dir / f"{request_id}.json").read_text())
            print(render_markdown(receipt))
            print(f"   -> {outcome}")
        print("== model versions (GTO stages, lineage):")
        for v in rt.registry.versions("mnist-cnn"):
            print(f"   mnist-cnn {v.semver} stages={','.join(v.stages) or '-'} method={v.lineage.get('method')} "
                  f"deleted={len(v.lineage.get('deleted_sample_ids') or [])} model_md5={v.model_md5}")
        print(f"== registry workspace (git + DVC): {rt.registry.path}")
        print(f"== DVC remote: s3://{rt.s3.bucket}/ at {rt.s3.endpoint_url}; receipts: {rt.receipts_dir}")
    finally:
        EmbeddedS3(state).stop()
    print(f"== demo finished in {time.perf_counter() - started:.1f} s; S3 stopped "
          f"(`unlearn up --state-dir {state}` restarts it)")
    return 0
