"""``unlearn deploy`` and ``unlearn worker --pool``: the deployments of ``prefect.yaml`` on a work pool.

A work pool is Prefect's own way to run flows on other machines: each machine runs a worker
(``prefect worker start``) that polls the pool and starts flow runs from this checkout. Process pools
run them as local processes; a Kubernetes pool (``infra/k8s/``) as Jobs on GPU nodes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from adapters.runtime import Runtime
from unlearn_core.errors import InputError

PROJECT_DIR = Path(__file__).resolve().parents[1]
POOL = "unlearnops"
WORKER_POLL_S = "2"  # Prefect's default is 10 s between a worker's queries for scheduled runs


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def deploy(rt: Runtime, pool: str = POOL) -> None:
    """Create the work pool (process type) if missing and apply every deployment of ``prefect.yaml``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from tasks.pipeline import ensure_gpu_limit

    rt.require_initialised()
    if not (PROJECT_DIR / "prefect.yaml").is_file():
        raise InputError("prefect.yaml", f"not found in {PROJECT_DIR}")
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
    ensure_gpu_limit()
    env = {**os.environ, "UNLEARNOPS_PROJECT_DIR": str(PROJECT_DIR), "UNLEARNOPS_WORK_POOL": pool}
    cmd = [_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"]
    proc = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"prefect deploy failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")


def run_pool_worker(rt: Runtime, pool: str = POOL, limit: int | None = None) -> NoReturn:
    """A process worker for ``pool``: starts each flow run as a fresh process with the state dir set, at most
    ``limit`` at once (Prefect's ``--limit``; None: no limit), so a machine takes no more runs than it can carry."""
    rt.require_initialised()
    if limit is not None and limit < 1:
        raise InputError("--limit", "must be >= 1")
    env = {**os.environ, "UNLEARNOPS_STATE_DIR": str(rt.state_dir), "UNLEARNOPS_PROJECT_DIR": str(PROJECT_DIR)}
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", WORKER_POLL_S)
    cmd = [_prefect(), "worker", "start", "--pool", pool, "--type", "process"]
    # exec, not a child: a signal sent to `unlearn worker --pool` then reaches Prefect's worker itself,
    # which would otherwise outlive a terminated parent and keep polling
    os.execve(cmd[0], cmd + (["--limit", str(limit)] if limit is not None else []), env)
