"""Where a running pipeline keeps its state, and the objects built from it.

One state directory (default ``~/.unlearnops``, env ``UNLEARNOPS_STATE_DIR``;
never the project checkout) holds everything a deployment needs::

    params.yaml        the pipeline's frozen copy of the project's params.yaml (set by `unlearn init`)
    queue.db           the request queue (SQLite, WAL; or PostgreSQL at $UNLEARNOPS_QUEUE_URL)
    registry/          the git + DVC registry workspace (remote: the S3 bucket)
    receipts/          deletion receipts, <request_id>.json + .md
    substitutes/       the substitute root: local substitute paths resolve inside it
    work/<request_id>/ per-request scratch (downloads, candidate models); purged when the request ends
    s3/, prefect/      the embedded services of `unlearn up`
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.queue import RequestQueue, open_queue, queue_params
from adapters.services import default_state_dir, s3_config
from adapters.registry import RegistryWorkspace, S3Config
from unlearn_core.config import Params, load_params
from unlearn_core.errors import InputError
from unlearn_core.requests import ModelInfo

SUBSTITUTE_ROOT_ENV = "UNLEARNOPS_SUBSTITUTE_ROOT"
QUEUE_URL_ENV = "UNLEARNOPS_QUEUE_URL"  # postgresql://... (the password stays in the environment, never in files)
_PROJECT = Path(__file__).resolve().parents[1]


@cache
def code_version() -> str:
    """The project's git commit (or 'unknown' outside a checkout): recorded in every lineage."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PROJECT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class ModelEntry(BaseModel):
    """One served model in params.yaml ``models:`` (registry name -> how to handle it)."""

    model_config = ConfigDict(extra="forbid")
    family: str = "classifier"
    arch: str = "mnist_cnn"
    train_on_init: bool = True  # `unlearn init` without --models trains it (false: minutes of training, asked for)


@dataclass
class Runtime:
    state_dir: Path

    @classmethod
    def from_env(cls, state_dir: str | Path | None = None) -> "Runtime":
        state = Path(state_dir).expanduser().resolve() if state_dir else default_state_dir().resolve()
        return cls(state)

    @property
    def params_path(self) -> Path:
        return self.state_dir / "params.yaml"

    @cached_property
    def params(self) -> Params:
        return load_params(self.params_path)

    @property
    def queue_path(self) -> Path:
        return self.state_dir / "queue.db"

    @property
    def registry_dir(self) -> Path:
        return self.state_dir / "registry"

    @property
    def receipts_dir(self) -> Path:
        return self.state_dir / "receipts"

    @property
    def substitute_root(self) -> Path:
        return Path(os.environ.get(SUBSTITUTE_ROOT_ENV) or self.state_dir / "substitutes").resolve()

    def work_dir(self, request_id: str) -> Path:
        return self.state_dir / "work" / request_id

    @cached_property
    def s3(self) -> S3Config:
        return s3_config(self.state_dir)

    @cached_property
    def queue(self) -> RequestQueue:
        """PostgreSQL when ``UNLEARNOPS_QUEUE_URL`` names one (production), else SQLite in the state dir."""
        url = os.environ.get(QUEUE_URL_ENV)
        if url:
            if not url.startswith(("postgresql://", "postgres://")):
                raise InputError(QUEUE_URL_ENV, "expected a postgresql:// URI")
            return open_queue(url, queue_params(self.params))
        return open_queue(self.queue_path, queue_params(self.params))

    @cached_property
    def registry(self) -> RegistryWorkspace:
        return RegistryWorkspace(self.registry_dir, self.s3, (self.params.model_extra or {}).get("registry"))

    @cached_property
    def models(self) -> dict[str, ModelEntry]:
        raw = (self.params.model_extra or {}).get("models") or {"mnist-cnn": {}}
        try:
            return {name: ModelEntry.model_validate(entry or {}) for name, entry in raw.items()}
        except ValidationError as exc:
            raise InputError.from_validation(exc, "params.yaml: models.") from None

    def family(self, model_name: str):
        """The family object (unlearn_core.families) that loads, saves, trains and gates this model."""
        from unlearn_core.families import FAMILIES

        entry = self.models[model_name]
        if entry.family not in FAMILIES:
            raise InputError(f"params.yaml: models.{model_name}.family",
                             f"unknown family {entry.family!r}; known: {', '.join(FAMILIES)}")
        return FAMILIES[entry.family](self.params, entry.arch, self.state_dir)

    def model_infos(self, num_classes: int) -> dict[str, ModelInfo]:
        """Served models that have a prod version in the registry (what a request may name)."""
        served = {name for name in self.models if self.registry.prod(name) is not None}
        return {name: ModelInfo(entry.family, None if entry.family == "lm" else num_classes)
                for name, entry in self.models.items() if name in served}

    def require_initialised(self) -> None:
        if not self.params_path.exists() or not self.registry.exists():
            raise InputError("state_dir", f"{self.state_dir} has no initialised pipeline (run `unlearn init`)")
