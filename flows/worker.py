"""Warm workers: Prefect task workers that keep torch, GX and the pipeline loaded between requests.

Prefect's ``serve()`` runners and process workers start a fresh Python process
for every flow run and pay the imports each time (seconds). A task worker
(``prefect.task_worker.serve``) is one long-lived process subscribed to the
Prefect server; ``process_request_task.delay(...)`` (sent by ``unlearn submit``'s
notifier) reaches it in a fraction of a second, and it runs the
``process-request`` flow in-process. Several workers, on one machine or many,
share the runs; the queue's per-model leases keep one writer per model.
"""
from __future__ import annotations

from adapters.runtime import Runtime


def run_worker(state_dir: str, limit: int = 2) -> None:
    """Serve ``process_request_task`` until interrupted (``unlearn worker``)."""
    from prefect.task_worker import serve

    from importlib import import_module

    from adapters.validation import gx_context
    from flows.warm import process_request_task
    from tasks.pipeline import ensure_gpu_limit

    rt = Runtime.from_env(state_dir)
    rt.require_initialised()
    ensure_gpu_limit()
    import_module("flows.process_request")  # torch, the methods, the registry: imported once, up front
    gx_context()  # and the GX context built once, not on the first request
    serve(process_request_task, limit=limit)
