"""Re-derive a deletion receipt's claims from a fresh clone of the registry (``unlearn verify``).

Nothing of the service's state is read: ``git clone`` of the registry, ``dvc pull`` from its S3
remote (the remote's keys come from the environment or the embedded S3 of ``unlearn up``), and
the receipt itself (a file, or ``receipts/<request_id>.json`` in the clone). Claims, in order;
the first that fails stops the check:

1. ``signature``   content hash and Ed25519 signature valid against the committed ``keys/receipts.pub``;
                   the registry's copy carries the same hash; every audit entry is signed and names it
2. ``version``     the version exists, was made for this request, its lineage is unchanged since
3. ``stage``       the version that held ``prod`` at issue has a ``prod`` assignment and is ``prod`` now
                   or an ancestor of the version that is; the new version is that version or an ancestor
4. ``lineage``     each version's recorded parent (version, commit, md5s) matches the parent, back to
                   a base version without parent
5. ``model``       receipt md5 = lineage md5 = md5 of the bytes pulled from the remote
6. ``data``        the same for the dataset version (DVC directory listing and every file)
7. ``deletion``    every deleted id is tombstoned and neither listed nor present (by content hash)
                   in that dataset version and every later one that is still stored
8. ``metrics``     classifier metrics that do not need the deleted samples (RA, TA, TA_retained,
                   TA_forget), recomputed on that dataset version for the model and its parent,
                   match the receipt within ``verify.metric_tolerance``; so do the gates' drops
9. ``recompute``   (``--recompute``) ``dvc repro -f <model>`` in a clone at the version re-derives it from its
                   parent, dataset version, request and settings: same md5, or classifier metrics within
                   ``verify.recompute_tolerance`` (adapters/rederivation.py)

A claim that needs bytes erased on purpose (a model version erased by retention, a superseded
dataset version, the deleted samples themselves) is reported ``not re-checked`` with the reason;
so is a recomputation the stage refuses because the method read the deleted rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.receipts import receipt_rel
from adapters.registry import PushError, RegistryError, RegistryWorkspace, S3Config, file_md5, semver
from adapters.signing import PUBLIC_KEY_REL, SignatureError, check_signed, load_public_key
from unlearn_core.errors import InputError

OK, FAILED, SKIPPED = "ok", "FAILED", "not re-checked"
RETAINED_METRICS = ("RA", "TA", "TA_retained", "TA_forget")  # need no deleted sample
FORGET_METRICS = ("UA", "MIA_efficacy", "Fs", "Fr")          # need the deleted samples' bytes


class VerifyParams(BaseModel):
    """``verify:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid")
    metric_tolerance: float = Field(0.005, ge=0, le=1)
    recompute_tolerance: float = Field(0.01, ge=0, le=1)


def verify_params(params) -> VerifyParams:
    try:
        return VerifyParams.model_validate((params.model_extra or {}).get("verify") or {})
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: verify.") from None


@dataclass
class Claim:
    name: str
    status: str
    detail: str


class ClaimFailed(Exception):
    def __init__(self, name: str, detail: str):
        self.name, self.detail = name, detail
        super().__init__(f"{name}: {detail}")


def read_receipt_file(path: str | Path) -> dict:
    try:
        receipt = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError("receipt", f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("receipt", f"{path} is not JSON ({exc})") from None
    missing = [k for k in ("request_id", "status", "model") if not isinstance(receipt, dict) or k not in receipt]
    if missing:
        raise InputError("receipt", f"{path} is not a deletion receipt (missing {', '.join(missing)})")
    return receipt


def clone_registry(url: str, dest: Path, s3: S3Config, registry_params: dict | None = None) -> RegistryWorkspace:
    """``git clone`` the registry (no DVC pull yet) with the remote's keys in ``.dvc/config.local``."""
    proc = subprocess.run(["git", "clone", "-q", url, str(dest)], capture_output=True, text=True,
                          env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"})
    if proc.returncode != 0:
        raise InputError("--registry", f"cannot clone {url}: {proc.stderr.strip()[-300:]}")
    config = dest / ".dvc" / "config"
    found = re.search(r"^\s*url\s*=\s*s3://([^/\s]+)/(\S+)\s*$", config.read_text(), re.M) if config.exists() else None
    if not found:
        raise InputError("--registry", f"{url} is not a registry workspace (no S3 DVC remote in .dvc/config)")
    bucket, prefix = found.groups()  # the clone says where its objects are; the environment gives the keys
    return RegistryWorkspace(dest, dataclasses.replace(s3, bucket=bucket),
                             {**(registry_params or {}), "remote_prefix": prefix})


class Verifier:
    """The claims of one receipt against one fresh clone."""

    def __init__(self, ws: RegistryWorkspace, receipt: dict, tolerance: float, store: Path,
                 recompute_tolerance: float | None = None):
        """``recompute_tolerance``: also run the ``recompute`` claim, with this metric tolerance."""
        self.ws, self.receipt, self.tolerance, self.store = ws, receipt, tolerance, store
        self.recompute_tolerance = recompute_tolerance
        self.claims: list[Claim] = []
        self.name = receipt["model"]
        self.head = ws._git("rev-parse", "HEAD").strip()  # pulls check out other commits; claims are about this one
        self._pulled: dict[tuple[str, str], Path | None] = {}

    # ------------------------------------------------------------ helpers

    def _git(self, *args: str) -> str:
        return self.ws._git(*args)

    def _record(self, name: str, status: str, detail: str) -> None:
        self.claims.append(Claim(name, status, detail))

    def _at_head(self, rel: str) -> str | None:
        """A file of the registry's checked-out head (the working tree may be at an older commit)."""
        try:
            return self._git("show", f"{self.head}:{rel}")
        except RegistryError:
            return None

    def _erasure(self, number: int) -> dict | None:
        """The signed erasure record of a model version, if retention erased it."""
        text = self._at_head(f"erasures/{self.name}/v{number}.json")
        if text is None:
            return None
        record = json.loads(text)
        try:
            check_signed(record, self.public)
        except SignatureError as exc:
            raise ClaimFailed("model", f"erasure record of {semver(number)} is not valid: {exc}") from None
        return record

    def _on_remote(self, md5: str) -> bool:
        client = self.ws.s3.client()
        try:
            client.head_object(Bucket=self.ws.s3.bucket, Key=self.ws._remote_key(md5))
            return True
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise InputError("remote", f"S3 refused the check: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - endpoint unreachable
            raise InputError("remote", f"S3 remote unreachable ({self.ws.s3.endpoint_url}): "
                             f"{type(exc).__name__}") from None

    def _pull(self, sha: str, target: str, md5: str) -> Path | None:
        """Check out ``sha``, ``dvc pull`` one target and keep a copy of it outside the clone (later
        checkouts replace the clone's files); None when its objects are not on the remote."""
        key = (sha, target)
        if key not in self._pulled:
            if not self._on_remote(md5):
                self._pulled[key] = None
            else:
                self._git("checkout", "-q", "--force", sha)
                try:
                    self.ws._dvc("pull", "-q", "--force", target, error=PushError)
                except PushError as exc:
                    raise InputError("remote", f"dvc pull of {target} at {sha[:10]} failed: {exc}") from None
                pulled = self.ws.path / target.removesuffix(".dvc")
                copy = self.store / sha / pulled.name
                copy.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if pulled.is_dir() else shutil.copyfile)(pulled, copy)
                self._pulled[key] = copy
        return self._pulled[key]

    def _data_at(self, sha: str) -> Path | None:
        return self._pull(sha, "data.dvc", self.ws._md5("data.dvc", sha))

    # ------------------------------------------------------------ claims

    def run(self) -> list[Claim]:
        try:
            self.check_signature()
            if self.receipt["status"] != "done":
                self._record("version", OK, f"status {self.receipt['status']}: the receipt claims no new version")
                return self.claims
            self.check_version()
            self.check_stage()
            self.check_lineage()
            model_path = self.check_model()
            data_path = self.check_data()
            self.check_deletion()
            self.check_metrics(model_path, data_path)
            if self.recompute_tolerance is not None:
                self.check_recompute(model_path)
        except ClaimFailed as exc:
            self._record(exc.name, FAILED, exc.detail)
        return self.claims

    def check_signature(self) -> None:
        key = self._at_head(PUBLIC_KEY_REL)
        if key is None:
            raise ClaimFailed("signature", f"the registry has no {PUBLIC_KEY_REL}")
        try:
            self.public = load_public_key(key)
            digest = check_signed(self.receipt, self.public)
        except SignatureError as exc:
            raise ClaimFailed("signature", str(exc)) from None
        committed = self._at_head(receipt_rel(self.receipt["request_id"]))
        if committed is None:
            raise ClaimFailed("signature", f"the registry has no {receipt_rel(self.receipt['request_id'])}")
        if json.loads(committed).get("content_hash") != digest:
            raise ClaimFailed("signature", "the registry's copy of the receipt has another content hash")
        for entry in self.receipt.get("audit") or []:
            try:
                check_signed(entry, self.public)
            except SignatureError as exc:
                raise ClaimFailed("signature", f"audit entry {entry.get('event')}: {exc}") from None
            if entry.get("receipt_hash") != digest:
                raise ClaimFailed("signature", f"audit entry {entry.get('event')} belongs to another receipt")
        self._record("signature", OK, f"{digest} signed by key {self.receipt['signature']['key_id']}; "
                     f"{len(self.receipt.get('audit') or [])} audit entries signed")

    def _version(self, label: str, claimed):
        try:
            return self.ws.version(self.name, claimed)
        except InputError as exc:
            raise ClaimFailed(label, f"{self.name} {claimed}: {exc.reason}") from None

    def check_version(self) -> None:
        r = self.receipt
        v = self._version("version", r.get("new_version"))
        made_for = v.lineage.get("request_ids") or [v.request_id]  # a batch: one version, several requests
        if r["request_id"] not in made_for:
            raise ClaimFailed("version", f"{v.semver} was made for request(s) {made_for}, not {r['request_id']}")
        if (r.get("storage") or {}).get("git_sha") != v.git_sha:
            raise ClaimFailed("version", f"receipt names commit {(r.get('storage') or {}).get('git_sha')}, "
                              f"the version's commit is {v.git_sha}")
        self.version = v
        self._record("version", OK, f"{self.name} {v.semver} at {v.git_sha[:10]} made for this request")

    def _chain(self, top) -> list:
        """Versions from ``top`` back to the base, newest first (each from its own commit)."""
        chain = [top]
        while chain[-1].lineage.get("parent"):
            parent = chain[-1].lineage["parent"]
            chain.append(self._version("lineage", parent.get("version")))
            if len(chain) > 10_000:
                raise ClaimFailed("lineage", "the parent chain does not end")
        return chain

    def check_stage(self) -> None:
        claimed = self._version("stage", self.receipt.get("prod_version"))
        tags = self._git("tag", "-l", f"{self.name}#prod#*").split()
        if not any(self._git("rev-list", "-n1", t).strip() == claimed.git_sha for t in tags):
            raise ClaimFailed("stage", f"{claimed.semver} was never assigned prod")
        current_semver = self.ws._gto_state(self.name)["stages"].get("prod")
        if current_semver is None:
            raise ClaimFailed("stage", f"{self.name} has no prod version")
        current = self._version("stage", current_semver)
        self.chain = self._chain(current)
        numbers = [v.number for v in self.chain]
        if claimed.number not in numbers:
            raise ClaimFailed("stage", f"prod is {current.semver}, which does not derive from {claimed.semver}")
        if self.version.number not in [v.number for v in self._chain(claimed)]:
            raise ClaimFailed("stage", f"{claimed.semver} (prod at issue) does not derive from {self.version.semver}")
        later = "" if current.number == claimed.number else f"; prod is now {current.semver}, derived from it"
        self._record("stage", OK, f"{claimed.semver} was assigned prod{later}")

    def check_lineage(self) -> None:
        for v in self.chain:
            rel = self.ws._lineage_rel(self.name, v.number)
            if self._git("diff", "--name-only", v.git_sha, self.head, "--", rel).strip():
                raise ClaimFailed("lineage", f"{rel} was changed after its version's commit")
        for child, parent in zip(self.chain, self.chain[1:]):
            link = child.lineage["parent"]
            recorded = (link.get("version"), link.get("git_sha"), link.get("model_md5"), link.get("data_md5"))
            actual = (parent.semver, parent.git_sha, parent.model_md5, parent.data_md5)
            if recorded != actual:
                raise ClaimFailed("lineage", f"{child.semver} records parent {recorded}, the registry has {actual}")
        base = self.chain[-1]
        if base.request_id is not None or base.lineage.get("deleted_sample_ids"):
            raise ClaimFailed("lineage", f"{base.semver} has no parent but is not a base version")
        self._record("lineage", OK, " <- ".join(v.semver for v in self.chain) + " (base)")

    def check_model(self) -> Path | None:
        v, storage = self.version, self.receipt.get("storage") or {}
        if storage.get("model_md5") != v.model_md5:
            raise ClaimFailed("model", f"receipt md5 {storage.get('model_md5')} != lineage md5 {v.model_md5}")
        path = self._pull(v.git_sha, self.ws._model_rel(self.name), v.model_md5)
        if path is None:
            erased = self._erasure(v.number)
            if erased is None:
                raise ClaimFailed("model", f"{v.semver}'s model ({v.model_md5}) is missing from the remote "
                                  "and no erasure is recorded")
            self._record("model", SKIPPED, f"md5 {v.model_md5} matches the lineage; bytes erased by retention "
                         f"at {erased['at']} ({erased['summary']})")
            return None
        actual = file_md5(path)
        if actual != v.model_md5:
            raise ClaimFailed("model", f"pulled model bytes have md5 {actual}, lineage says {v.model_md5}")
        self._record("model", OK, f"{v.model_md5} (receipt = lineage = pulled bytes)")
        return path

    def _check_dir(self, data: Path, dir_md5: str) -> None:
        listing = self.ws.path / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
        if hashlib.md5(listing.read_bytes()).hexdigest() + ".dir" != dir_md5:
            raise ClaimFailed("data", f"the dataset listing does not hash to {dir_md5}")
        for entry in json.loads(listing.read_text()):
            actual = file_md5(data / entry["relpath"])
            if actual != entry["md5"]:
                raise ClaimFailed("data", f"data/{entry['relpath']} has md5 {actual}, listing says {entry['md5']}")

    def check_data(self) -> Path | None:
        v, storage = self.version, self.receipt.get("storage") or {}
        if storage.get("data_md5") != v.data_md5:
            raise ClaimFailed("data", f"receipt md5 {storage.get('data_md5')} != lineage md5 {v.data_md5}")
        data = self._data_at(v.git_sha)
        if data is None:
            self._record("data", SKIPPED, f"md5 {v.data_md5} matches the lineage; that dataset version was "
                         "erased when a later deletion superseded it (only the latest version is kept)")
            return None
        self._check_dir(data, v.data_md5)
        self._record("data", OK, f"{v.data_md5} (receipt = lineage = listing = every pulled file)")
        return data

    def check_deletion(self) -> None:
        from unlearn_core.data import hash_images, load_images, read_manifest, read_tombstones
        from unlearn_core.lm.corpus import audit_view

        ids = sorted(self.receipt.get("deleted_sample_ids") or [])
        in_version = set(self.version.lineage.get("deleted_sample_ids") or [])
        batched = len(self.version.lineage.get("request_ids") or [None]) > 1
        if not ids or (set(ids) - in_version if batched else set(ids) != in_version):
            raise ClaimFailed("deletion", "the receipt's deleted ids are not those the version's lineage deleted")
        later = self._git("log", "--format=%H", f"{self.version.git_sha}..{self.head}", "--", "data.dvc").split()
        checked, erased = [], 0
        for sha in [self.version.git_sha, *reversed(later)]:
            data = self._data_at(sha)
            if data is None:
                erased += 1
                continue
            if self.version.lineage.get("family") == "lm":  # QA rows in data/corpus/, ids = sha256 of the texts
                stones, listed, present = audit_view(data / "corpus")
            else:
                stones = {t["sample_id"] for t in read_tombstones(data)}
                listed = {r["sample_id"] for r in read_manifest(data)}
                present = set(hash_images(load_images(data)[0]))
            for sid in ids:
                if sid not in stones:
                    raise ClaimFailed("deletion", f"{sid[:12]}... is not tombstoned in data {sha[:10]}")
                if sid in listed or sid in present:
                    raise ClaimFailed("deletion", f"{sid[:12]}... is still in data {sha[:10]}")
            checked.append(sha[:10])
        if not checked:
            raise ClaimFailed("deletion", "no dataset version from this one on is on the remote")
        note = f"; {erased} superseded dataset version(s) erased, not re-checked" if erased else ""
        self._record("deletion", OK, f"{len(ids)} ids tombstoned and absent (by id and by content hash) "
                     f"in data {', '.join(checked)}{note}")

    def check_metrics(self, model_path: Path | None, data_path: Path | None) -> None:
        lineage = self.version.lineage
        if lineage.get("family") != "classifier":
            self._record("metrics", SKIPPED, f"family {lineage.get('family')}: only classifier metrics are recomputed")
            return
        if data_path is None:
            self._record("metrics", SKIPPED, "the version's dataset was erased (superseded)")
            return
        from unlearn_core.data import load_dataset

        from unlearn_core.metrics import retained_metrics
        from unlearn_core.models import load_model

        dataset = load_dataset(data_path)
        parent = self._version("lineage", self.version.lineage["parent"]["version"])
        parent_path = self._pull(parent.git_sha, self.ws._model_rel(self.name), parent.model_md5)
        recomputed, notes = {}, []
        for side, path in (("metrics_after", model_path), ("metrics_before", parent_path)):
            if path is None:
                notes.append(f"{side}: model bytes erased by retention")
                continue
            recomputed[side] = retained_metrics(load_model(path, "cpu")[0], dataset, self.receipt.get("kind"))
        compared, worst = 0, 0.0
        for side, values in recomputed.items():
            claimed = self.receipt.get(side) or {}
            for key, value in values.items():
                if key not in claimed or math.isnan(value):
                    continue
                if abs(claimed[key] - value) > self.tolerance:
                    raise ClaimFailed("metrics", f"{side}.{key}: receipt {claimed[key]:.4f}, recomputed {value:.4f} "
                                      f"(tolerance {self.tolerance})")
                compared += 1
                worst = max(worst, abs(claimed[key] - value))
        if len(recomputed) == 2:
            self._check_gates(recomputed)
        skipped = sorted(k for k in FORGET_METRICS if k in (self.receipt.get("metrics_after") or {}))
        notes.append(f"{', '.join(skipped)} not re-checked (they need the deleted samples)" if skipped else "")
        detail = f"{compared} values within {self.tolerance} of the receipt (largest difference {worst:.4g}); " + "; ".join(n for n in notes if n)
        self._record("metrics", OK if compared else SKIPPED, detail.rstrip("; "))

    def check_recompute(self, model_path: Path | None) -> None:
        from adapters.rederivation import recompute

        result = recompute(self.ws, self.version, self.store.parent / "recompute", self.recompute_tolerance,
                           model_path)
        if result.status in ("identical", "metrics match"):
            self._record("recompute", OK, result.detail)
        elif result.status == "refused":
            self._record("recompute", SKIPPED, result.detail)
        else:
            raise ClaimFailed("recompute", result.detail)

    def _check_gates(self, recomputed: dict) -> None:
        before, after = recomputed["metrics_before"], recomputed["metrics_after"]
        ta_key = "TA_retained" if self.receipt.get("kind") == "class" else "TA"
        drops = {"ra_drop": before["RA"] - after["RA"], "ta_drop": before[ta_key] - after[ta_key]}
        for check in (self.receipt.get("gates") or {}).get("checks", []):
            if check["name"] in drops:
                if abs(check["value"] - drops[check["name"]]) > 2 * self.tolerance:
                    raise ClaimFailed("metrics", f"gate {check['name']}: receipt {check['value']:.4f}, "
                                      f"recomputed {drops[check['name']]:.4f}")
                if drops[check["name"]] > check["limit"] + 2 * self.tolerance:
                    raise ClaimFailed("metrics", f"gate {check['name']} fails on recomputation: "
                                      f"{drops[check['name']]:.4f} > {check['limit']}")


def verify(receipt_arg: str, registry_url: str, s3: S3Config, workdir: Path, tolerance: float,
           registry_params: dict | None = None, recompute_tolerance: float | None = None) -> tuple[dict, list[Claim]]:
    """Clone, read the receipt (file path or request id), run the claims. Returns (receipt, claims)."""
    path = Path(receipt_arg)
    receipt = read_receipt_file(path) if (path.suffix == ".json" or path.exists()) else None
    ws = clone_registry(registry_url, workdir / "registry", s3, registry_params)
    if receipt is None:
        committed = ws.path / receipt_rel(receipt_arg)
        if not committed.exists():
            raise InputError("request_id", f"no receipt {receipt_rel(receipt_arg)} in the registry {registry_url}")
        receipt = read_receipt_file(committed)
    return receipt, Verifier(ws, receipt, tolerance, workdir / "pulled", recompute_tolerance).run()
