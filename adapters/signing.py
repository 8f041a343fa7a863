"""Signed receipts: an Ed25519 key in the state dir, a content hash and a signature per receipt.

The private key lives beside the S3 keys (``<state>/s3/receipts.key``, PKCS#8 PEM, mode 0600);
its public half is committed into the registry workspace (``keys/receipts.pub``) so that anyone
with a clone can check a receipt without the service.

Content hash: ``sha256:`` + hex sha256 of the receipt's canonical JSON (keys sorted, no spaces,
UTF-8) without the fields ``content_hash``, ``signature`` and ``audit``. The signature is
Ed25519 over the content hash string. The audit trail (entries appended later, e.g. by
retention) is left out of the hash so the receipt's claims keep their hash; each audit entry is
signed on its own, over its own content hash, and names the receipt's hash it belongs to.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE = Path("s3") / "receipts.key"  # relative to the state dir, beside s3/credentials.json
PUBLIC_KEY_REL = "keys/receipts.pub"    # in the registry workspace
UNSIGNED_FIELDS = ("content_hash", "signature", "audit")
ALGORITHM = "ed25519"


class SignatureError(ValueError):
    """A receipt or audit entry whose hash or signature does not check out."""


def canonical_json(payload: dict) -> bytes:
    """The bytes that are hashed: sorted keys, no whitespace, UTF-8 (NaN kept as JSON's ``NaN``)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plain(payload: dict) -> dict:
    """``payload`` as it reads back from its JSON file (what is written is what is hashed)."""
    return json.loads(json.dumps(payload, default=str))


def content_hash(payload: dict) -> str:
    body = {k: v for k, v in payload.items() if k not in UNSIGNED_FIELDS}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def ensure_signing_key(state_dir: str | Path) -> Path:
    """Create the state dir's Ed25519 key once (0600, never overwritten); returns its path."""
    path = Path(state_dir) / KEY_FILE
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: keep theirs
        return path
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (sha256 of its raw bytes, 16 hex digits)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class ReceiptSigner:
    """Signs receipts and audit entries with the state dir's key."""

    def __init__(self, private: Ed25519PrivateKey):
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def for_state(cls, state_dir: str | Path) -> "ReceiptSigner":
        path = ensure_signing_key(state_dir)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return cls(key)

    @property
    def public_pem(self) -> str:
        return public_pem(self.public)

    def sign(self, payload: dict) -> dict:
        """``payload`` (normalised to plain JSON) with its ``content_hash`` and ``signature``."""
        out = plain(payload)
        out["content_hash"] = content_hash(out)
        out["signature"] = {"algorithm": ALGORITHM, "key_id": self.key_id,
                            "value": base64.b64encode(self._private.sign(out["content_hash"].encode())).decode()}
        return out


def check_signed(payload: dict, public: Ed25519PublicKey) -> str:
    """Raise :class:`SignatureError` unless ``payload``'s content hash and signature are valid;
    returns the content hash."""
    expected = content_hash(payload)
    if payload.get("content_hash") != expected:
        raise SignatureError(f"content hash {payload.get('content_hash')} does not match the content ({expected})")
    sig = payload.get("signature") or {}
    if sig.get("algorithm") != ALGORITHM:
        raise SignatureError(f"unsigned or unknown signature algorithm {sig.get('algorithm')!r}")
    try:
        public.verify(base64.b64decode(sig.get("value") or "", validate=True), expected.encode())
    except (InvalidSignature, ValueError):
        raise SignatureError(f"signature invalid for key {key_id(public)}") from None
    return expected
