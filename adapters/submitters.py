"""Known submitters and signed requests.

``submitters.json`` in the state dir maps each submitter's name to its role and its
Ed25519 *public* key; private keys are handed to the submitter once and never stored
with the service's state. A client signs a request by wrapping it in an envelope::

    {"request": {... the deletion request, request_id included ...},
     "signature": {"submitter": "portal", "signed_at": "2026-12-02T13:00:00+00:00", "value": "<base64>"}}

The signature covers the canonical JSON of ``{"request", "submitter", "signed_at"}``, so
changing any field (the model above all) breaks it. The request id is the nonce: the
queue accepts one submission per id, and ``signed_at`` must lie within the configured
window of the service's clock, so a captured envelope cannot be replayed later.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.signing import canonical_json, key_id, load_public_key, public_pem, SignatureError
from unlearn_core.authorization import ROLES
from unlearn_core.errors import InputError
from unlearn_core.requests import load_json_object

REGISTRY_FILE = "submitters.json"
KEY_ENV = "UNLEARNOPS_SUBMITTER_KEY"  # default --key of `unlearn submit`/`approve`/`reject`
NAME_ENV = "UNLEARNOPS_SUBMITTER"      # default --as
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class Submitter:
    name: str
    role: str
    public_key: str  # PEM
    key_id: str
    added_at: str


class SubmitterRegistry:
    """The state dir's submitters (public keys and roles only)."""

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / REGISTRY_FILE

    def _read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    @contextmanager
    def _locked(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / (REGISTRY_FILE + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def add(self, name: str, role: str) -> bytes:
        """Register ``name`` with a new key pair; returns the private key (PEM), which is not kept."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise InputError("name", "1-64 characters of letters, digits and . _ - @")
        if role not in ROLES:
            raise InputError("role", f"unknown role {role!r}; known: {', '.join(ROLES)}")
        private = Ed25519PrivateKey.generate()
        with self._locked():
            entries = self._read()
            if name in entries:
                raise InputError("name", f"submitter {name!r} already exists (names are never reused: "
                                         "a receipt names its submitter)")
            entries[name] = {"role": role, "public_key": public_pem(private.public_key()),
                             "key_id": key_id(private.public_key()),
                             "added_at": datetime.now(timezone.utc).isoformat()}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

    def get(self, name: str, field: str = "signature.submitter") -> Submitter:
        entry = self._read().get(name)
        if entry is None:
            raise InputError(field, f"unknown submitter {name!r} (register it with `unlearn submitters add`)")
        return Submitter(name=name, **entry)

    def list(self) -> list[Submitter]:
        return [Submitter(name=name, **entry) for name, entry in sorted(self._read().items())]


def key_destination(path: str | Path, state_dir: str | Path) -> Path:
    """Where a new private key may go: a new file outside the service's state dir."""
    path = Path(path).expanduser().resolve()
    if path.is_relative_to(Path(state_dir).resolve()):
        raise InputError("--key-out", f"{path} is inside the state dir; private keys stay with their submitter")
    if path.exists():
        raise InputError("--key-out", f"{path} already exists")
    return path


def write_private_key(pem: bytes, path: Path) -> Path:
    """Write a private key owner-only to a new file (see :func:`key_destination`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


def load_private_key(path: str | Path, field: str = "--key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise InputError(field, f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise InputError(field, f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(field, f"{path} is not an Ed25519 private key")
    return key


def _message(request: dict, submitter: str, signed_at: str) -> bytes:
    return canonical_json({"request": request, "submitter": submitter, "signed_at": signed_at})


def sign_request(request: dict, submitter: str, private: Ed25519PrivateKey,
                 signed_at: datetime | None = None) -> dict:
    """The signed envelope of ``request`` (a request id is added as the nonce if it has none)."""
    request = {**request}
    request.setdefault("request_id", str(uuid.uuid4()))
    at = (signed_at or datetime.now(timezone.utc)).isoformat()
    value = private.sign(_message(request, submitter, at))
    return {"request": request, "signature": {"submitter": submitter, "signed_at": at,
                                              "value": base64.b64encode(value).decode()}}


def open_envelope(payload: bytes, registry: SubmitterRegistry, now: datetime, window_s: float,
                  max_bytes: int) -> tuple[bytes, Submitter]:
    """Check a signed envelope; returns the request's JSON bytes and who signed it. Raises InputError."""
    obj = load_json_object(payload, max_bytes)
    if "signature" not in obj:
        raise InputError("signature", "missing: requests must be signed by a registered submitter "
                                      "(`unlearn submit FILE --as NAME --key KEYFILE`)")
    unknown = sorted(set(obj) - {"request", "signature"})
    if unknown:
        raise InputError(unknown[0], "unknown field (a signed envelope has only request and signature)")
    request, sig = obj.get("request"), obj["signature"]
    if not isinstance(request, dict):
        raise InputError("request", "required: the deletion request object")
    if not isinstance(sig, dict) or set(sig) != {"submitter", "signed_at", "value"}:
        raise InputError("signature", "needs exactly submitter, signed_at and value")
    if not all(isinstance(sig[k], str) for k in sig):
        raise InputError("signature", "submitter, signed_at and value must be strings")
    if "request_id" not in request:
        raise InputError("request_id", "required in a signed request (it is the nonce)")
    submitter = registry.get(sig["submitter"])
    try:
        at = datetime.fromisoformat(sig["signed_at"])
    except ValueError:
        raise InputError("signature.signed_at", "not an ISO 8601 timestamp") from None
    if at.tzinfo is None:
        raise InputError("signature.signed_at", "needs a time zone")
    skew = abs((now - at).total_seconds())
    if skew > window_s:
        raise InputError("signature.signed_at", f"{skew:.0f} s from the service's clock (window {window_s:.0f} s); "
                                                "sign the request again")
    try:
        value = base64.b64decode(sig["value"], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("signature.value", "not base64") from None
    try:
        load_public_key(submitter.public_key).verify(value, _message(request, submitter.name, sig["signed_at"]))
    except (InvalidSignature, SignatureError):
        raise InputError("signature.value", f"does not verify for submitter {submitter.name!r} "
                                            "(the request was changed after signing, or signed with another key)"
                         ) from None
    return json.dumps(request).encode(), submitter


def check_key_holder(registry: SubmitterRegistry, name: str, private: Ed25519PrivateKey) -> Submitter:
    """The submitter ``name`` if ``private`` is its registered key (an approver proves who they are)."""
    submitter = registry.get(name, field="--as")
    challenge = uuid.uuid4().bytes
    try:
        load_public_key(submitter.public_key).verify(private.sign(challenge), challenge)
    except InvalidSignature:
        raise InputError("--key", f"is not the registered key of {name!r}") from None
    return submitter


@dataclass(frozen=True)
class Identity:
    """A submitter as its client holds it: the name and the private key file (never in the state dir)."""

    name: str
    key_path: Path

    @classmethod
    def create(cls, state_dir: str | Path, name: str, role: str, key_dir: str | Path) -> "Identity":
        """Register ``name`` in ``state_dir`` and keep its private key in ``key_dir`` (the demo, the benches)."""
        dest = key_destination(Path(key_dir) / f"{name}.key", state_dir)
        return cls(name, write_private_key(SubmitterRegistry(state_dir).add(name, role), dest))

    def sign(self, request: dict, signed_at: datetime | None = None) -> bytes:
        return json.dumps(sign_request(request, self.name, load_private_key(self.key_path), signed_at)).encode()
