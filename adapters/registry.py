"""Registry workspace: models, dataset versions and lineage in a git + DVC repo, remote = S3.

Plain Python (no Prefect), so flows wrap it in tasks and tests call it directly.
Layout of a workspace (never the project checkout)::

    data/ + data.dvc                       the dataset directory (tombstoned per request)
    models/<name>/model.pt                 one file per model, a new md5 per version: the output of
                                           the DVC stage ``<name>`` (dvc.yaml, md5s in dvc.lock)
    inputs/<name>/                         the stage's inputs: the dataset version's md5 (dataset.json), the
                                           parent's bytes (parent.pt), any substitutes (substitute.npy);
                                           output of the stage ``<name>-inputs``
    derivations/<name>/                    the stage's request.json, params.json (method, settings) and
                                           inputs.json (each input's md5 and origin)
    lineage/<name>/v<N>.json               lineage of version N, semver ``v0.0.<N>``
    receipts/<request_id>.json             the signed receipt of each request (adapters/receipts.py)
    keys/receipts.pub                      public key the receipts are signed with (adapters/signing.py)
    erasures/<name>/v<N>.json              signed record of a superseded model version's erasure
    .dvc/config                            remote url + endpointurl (committed)
    .dvc/config.local                      endpoint + keys (git-ignored, rewritten on open)

GTO conventions: ``<name>@v0.0.<N>`` registers a version, ``<name>#prod#<k>``
assigns a stage. A version is committed by ``commit_version``, uploaded by
``push`` and only then registered/promoted: ``promote`` refuses while the
version's model or data objects are missing from the remote. Promoting version N
deregisters (``gto deprecate <name> <version>``) every older version: each lacks
N's deletion, and retention (adapters/retention.py) erases their bytes later.

Every version is the output of its model's DVC stage as of the version's commit: in a clone checked
out at ``<name>@v0.0.N``, ``dvc repro -f <name>`` re-derives it from its parent, its dataset version,
its request and its method settings (``unlearn registry derive``; adapters/rederivation.py compares
the result). A method that read the deleted rows cannot be re-run: those rows were only in the
dataset version before the deletion, which is erased once the deletion is done. See docs/dvc.md.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unlearn_core.data import is_dataset_dir
from unlearn_core.errors import InputError
from unlearn_core.rederive import BASE_METHOD, DATASET_POINTER, DERIVATIONS, INPUTS

REMOTE = "storage"
DEFAULT_BUCKET = "unlearnops"
DEFAULT_REGION = "us-east-1"
GIT_USER = ("UnlearnOps registry", "registry@unlearnops.invalid")
_SAMPLE_ID = re.compile(r"^[0-9a-f]{64}$")
_PROJECT = Path(__file__).resolve().parents[1]
# The dvc installed beside this interpreter (works without an activated venv), else PATH's.
DVC = str(Path(sys.executable).with_name("dvc")) if Path(sys.executable).with_name("dvc").exists() else "dvc"


@dataclass(frozen=True)
class S3Config:
    """Where the DVC remote lives. The keys are kept out of ``repr``."""

    endpoint_url: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    bucket: str = DEFAULT_BUCKET
    region: str = DEFAULT_REGION

    @classmethod
    def from_env(cls, env: dict | None = None) -> "S3Config":
        """Production: ``UNLEARNOPS_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        optional ``UNLEARNOPS_S3_BUCKET`` and ``AWS_REGION``."""
        env = os.environ if env is None else env
        for name in ("UNLEARNOPS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not env.get(name):
                raise InputError(name, "environment variable is not set")
        return cls(env["UNLEARNOPS_S3_ENDPOINT"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                   env.get("UNLEARNOPS_S3_BUCKET") or DEFAULT_BUCKET, env.get("AWS_REGION") or DEFAULT_REGION)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=10))


class RegistryParams(BaseModel):
    """``registry:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid")
    remote_prefix: str = Field("registry", min_length=1)
    s3_max_attempts: int = Field(2, ge=1)
    s3_connect_timeout: int = Field(5, ge=1)


class PushError(RuntimeError):
    """``dvc push`` failed (S3 unreachable, auth refused, ...). Safe to retry."""


class PromoteError(RuntimeError):
    """A version cannot get a stage (its objects are not on the remote, or it is unknown)."""


class RegistryError(RuntimeError):
    """A git/dvc command failed inside the workspace."""


class Superseded(PromoteError):
    """A stage would move back to an older version, undoing the deletions of the versions after it."""

    def __init__(self, model_name: str, version: str, current: str):
        self.model_name, self.version, self.current = model_name, version, current
        super().__init__(f"{model_name} {version} not promoted: {current}, a later version, holds the stage")


class ParentMoved(RuntimeError):
    """Compare-and-swap refused a commit: the model's head is no longer the parent it was derived from.

    The request must be re-run on the new head, or the earlier deletion would be undone.
    """

    def __init__(self, model_name: str, expected: str, head: str):
        self.model_name, self.expected, self.head = model_name, expected, head
        super().__init__(f"{model_name}: derived from {expected}, but the head is now {head}")


class DuplicateVersion(RuntimeError):
    """The request already has a version: one request id never gets a second one."""

    def __init__(self, version: "Version"):
        self.version = version
        super().__init__(f"request {version.request_id} already has {version.name} {version.semver}")


@dataclass
class Version:
    name: str
    semver: str
    number: int
    git_sha: str
    model_md5: str
    data_md5: str
    request_id: str | None = None
    registered: bool = False
    stages: list[str] = field(default_factory=list)
    lineage: dict = field(default_factory=dict, repr=False)

    @property
    def tag(self) -> str:
        """GTO registration tag, e.g. ``mnist-cnn@v0.0.2`` (a git rev for ``clone_and_pull``)."""
        return f"{self.name}@{self.semver}"


@dataclass
class Derivation:
    """How a version was made: what its DVC stage records and ``unlearn registry derive`` re-runs.

    ``method`` ``train`` is a base version trained from the dataset alone. ``request``: the deletion's
    kind and forget spec (sample ids, a class or a subject; never sample bytes). ``reads_forget_set``:
    the method read the deleted rows, which only the dataset version before the deletion held (erased
    once the deletion is done), so the stage can never run again.
    """

    method: str
    config: dict
    family: str | None
    arch: str | None
    request: dict
    substitute: np.ndarray | None = None
    reads_forget_set: bool = True

    @classmethod
    def from_lineage(cls, lineage: dict, request: dict | None = None, substitute: np.ndarray | None = None,
                     reads_forget_set: bool | None = None) -> "Derivation":
        method = lineage.get("method") or "unknown"
        base = method == BASE_METHOD
        return cls(method, dict(lineage.get("params") or {}), lineage.get("family"), lineage.get("arch"),
                   {"kind": "base"} if base else (request or {"kind": lineage.get("kind")}), substitute,
                   (not base) if reads_forget_set is None else reads_forget_set)


def semver(number: int) -> str:
    return f"v0.0.{number}"


def _number(version: "Version | str | int") -> int:
    if isinstance(version, Version):
        return version.number
    if isinstance(version, int):
        return version
    match = re.fullmatch(r"v?0\.0\.(\d+)|v(\d+)", str(version))
    if not match:
        raise InputError("version", f"{version!r} is not a registry version (v0.0.N)")
    return int(match.group(1) or match.group(2))


class RegistryWorkspace:
    """A git + DVC repo whose DVC remote is ``s3://<bucket>/<remote_prefix>``."""

    def __init__(self, path: str | Path, s3: S3Config, params: dict | None = None):
        self.path = Path(path).expanduser().resolve()
        if self.path.is_relative_to(_PROJECT) and (_PROJECT / "pyproject.toml").exists():
            raise InputError("path", f"{self.path} is inside the project checkout; use a directory outside it")
        try:
            self.params = RegistryParams.model_validate(params or {})
        except ValidationError as exc:
            raise InputError.from_validation(exc, "params.yaml: registry.") from None
        self.s3 = s3
        if self.exists():
            self._write_local_config(self.path)

    # ---------------------------------------------------------------- plumbing

    @property
    def remote_url(self) -> str:
        """Where the versions' objects live, e.g. ``s3://unlearnops/registry``."""
        return f"s3://{self.s3.bucket}/{self.params.remote_prefix}"

    def exists(self) -> bool:
        return (self.path / ".dvc").is_dir() and (self.path / ".git").exists()

    def _env(self) -> dict:
        return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0",
                "AWS_MAX_ATTEMPTS": str(self.params.s3_max_attempts), "AWS_RETRY_MODE": "standard"}

    def _run(self, *cmd: str, cwd: Path | None = None, error=RegistryError) -> str:
        proc = subprocess.run(cmd, cwd=cwd or self.path, env=self._env(), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = self._scrub((proc.stderr or proc.stdout).strip())[-800:]
            raise error(f"`{' '.join(cmd[:3])}` failed (exit {proc.returncode}): {tail}")
        return proc.stdout

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        return self._run("git", *args, cwd=cwd)

    def _dvc(self, *args: str, cwd: Path | None = None, error=RegistryError) -> str:
        return self._run(DVC, *args, cwd=cwd, error=error)

    def _scrub(self, text: str) -> str:
        for secret in (self.s3.access_key, self.s3.secret_key):
            text = text.replace(secret, "***")
        return text

    def _write_local_config(self, repo: Path) -> None:
        """Endpoint and keys of the current S3 into ``.dvc/config.local`` (git-ignored, 0600)."""
        local = repo / ".dvc" / "config.local"
        text = (f'[\'remote "{REMOTE}"\']\n    endpointurl = {self.s3.endpoint_url}\n'
                f"    access_key_id = {self.s3.access_key}\n    secret_access_key = {self.s3.secret_key}\n"
                f"    region = {self.s3.region}\n")
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(local, 0o600)

    @contextmanager
    def _lock(self):
        """One writer at a time per workspace (flows may run concurrently)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _md5(self, dvc_file: str, rev: str | None = None) -> str:
        text = self._git("show", f"{rev}:{dvc_file}") if rev else (self.path / dvc_file).read_text()
        return yaml.safe_load(text)["outs"][0]["md5"]

    def _model_rel(self, name: str) -> str:
        return f"models/{name}/model.pt"

    def _lineage_rel(self, name: str, number: int) -> str:
        return f"lineage/{name}/v{number}.json"

    def _check_name(self, name: str) -> None:
        from gto.constants import assert_name_is_valid

        try:
            assert_name_is_valid(name)
        except Exception as exc:  # noqa: BLE001 - gto's ValidationError
            raise InputError("model_name", f"{name!r} is not a valid GTO artifact name ({exc})") from None

    def _model_names(self) -> list[str]:
        folder = self.path / "lineage"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def _numbers(self, name: str) -> list[int]:
        folder = self.path / "lineage" / name
        return sorted(int(p.stem[1:]) for p in folder.glob("v*.json")) if folder.is_dir() else []

    def _lineage_json(self, lineage: dict) -> str:
        try:
            text = json.dumps(lineage, indent=2, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InputError("lineage", f"must be plain JSON data (ids, numbers, strings): {exc}") from None
        if self.s3.secret_key in text or self.s3.access_key in text:
            raise InputError("lineage", "contains an S3 key; secrets never go into lineage")
        return text

    def _commit_model(self, name: str, number: int, model_path: Path, lineage: dict, message: str,
                      derivation: Derivation, parent: Version | None = None) -> str:
        """Copy the model in, write its DVC stage (inputs, request, settings), ``dvc add data`` +
        ``dvc commit`` the stage, write lineage with both md5s, git commit."""
        rel = self._model_rel(name)
        (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, self.path / rel)
        self._dvc("add", "-q", "data")
        stages = self._write_stage(name, number, derivation, parent, lineage.get("data_before_md5"))
        self._dvc("commit", "-q", "-f", *stages)
        lineage = {**lineage, "model_name": name, "version": semver(number),
                   "model": {"path": rel, "md5": self._model_md5(name)},
                   "data": {"path": "data", "md5": self._md5("data.dvc")}}
        lin = self.path / self._lineage_rel(name, number)
        lin.parent.mkdir(parents=True, exist_ok=True)
        lin.write_text(self._lineage_json(lineage) + "\n")
        paths = ["dvc.yaml", "dvc.lock", "data.dvc", ".gitignore", str(Path(rel).parent / ".gitignore"),
                 f"{DERIVATIONS}/{name}", str(lin.relative_to(self.path))]
        self._git("add", "-A", "--", *paths, f"{INPUTS}/.gitignore")
        self._git("commit", "-q", "-m", message)
        return self._git("rev-parse", "HEAD").strip()

    def _write_stage(self, name: str, number: int, d: Derivation, parent: Version | None,
                     data_before_md5: str | None) -> list[str]:
        """The model's two stages in dvc.yaml as of this version (after ``dvc add data``); returns their names.

        ``<name>-inputs`` holds what the method reads besides the request: ``dataset.json`` (the md5 of
        the dataset version, whose files are ``data/``), the parent's bytes and any substitute images.
        Its command checks each by md5 or names the erasure that removed it, so ``dvc repro`` stops
        there with that sentence, before DVC looks for anything that is gone. ``<name>`` derives the
        model from those inputs, the request and the method settings.
        """
        spec_dir = self.path / DERIVATIONS / name
        if spec_dir.exists():
            shutil.rmtree(spec_dir)
        spec_dir.mkdir(parents=True)
        inputs_dir = self.path / INPUTS / name
        shutil.rmtree(inputs_dir, ignore_errors=True)
        inputs_dir.mkdir(parents=True)
        inputs = {"dataset": {"path": DATASET_POINTER, "md5": self._md5("data.dvc")}}
        (inputs_dir / DATASET_POINTER).write_text(json.dumps(inputs["dataset"]) + "\n")
        if parent is not None:
            shutil.copyfile(self.model_path(name, parent), inputs_dir / "parent.pt")
            inputs["parent"] = {"path": "parent.pt", "version": parent.semver, "md5": parent.model_md5}
            if d.substitute is not None:
                with open(inputs_dir / "substitute.npy", "wb") as fh:
                    np.save(fh, np.ascontiguousarray(d.substitute), allow_pickle=False)
                inputs["substitute"] = {"path": "substitute.npy", "md5": file_md5(inputs_dir / "substitute.npy"),
                                        "rows": int(len(d.substitute))}
            if d.reads_forget_set:
                inputs["forget_rows"] = {"dataset_md5": data_before_md5, "method": d.method,
                                         "erased": "with the dataset version before this deletion, when it was done"}
        self._spec_json(spec_dir / "params.json", {"method": d.method, "config": d.config, "family": d.family,
                                                   "arch": d.arch, "version": semver(number)})
        self._spec_json(spec_dir / "request.json", d.request)
        self._spec_json(spec_dir / "inputs.json", inputs)
        spec = f"{DERIVATIONS}/{name}"
        dvc_yaml = self.path / "dvc.yaml"
        pipeline = yaml.safe_load(dvc_yaml.read_text()) if dvc_yaml.exists() else {}
        stages = pipeline.setdefault("stages", {})
        stages[f"{name}-inputs"] = {"cmd": f"unlearn registry inputs {name}",
                                    "params": [{f"{spec}/inputs.json": None}],
                                    "outs": [{f"{INPUTS}/{name}": {"persist": True}}]}  # checked in place
        stages[name] = {"cmd": f"unlearn registry derive {name}",
                        "deps": [f"{INPUTS}/{name}", f"{spec}/request.json"],
                        "params": [{f"{spec}/params.json": None}], "outs": [self._model_rel(name)]}
        dvc_yaml.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        return [f"{name}-inputs", name]

    def _spec_json(self, path: Path, value: dict) -> None:
        path.write_text(self._lineage_json(value) + "\n")

    def _model_md5(self, name: str, rev: str | None = None) -> str:
        """The md5 dvc.lock records for the model's stage output (at ``rev``, default the work tree)."""
        text = self._git("show", f"{rev}:dvc.lock") if rev else (self.path / "dvc.lock").read_text()
        return yaml.safe_load(text)["stages"][name]["outs"][0]["md5"]

    def _dvc_targets(self, name: str) -> list[str]:
        """What one version's objects are: its model, its stage inputs and its dataset version."""
        return [self._model_rel(name), f"{INPUTS}/{name}", "data.dvc"]

    # ---------------------------------------------------------------- API

    def init_from(self, data_dir: str | Path, model_path: str | Path, model_name: str, lineage: dict) -> Version:
        """Create the workspace with the base dataset and model as v0.0.1, push it, register it and
        assign ``prod``."""
        data_dir, model_path = Path(data_dir), Path(model_path)
        self._check_name(model_name)
        if not is_dataset_dir(data_dir):
            raise InputError("data_dir", f"{data_dir} is not a dataset directory (no shards/ and tombstones.csv)")
        if not model_path.is_file():
            raise InputError("model_path", f"{model_path} is not a file")
        if self.exists():
            raise InputError("path", f"{self.path} is already a registry workspace")
        if self.path.exists() and any(self.path.iterdir()):
            raise InputError("path", f"{self.path} exists and is not empty")
        self._lineage_json(lineage)
        with self._lock():
            self._git("init", "-q", "-b", "main")
            self._git("config", "user.name", GIT_USER[0])
            self._git("config", "user.email", GIT_USER[1])
            self._dvc("init", "-q")
            (self.path / ".dvc" / "config").write_text(  # what `dvc remote add -d` + `modify` write
                f"[core]\n    remote = {REMOTE}\n['remote \"{REMOTE}\"']\n"
                f"    url = {self.remote_url}\n"
                f"    endpointurl = {self.s3.endpoint_url}\n"
                f"    connect_timeout = {self.params.s3_connect_timeout}\n")
            self._write_local_config(self.path)
            shutil.copytree(data_dir, self.path / "data")
            self._git("add", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
        return self._first_version(model_name, model_path, lineage)

    def add_model(self, model_name: str, model_path: str | Path, lineage: dict) -> Version:
        """Register another model trained on the current dataset as its v0.0.1: push, register, ``prod``."""
        self._check_name(model_name)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise InputError("model_path", f"{model_path} is not a file")
        if not self.exists():
            raise InputError("path", f"{self.path} is not a registry workspace (call init_from first)")
        if self._numbers(model_name):
            raise InputError("model_name", f"{model_name!r} is already in {self.path}")
        self._lineage_json(lineage)
        return self._first_version(model_name, model_path, lineage)

    def _first_version(self, model_name: str, model_path: Path, lineage: dict) -> Version:
        """Commit a base model as v0.0.1, push, register and assign ``prod``."""
        with self._lock():
            base = {**lineage, "parent": None, "request_id": None, "deleted_sample_ids": [],
                    "created_at": _now()}
            self._commit_model(model_name, 1, model_path, base, f"{model_name} {semver(1)}: base model",
                               Derivation.from_lineage(base))
        self.push()
        self.register(model_name, 1)
        self.promote(model_name, 1)
        return self.version(model_name, 1)

    def commit_version(self, model_name: str, model_path: str | Path, request_id: str, lineage: dict,
                       deleted_sample_ids, parent: str, dataset_change: Callable[[Path], object] | None = None,
                       guard: Callable[[], object] | None = None, batch: list[str] | None = None,
                       derivation: Derivation | None = None) -> Version:
        """Commit a new version derived from ``parent``: dataset change applied to ``data/``, the model,
        lineage. No push.

        Compare-and-swap under the workspace lock: refused with :class:`ParentMoved` unless ``parent``
        is still the model's head (its latest version), and with :class:`DuplicateVersion` if the
        request already has a version. ``guard`` (the caller's lease check) runs last, right before
        anything is written; whatever it raises aborts the commit. ``batch``: every request id the
        version serves (a batch forgotten in one run), ``request_id`` among them. ``derivation``: what
        the version's DVC stage records (default: read from ``lineage``, re-running refused).
        """
        self._check_name(model_name)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise InputError("model_path", f"{model_path} is not a file")
        request_ids = list(dict.fromkeys([request_id, *(batch or [])]))
        for rid in request_ids:
            if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", str(rid)):
                raise InputError("request_id", "expected 1-128 characters of [A-Za-z0-9._:-]")
        ids = sorted(set(deleted_sample_ids))
        bad = [i for i in ids if not (isinstance(i, str) and _SAMPLE_ID.match(i))]
        if bad:
            raise InputError("deleted_sample_ids", f"{len(bad)} entries are not sha256 sample ids")
        self._lineage_json(lineage)
        if not self.exists():
            raise InputError("path", f"{self.path} is not a registry workspace (call init_from first)")
        with self._lock():
            self._recover()
            numbers = self._numbers(model_name)
            if not numbers:
                raise InputError("model_name", f"no model {model_name!r} in {self.path}")
            for rid in request_ids:
                earlier = self.version_for_request(model_name, rid)
                if earlier is not None:
                    raise DuplicateVersion(earlier)
            head = self.version(model_name, numbers[-1])
            if head.semver != parent:
                raise ParentMoved(model_name, parent, head.semver)
            if guard is not None:
                guard()
            number = numbers[-1] + 1
            rec = {**lineage, "request_id": request_id, "request_ids": request_ids, "deleted_sample_ids": ids,
                   "created_at": _now(),
                   "parent": {"version": head.semver, "git_sha": head.git_sha,
                              "model_md5": head.model_md5, "data_md5": head.data_md5},
                   "data_before_md5": self._md5("data.dvc")}
            self._writing_marker.touch()
            try:
                if dataset_change is not None:
                    dataset_change(self.path / "data")
                sha = self._commit_model(model_name, number, model_path, rec,
                                         f"{model_name} {semver(number)}: request {request_id}",
                                         derivation or Derivation.from_lineage(lineage), parent=head)
            except BaseException:
                self._restore()
                raise
            finally:
                self._writing_marker.unlink(missing_ok=True)
        return self.version(model_name, number, sha)

    def version_for_request(self, model_name: str, request_id: str) -> Version | None:
        """The version committed for ``request_id``, if any (read from the committed lineage files)."""
        for number in reversed(self._numbers(model_name)):
            lineage = json.loads((self.path / self._lineage_rel(model_name, number)).read_text())
            if request_id == lineage.get("request_id") or request_id in lineage.get("request_ids", ()):
                return self.version(model_name, number)
        return None

    def head(self, model_name: str) -> Version | None:
        """The model's latest committed version: what the next version must be derived from.

        Every committed version passed its gates, so the head already holds every deletion
        committed for the model, even one whose push or promotion is still pending.
        """
        numbers = self._numbers(model_name)
        return self.version(model_name, numbers[-1]) if numbers else None

    @property
    def _writing_marker(self) -> Path:
        return self.path.parent / f".{self.path.name}.writing"

    def _recover(self) -> None:
        """Under the workspace lock: undo what a writer killed mid-commit left (half-tombstoned data, a
        copied model, a stale git index lock), so the next version starts from the last commit."""
        stale = self.path / ".git" / "index.lock"
        if self._writing_marker.exists() or stale.exists():  # we hold the lock: that writer is dead
            stale.unlink(missing_ok=True)
            self._restore()
            self._writing_marker.unlink(missing_ok=True)

    def _restore(self) -> None:
        """Undo a half-made version: files back to the last commit."""
        self._git("checkout", "-q", "HEAD", "--", ".")
        self._git("clean", "-qfd", "--", "lineage", DERIVATIONS)
        # the served models and the dataset; a stage's inputs/ may hold a parent retention erased since
        self._dvc("checkout", "-q", "--force", "data.dvc", *(self._model_rel(n) for n in self._model_names()))

    def push(self, version: Version | None = None) -> None:
        """Upload one version's objects (its model and its dataset version), or, with no version,
        every committed version's (``dvc push --all-commits``, for a first version)."""
        if version is None:
            with self._lock():
                self._dvc("push", "--all-commits", error=PushError)  # not -q: it would hide the reason too
            return
        targets = self._dvc_targets(version.name)
        with self._lock(), self._dvc_env():
            from dvc.repo import Repo

            try:
                with Repo(str(self.path)) as repo:
                    for target in targets:  # one call each: with the stage's outs in one call DVC skipped data.dvc
                        repo.push(targets=[target], revs=[version.git_sha], workspace=False, remote=REMOTE)
            except Exception as exc:  # noqa: BLE001 - connection refused, auth, missing cache ...
                raise PushError(f"dvc push of {version.name} {version.semver} failed: "
                                f"{self._scrub(str(exc))[:500]}") from None

    @contextmanager
    def _dvc_env(self):
        """The S3 retry settings of ``_env`` for DVC called in this process."""
        env = self._env()
        saved = {k: os.environ.get(k) for k in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "DVC_NO_ANALYTICS")}
        os.environ.update({k: env[k] for k in saved})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def purge_superseded_data(self) -> list[str]:
        """Erase the files of older dataset versions from the local cache and the remote.

        Older versions still hold deleted samples' bytes; after this only the
        current ``data/`` version can be pulled, plus the dataset versions of model
        versions committed but not yet promoted. Model versions stay intact.
        Returns the erased object md5s; raises PushError if the remote is unreachable.
        """
        cache = self.path / ".dvc" / "cache" / "files" / "md5"
        with self._lock():
            shas = self._git("log", "--format=%H", "--", "data.dvc").split()
            dirs = [self._md5("data.dvc", sha) for sha in shas]
            # kept: the current dataset, and those of versions committed but not yet promoted (another
            # model's request may be between its commit and its promotion; its data must stay pullable)
            kept = {dirs[0]} | {v.data_md5 for v in self._awaiting_promotion()}
            current = {m for d in kept for m in self._dir_entries(cache, d) | {d}}
            # the old listings go too: DVC treats a directory as pushed whenever its listing is on the remote
            doomed = sorted({m for d in dirs[1:] for m in self._dir_entries(cache, d) | {d}} - current)
            client = self.s3.client()
            try:
                for md5 in doomed:
                    client.delete_object(Bucket=self.s3.bucket, Key=self._remote_key(md5))
            except Exception as exc:  # noqa: BLE001 - connection refused, auth, ...
                raise PushError(f"cannot erase old data objects on the remote: {self._scrub(str(exc))[:300]}") from None
            for md5 in doomed:
                (cache / md5[:2] / md5[2:]).unlink(missing_ok=True)
        return doomed

    def _awaiting_promotion(self) -> list[Version]:
        """Every model's versions newer than the one holding ``prod`` (committed, not yet promoted)."""
        waiting = []
        for name in self._model_names():
            prod = self._gto_state(name)["stages"].get("prod")
            floor = _number(prod) if prod else 0
            waiting += [self.version(name, n) for n in self._numbers(name) if n > floor]
        return waiting

    @staticmethod
    def _dir_entries(cache: Path, dir_md5: str) -> set[str]:
        listing = cache / dir_md5[:2] / dir_md5[2:]
        return {e["md5"] for e in json.loads(listing.read_text())} if listing.exists() else set()

    def missing_on_remote(self, model_name: str, version) -> list[str]:
        """Object names (md5s) of a version that the remote lacks; raises PushError if unreachable."""
        from dvc.repo import Repo

        number = _number(version)
        sha = self._sha(model_name, number)
        try:
            with self._dvc_env(), Repo(str(self.path)) as repo, repo.switch(sha):
                used = repo.used_objs(self._dvc_targets(model_name), force=True, push=True)
                missing = []
                for odb, ids in used.items():
                    if odb is None:
                        st = repo.cloud.status(ids, remote=REMOTE)
                        missing += [h.obj_name for h in (*st.new, *st.missing)]
            # DVC skips a directory whose listing it cannot load, so check the top-level objects directly
            client = self.s3.client()
            for md5 in (self._model_md5(model_name, sha), self._md5("data.dvc", sha)):
                try:
                    client.head_object(Bucket=self.s3.bucket, Key=self._remote_key(md5))
                except client.exceptions.ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                        raise
                    missing.append(md5)
        except Exception as exc:  # noqa: BLE001 - any failure to reach/read the remote
            raise PushError(f"cannot check the remote: {self._scrub(str(exc))[:500]}") from None
        return sorted(set(missing))

    def _remote_key(self, md5: str) -> str:
        """Object key of a DVC 3 remote: ``<prefix>/files/md5/<2 chars>/<rest>``."""
        return f"{self.params.remote_prefix.strip('/')}/files/md5/{md5[:2]}/{md5[2:]}"

    def register(self, model_name: str, version) -> str:
        """``gto register``: tag ``<name>@v0.0.N`` on the version's commit. Returns the tag."""
        import gto.api

        number = _number(version)
        sha = self._sha(model_name, number)
        tag = f"{model_name}@{semver(number)}"
        with self._lock():
            if tag not in self._tags(model_name):
                gto.api.register(str(self.path), model_name, sha, version=semver(number),
                                 author=GIT_USER[0], author_email=GIT_USER[1])
        return tag

    def promote(self, model_name: str, version, stage: str = "prod", guard: Callable[[], object] | None = None) -> str:
        """``gto assign``: give the version ``stage``; refuses unless its objects are on the remote.

        Idempotent (a version that already holds the stage keeps it). A stage never moves back to
        an older version (:class:`Superseded`): each version is derived from the one before, so an
        older one lacks the deletions made since. ``guard`` (the caller's lease check) runs under
        the workspace lock right before the assignment.
        """
        import gto.api

        number = _number(version)
        current = self._gto_state(model_name)["stages"].get(stage)
        if current == semver(number):
            return stage
        if current is not None and _number(current) > number:  # checked again under the lock below
            raise Superseded(model_name, semver(number), current)
        try:
            missing = self.missing_on_remote(model_name, number)
        except PushError as exc:
            raise PromoteError(f"{model_name} {semver(number)} not promoted: {exc}") from None
        if missing:
            raise PromoteError(f"{model_name} {semver(number)} not promoted: {len(missing)} objects are missing "
                               "from the remote (push first; erased data versions cannot be promoted)")
        self.register(model_name, number)
        with self._lock():
            current = self._gto_state(model_name)["stages"].get(stage)
            if current is not None and _number(current) > number:
                raise Superseded(model_name, semver(number), current)
            if guard is not None:
                guard()
            self._wait_next_second(model_name)
            gto.api.assign(str(self.path), model_name, stage, version=semver(number), force=True,
                           author=GIT_USER[0], author_email=GIT_USER[1])
            self._deprecate_older(model_name, number)
        return stage

    def _deprecate_older(self, model_name: str, number: int) -> None:
        """``gto deprecate NAME VERSION`` (a deregistration) of every registered version before ``number``."""
        import gto.api

        done = self.deprecated_at(model_name)
        registered = {f"{model_name}@{semver(n)}" for n in range(1, number)} & set(self._tags(model_name))
        for older in range(1, number):
            if f"{model_name}@{semver(older)}" in registered and semver(older) not in done:
                gto.api.deregister(str(self.path), model_name, version=semver(older),
                                   author=GIT_USER[0], author_email=GIT_USER[1])

    def deprecated_at(self, model_name: str) -> dict[str, int]:
        """Deregistered (GTO-deprecated) versions of the model -> unix time of the deregistration tag."""
        from gto.constants import Action
        from gto.tag import parse_name

        out = {}
        for line in self._git("for-each-ref", "--format=%(refname:strip=2) %(taggerdate:unix)",
                              f"refs/tags/{model_name}@*").splitlines():
            tag, _, when = line.partition(" ")
            parsed = parse_name(tag, raise_on_fail=False)
            if parsed and parsed.get("action") == Action.DEREGISTER and parsed.get("name") == model_name:
                out[parsed["version"]] = min(int(when), out.get(parsed["version"], int(when)))
        return out

    # ---------------------------------------------------------------- receipts and erasures

    def commit_file(self, rel: str, text: str, message: str) -> str:
        """Write and commit one small file (receipt, key, erasure record); returns the commit sha.
        No commit when the file already holds ``text``."""
        if not self.exists():
            raise InputError("path", f"{self.path} is not a registry workspace (call init_from first)")
        path = self.path / rel
        with self._lock():
            if path.exists() and path.read_text() == text:
                return self._git("log", "-n1", "--format=%H", "--", rel).strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self._git("add", rel)
            self._git("commit", "-q", "-m", message, "--", rel)
            return self._git("rev-parse", "HEAD").strip()

    def erase_model_objects(self, model_name: str, version) -> list[str]:
        """Erase a version's model file from the remote and the local DVC cache, unless a version
        that is not deregistered uses the same bytes. Returns the erased md5s."""
        number = _number(version)
        md5 = self.version(model_name, number).model_md5
        deprecated = self.deprecated_at(model_name)
        live = {self.version(model_name, n).model_md5 for n in self._numbers(model_name)
                if semver(n) not in deprecated}
        if md5 in live:
            return []
        client = self.s3.client()
        with self._lock():
            try:
                client.delete_object(Bucket=self.s3.bucket, Key=self._remote_key(md5))
            except Exception as exc:  # noqa: BLE001 - connection refused, auth, ...
                raise PushError(f"cannot erase {model_name} {semver(number)} on the remote: "
                                f"{self._scrub(str(exc))[:300]}") from None
            (self.path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)
            for copy in (self.path / INPUTS).glob("*/parent.pt"):  # the work tree's copy, as the next stage's input
                if file_md5(copy) == md5:
                    copy.unlink()
        return [md5]

    def _tags(self, model_name: str) -> list[str]:
        return self._git("tag", "-l", f"{model_name}@*", f"{model_name}#*").split()

    def _wait_next_second(self, model_name: str) -> None:
        """GTO orders stage assignments by tag time in whole seconds; keep an artifact's in distinct ones."""
        out = self._git("for-each-ref", "--format=%(taggerdate:unix)", f"refs/tags/{model_name}#*").split()
        last = max((int(t) for t in out if t), default=0)
        while time.time() < last + 1:
            time.sleep(0.05)

    def _sha(self, model_name: str, number: int) -> str:
        rel = self._lineage_rel(model_name, number)
        sha = self._git("log", "-n1", "--format=%H", "--diff-filter=A", "--", rel).strip()
        if not sha:
            raise InputError("version", f"{model_name} has no version {semver(number)}")
        return sha

    def version(self, model_name: str, version, sha: str | None = None, state: dict | None = None) -> Version:
        """One committed version with its lineage, GTO registration and stages."""
        number = _number(version)
        sha = sha or self._sha(model_name, number)
        lineage = json.loads(self._git("show", f"{sha}:{self._lineage_rel(model_name, number)}"))
        out = Version(model_name, semver(number), number, sha, lineage["model"]["md5"], lineage["data"]["md5"],
                      lineage.get("request_id"), lineage=lineage)
        state = state or self._gto_state(model_name)
        out.registered = out.semver in state["registered"]
        out.stages = sorted(s for s, v in state["stages"].items() if v == out.semver)
        return out

    def _gto_state(self, model_name: str) -> dict:
        """Registered versions and, per stage, the version assigned most recently (as ``gto show``)."""
        import gto.api
        from gto.constants import VersionSort

        if not self._tags(model_name):
            return {"registered": set(), "stages": {}}
        shown = gto.api.show(str(self.path), model_name)
        registered = {v["version"] for v in shown if v["registrations"]}
        row = gto.api.show(str(self.path), sort=VersionSort.Timestamp).get(model_name, {})
        stages = {stage: v for stage, v in (row.get("stage") or {}).items() if v}
        return {"registered": registered, "stages": stages}

    def versions(self, model_name: str) -> list[Version]:
        """All committed versions, oldest first, with stages and lineage."""
        state = self._gto_state(model_name)
        return [self.version(model_name, n, state=state) for n in self._numbers(model_name)]

    def prod(self, model_name: str) -> Version | None:
        """The version that holds stage ``prod``, or None."""
        state = self._gto_state(model_name)
        current = state["stages"].get("prod")
        return self.version(model_name, current, state=state) if current else None

    def model_path(self, model_name: str, version=None) -> Path:
        """The exact bytes of a version (default: the ``prod`` one). A read-only file in the DVC cache."""
        if version is None:
            current = self.prod(model_name)
            if current is None:
                raise InputError("model_name", f"{model_name} has no prod version")
            version = current
        v = version if isinstance(version, Version) else self.version(model_name, version)
        path = self.path / ".dvc" / "cache" / "files" / "md5" / v.model_md5[:2] / v.model_md5[2:]
        if not path.is_file():
            raise FileNotFoundError(f"{v.name} {v.semver} is not in the local DVC cache ({path})")
        return path

    def data_dir(self) -> Path:
        """The dataset directory of the latest committed version."""
        return self.path / "data"

    def clone_and_pull(self, dest: str | Path, rev: str | None = None, targets: list[str] | None = None) -> Path:
        """``git clone`` the workspace into ``dest`` (optionally check out ``rev``, e.g. a GTO tag),
        then ``dvc pull [targets]`` from the S3 remote with the same endpoint and keys."""
        dest = Path(dest).resolve()
        self._git("clone", "-q", str(self.path), str(dest), cwd=dest.parent)
        if rev:
            self._git("checkout", "-q", rev, cwd=dest)
        self._write_local_config(dest)
        self._dvc("pull", "-q", *(targets or []), cwd=dest, error=PushError)
        return dest


def file_md5(path: Path) -> str:
    """The md5 DVC records for a file (read in 1 MiB blocks)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
