"""``retention``: the scheduled flow that erases model versions superseded by a deletion.

GTO deprecates a superseded version the moment a later version is promoted; this flow erases
its bytes (bucket + DVC cache) once ``retention.superseded_models_days`` have passed and records
the erasure in the registry and in the audit trail of the receipts that named the version.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from adapters.runtime import Runtime
from tasks.retention import erase_expired_models_task


@flow(name="retention", log_prints=False)
def retention(state_dir: str | None = None, now: float | None = None) -> list[str]:
    """Erase expired superseded model versions; returns ``name version`` of each erased one."""
    rt = Runtime.from_env(state_dir)
    rt.require_initialised()
    erased = [f"{r['model']} {r['version']}" for r in erase_expired_models_task(rt, now)]
    get_run_logger().info("retention erased %d model version(s): %s", len(erased), ", ".join(erased) or "-")
    return erased
