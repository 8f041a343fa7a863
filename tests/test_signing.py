"""Receipt signing: the key file, the canonical content hash and what a signature covers."""
from __future__ import annotations

import json
import stat

import pytest

from adapters.signing import (KEY_FILE, ReceiptSigner, SignatureError, check_signed, content_hash,
                              ensure_signing_key, load_public_key)
from unlearn_core.receipts import Receipt, render_markdown


def test_key_is_created_once_owner_only(tmp_path):
    path = ensure_signing_key(tmp_path)
    assert path == tmp_path / KEY_FILE and stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    assert ensure_signing_key(tmp_path).read_bytes() == first  # never overwritten
    assert ReceiptSigner.for_state(tmp_path).key_id == ReceiptSigner.for_state(tmp_path).key_id


def test_signed_receipt_round_trips_through_its_file_and_detects_edits(tmp_path):
    signer = ReceiptSigner.for_state(tmp_path)
    receipt = Receipt("req-1", "done", "class", "mnist-cnn", "governance", method="lra_npp",
                      deleted_sample_ids=["a" * 64], metrics_after={"UA": 1.0, "RA": float("nan")})
    signed = signer.sign(receipt.to_dict())
    written = tmp_path / "r.json"
    written.write_text(json.dumps(signed, indent=2, sort_keys=True))  # as the receipt file is written
    public = load_public_key(signer.public_pem)
    assert check_signed(json.loads(written.read_text()), public) == signed["content_hash"]
    assert signed["content_hash"] in render_markdown(signed)

    signed["audit"] = [signer.sign({"event": "model_erased", "receipt_hash": signed["content_hash"]})]
    assert check_signed(signed, public) == signed["content_hash"]  # the audit trail is outside the hash

    edited = {**signed, "deleted_sample_ids": []}
    with pytest.raises(SignatureError, match="content hash"):
        check_signed(edited, public)
    rehashed = {**edited, "content_hash": content_hash(edited)}
    with pytest.raises(SignatureError, match="signature invalid"):
        check_signed(rehashed, public)
    other = load_public_key(ReceiptSigner.for_state(tmp_path / "other").public_pem)
    with pytest.raises(SignatureError, match="signature invalid"):
        check_signed(signed, other)
