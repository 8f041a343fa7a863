"""What the pipeline needs from a model family: one protocol, no branching on the family.

``process-request`` talks to a family object only; adding a family means one
module implementing :class:`ModelFamily` and an entry in ``FAMILIES``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from unlearn_core.config import Params
from unlearn_core.data import Dataset
from unlearn_core.gates import GateCheck, GateOutcome
from unlearn_core.methods import ForgetRequest


class ModelFamily(Protocol):
    name: ClassVar[str]
    exact_method: ClassVar[str]  # the escalation target when every other attempt fails its gates
    batches: ClassVar[bool]  # sample-level requests may be forgotten together (needs member_checks)
    data_kind: ClassVar[str]  # "images" (data/ shards) or "corpus" (data/corpus/): which GX suite validates
    train_section: ClassVar[str]  # the params.yaml section of its base training (a base version's settings)

    def __init__(self, params: Params, arch: str, state_dir: Path): ...

    def prepare_data(self, data_dir: Path) -> None:
        """Add what this family trains on to a new dataset directory (before the registry copies it)."""

    def load_data(self, data_dir: Path) -> Any:
        """The current dataset version as this family's methods read it (tombstoned rows excluded)."""

    def forget_rows(self, request, data_dir: Path, data) -> list[dict]:
        """The rows a request deletes, as validation rows with ``sample_id``; InputError if none."""

    def forget_request(self, request, data, arch: str, forget_ids: list[str], substitute=None) -> Any:
        """What the methods consume: the forget set resolved against ``data``."""

    def retained_request(self, spec: dict, data, arch: str, substitute=None) -> Any:
        """What a method that reads no deleted row consumes, rebuilt from a version's dataset alone
        (``spec``: the version's request.json); for ``unlearn registry derive``."""

    def tombstone(self, data_dir: Path, ids: list[str], request_id: str) -> None:
        """Remove the rows' bytes from the dataset directory and record their ids as deleted."""

    def load(self, path) -> Any: ...

    def save(self, model, path, dataset: Dataset) -> None: ...

    def train_base(self, data_dir: Path, workdir: Path, path: Path) -> dict:
        """Train the base model into ``path``; returns lineage fields (params, metrics)."""

    def exact_config(self) -> dict: ...

    def method_kwargs(self, method: str, dataset: Dataset) -> dict:
        """Extra constructor arguments a method of this family needs (reference models, held-out data)."""

    def parent_report(self, parent, dataset: Dataset, request: ForgetRequest) -> dict: ...

    def evaluate(self, method: str, parent, parent_report: dict, model, dataset: Dataset,
                 request: ForgetRequest) -> tuple[dict, GateOutcome]:
        """The candidate's metrics and the gates' verdict against the parent."""

    def member_checks(self, method: str, model, dataset: Dataset, report: dict, member_ids: list[str],
                      name: str) -> list[GateCheck]:
        """Gates one member of a batch on its own forget set (families with ``batches``)."""

    def headline(self, report: dict) -> dict:
        """The metrics worth a lineage record and a receipt."""


def floats(report: dict) -> dict:
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float))}
