"""Where receipts go: signed, written to the state dir and committed to the registry.

Each receipt (done, rejected or failed) is signed (adapters/signing.py), written as
``<state>/receipts/<request_id>.json`` + ``.md`` and committed as ``receipts/<request_id>.json``
in the registry workspace, so the JSON, its markdown and git carry one content hash and a clone
of the registry alone can check it (``unlearn verify``). Later events (retention's erasure of
the version's model bytes) are appended to the receipt's ``audit`` trail as signed entries,
leaving the receipt's own hash and signature as they were.
"""
from __future__ import annotations

import json

from adapters.registry import RegistryWorkspace
from adapters.signing import PUBLIC_KEY_REL, ReceiptSigner, SignatureError, content_hash
from unlearn_core.receipts import Receipt, now_iso, receipt_json, write_receipt

RECEIPTS_REL = "receipts"


def receipt_rel(request_id: str) -> str:
    return f"{RECEIPTS_REL}/{request_id}.json"


def publish_public_key(registry: RegistryWorkspace, signer: ReceiptSigner) -> None:
    """Commit the signer's public key as ``keys/receipts.pub``; refuse a different key already there."""
    path = registry.path / PUBLIC_KEY_REL
    if path.exists() and path.read_text() != signer.public_pem:
        raise SignatureError(f"{path} holds another public key than the state dir's signing key "
                             f"(key id {signer.key_id}); receipts signed now could not be verified")
    registry.commit_file(PUBLIC_KEY_REL, signer.public_pem, f"receipt signing key {signer.key_id}")


def record_receipt(rt, receipt: Receipt) -> dict[str, str]:
    """Sign ``receipt``, write it under ``rt.receipts_dir`` and commit it to the registry.
    Returns the paths written (``json``, ``markdown``) and the ``content_hash``."""
    signer = ReceiptSigner.for_state(rt.state_dir)
    signed = signer.sign(receipt.to_dict())
    return _store(rt, signer, signed, f"receipt {receipt.request_id}: {receipt.status}"
                  f"{' ' + receipt.model + ' ' + receipt.new_version if receipt.new_version else ''} "
                  f"{signed['content_hash']}")


def append_audit(rt, request_id: str, event: str, summary: str, details: dict) -> dict:
    """Add a signed entry to a receipt's audit trail (state dir and registry copies); returns it."""
    signer = ReceiptSigner.for_state(rt.state_dir)
    path = rt.receipts_dir / f"{request_id}.json"
    receipt = json.loads(path.read_text())
    entry = signer.sign({"event": event, "summary": summary, "at": now_iso(),
                         "receipt_hash": receipt["content_hash"], **details})
    receipt["audit"] = [*(receipt.get("audit") or []), entry]
    _store(rt, signer, receipt, f"receipt {request_id}: audit {event} {entry['content_hash']}")
    return entry


def _store(rt, signer: ReceiptSigner, signed: dict, message: str) -> dict[str, str]:
    if signed.get("content_hash") != content_hash(signed):
        raise SignatureError("refusing to store a receipt whose content no longer matches its hash")
    paths = write_receipt(signed, rt.receipts_dir)
    publish_public_key(rt.registry, signer)
    rt.registry.commit_file(receipt_rel(signed["request_id"]), receipt_json(signed), message)
    return {**paths, "content_hash": signed["content_hash"]}
