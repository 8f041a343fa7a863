"""Signed submissions for tests: a governance submitter per state dir, its key kept outside the state.

``submit_signed`` is what a client does (sign, submit); with ``approve=True`` a held request is
approved at once by a second governance submitter through the queue, as ``unlearn approve`` does,
for tests about what happens after the approval.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from adapters.submitters import KEY_ENV, NAME_ENV, Identity, SubmitterRegistry

SUBMITTER = "test-governance"
APPROVER = "test-approver"
_IDENTITIES: dict[tuple[str, str], Identity] = {}  # (name, key id) -> identity; a copied state keeps its keys


def identity(state_dir: str | Path, name: str = SUBMITTER, role: str = "governance") -> Identity:
    """``name`` of ``state_dir``, registered on first use with its key in a temporary directory (a state
    copied from another one keeps that one's submitters and their keys)."""
    registered = {s.name: s.key_id for s in SubmitterRegistry(state_dir).list()}
    if name in registered:
        return _IDENTITIES[(name, registered[name])]
    made = Identity.create(state_dir, name, role, tempfile.mkdtemp(prefix="unlearnops-keys-"))
    _IDENTITIES[(name, SubmitterRegistry(state_dir).get(name).key_id)] = made
    return made


def submitter_key(state_dir: str | Path, name: str = SUBMITTER, role: str = "governance") -> Path:
    return identity(state_dir, name, role).key_path


def client_env(state_dir: str | Path, name: str = SUBMITTER) -> dict[str, str]:
    """The environment that lets `unlearn submit` sign as ``name``."""
    return {NAME_ENV: name, KEY_ENV: str(submitter_key(state_dir, name))}


def signed(state_dir: str | Path, payload: bytes | str | dict, name: str = SUBMITTER, role: str = "governance",
           **sign_kwargs) -> bytes:
    """``payload`` (a plain request) as an envelope signed by ``name``; bytes that are no JSON object stay
    as they are, for the service to refuse."""
    try:
        request = payload if isinstance(payload, dict) else json.loads(payload)
    except ValueError:
        return payload if isinstance(payload, bytes) else payload.encode()
    if not isinstance(request, dict):
        return json.dumps(request).encode()
    return identity(state_dir, name, role).sign(request, **sign_kwargs)


def submit_signed(rt, payload, notify: bool = False, approve: bool = True, name: str = SUBMITTER,
                  role: str = "governance") -> tuple[str, bool]:
    """Sign and submit like a client; approve a held request at once unless ``approve=False``. No notification
    unless ``notify``: a test that processes the request itself must not leave a notifier's event behind for a
    later test's triggers and workers."""
    from flows.submit import notify_submitted, submit_payload

    request_id, created = submit_payload(rt, signed(rt.state_dir, payload, name, role), notify=False)
    if approve and rt.queue.status(request_id)["state"] == "awaiting_approval":
        identity(rt.state_dir, APPROVER)
        rt.queue.approve(request_id, APPROVER, "approved by the test")
    if created and notify:
        notify_submitted(rt, request_id)
    return request_id, created
