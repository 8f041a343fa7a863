"""Retention of superseded model versions: erase their bytes once the grace period ends.

Promoting a version deregisters every older one of the model at once (GTO deprecation, see
``RegistryWorkspace.promote``): each was trained on data a later deletion removed, and the registry
refuses to promote it again (``Superseded``). Their bytes stay pullable for
``retention.superseded_models_days`` (params.yaml), then this module erases them from the bucket
and the registry's DVC cache, commits a signed erasure record (``erasures/<name>/v<N>.json``) and
appends a signed entry to the audit trail of every receipt that named the version.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.receipts import append_audit
from adapters.signing import ReceiptSigner
from unlearn_core.errors import InputError
from unlearn_core.receipts import now_iso, read_receipts


class RetentionParams(BaseModel):
    """``retention:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid")
    superseded_models_days: float = Field(30, ge=0)
    schedule_hours: float = Field(24, gt=0)


def retention_params(params) -> RetentionParams:
    try:
        return RetentionParams.model_validate((params.model_extra or {}).get("retention") or {})
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: retention.") from None


def erasure_rel(model_name: str, number: int) -> str:
    return f"erasures/{model_name}/v{number}.json"


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds")


def erase_expired_models(rt, now: float | None = None) -> list[dict]:
    """Erase every deprecated model version whose grace period has ended; returns the erasure records."""
    now = time.time() if now is None else now
    grace_s = retention_params(rt.params).superseded_models_days * 86400
    signer = ReceiptSigner.for_state(rt.state_dir)
    records = []
    for name in rt.models:
        prod = rt.registry.prod(name)
        for version, deprecated in sorted(rt.registry.deprecated_at(name).items()):
            number = int(version.rsplit(".", 1)[1])
            if (rt.registry.path / erasure_rel(name, number)).exists() or now - deprecated < grace_s:
                continue
            md5 = rt.registry.version(name, number).model_md5
            erased = rt.registry.erase_model_objects(name, number)
            record = signer.sign({
                "event": "model_erased", "model": name, "version": version, "model_md5": md5,
                "erased_objects": erased, "deprecated_at": _iso(deprecated), "at": now_iso(),
                "retention_days": grace_s / 86400, "superseded_by": prod.semver if prod else None,
                "summary": f"{name} {version} erased {grace_s / 86400:g} days after "
                           f"{prod.semver if prod else 'a later version'} superseded it"})
            rt.registry.commit_file(erasure_rel(name, number), json.dumps(record, indent=2, sort_keys=True) + "\n",
                                    f"retention: erase {name} {version} {record['content_hash']}")
            for receipt in read_receipts(rt.receipts_dir):
                if receipt.get("model") == name and version in (receipt.get("new_version"),
                                                                receipt.get("prod_version")):
                    append_audit(rt, receipt["request_id"], "model_erased", record["summary"],
                                 {"model": name, "version": version, "erasure": erasure_rel(name, number),
                                  "erasure_hash": record["content_hash"]})
            records.append(record)
    return records
