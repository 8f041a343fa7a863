"""Prefect task of the ``retention`` flow (retried: the bucket may be briefly unreachable)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.retention import erase_expired_models
from adapters.runtime import Runtime


@task(name="erase-expired-models", retries=3, retry_delay_seconds=[5, 30, 120], cache_policy=NO_CACHE)
def erase_expired_models_task(rt: Runtime, now: float | None = None) -> list[dict]:
    return erase_expired_models(rt, now)
