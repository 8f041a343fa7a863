"""Re-derive a registry version from its recorded inputs: what ``unlearn registry derive NAME`` runs.

The registry writes, at each version's commit, a DVC stage per model (adapters/registry.py):
``derivations/<name>/params.json`` (method, its settings, family, architecture), ``request.json``
(kind and forget spec, ids only), ``inputs.json`` (each input's md5 and origin) and, under
``inputs/<name>/``, the dataset version's md5, the parent's bytes and any substitute images.
``data/`` is that dataset version: the one after the deletion. A version made by a method that read
the deleted rows cannot be re-run: those rows were only in the dataset version before the deletion,
erased once the deletion was done. Erasure wins, and :class:`ErasedInput` says so.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .config import Params, parse_params
from .errors import InputError

DERIVATIONS, INPUTS = "derivations", "inputs"
DATASET_POINTER = "dataset.json"  # in inputs/<name>/: the md5 of the dataset version the stage reads from data/
BASE_METHOD = "train"  # a base version: trained from the dataset alone


class ErasedInput(Exception):
    """An input of the stage was erased on purpose; the version cannot be re-derived."""

    def __init__(self, name: str, version: str, what: str, why: str):
        super().__init__(f"{name} {version} cannot be re-derived: its input {what} {why}. Erasure wins: "
                         "deleted data is never restored to recompute a model")


def read_spec(root: Path, name: str) -> tuple[dict, dict, dict]:
    """(params, request, inputs) of the model's stage in the checked-out registry at ``root``."""
    folder = Path(root) / DERIVATIONS / name
    try:
        return tuple(json.loads((folder / f"{part}.json").read_text()) for part in ("params", "request", "inputs"))
    except FileNotFoundError:
        raise InputError("model", f"{name!r} has no derivation in {root} (no {folder.relative_to(root)}/)") from None


def check_not_erased(root: Path, name: str) -> None:
    """Refuse a stage whose method read the deleted rows (they are gone with the dataset before the deletion)."""
    params, _, inputs = read_spec(root, name)
    forget = inputs.get("forget_rows")
    if forget:
        raise ErasedInput(name, params.get("version", "?"),
                          f"'forget rows' (the rows method {forget.get('method')} read, in dataset version "
                          f"{forget.get('dataset_md5')})", f"was erased {forget.get('erased')}")


def rederive(root: Path, name: str, cpu_threads: int = 1) -> dict:
    """Run the recorded method on the recorded inputs and write ``models/<name>/model.pt``.

    Runs under :func:`training.reproducible`, so the bytes repeat run to run on one CPU model; they equal
    the committed version's when the service ran the method the same way (otherwise compare metrics).
    """
    from .families import FAMILIES
    from .methods import get_method
    from .training import reproducible

    root = Path(root)
    check_not_erased(root, name)
    params, request, inputs = read_spec(root, name)
    family_cls = FAMILIES.get(params.get("family"))
    if family_cls is None:
        raise InputError("family", f"{params.get('family')!r} is not a model family ({', '.join(FAMILIES)})")
    method = params["method"]
    base = method == BASE_METHOD
    settings = parse_params({family_cls.train_section: params["config"]}) if base else Params()
    out = root / "models" / name / "model.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unlearnops-derive-") as tmp, reproducible(cpu_threads):
        family = family_cls(settings, params["arch"], Path(tmp))
        if base:
            family.train_base(root / "data", Path(tmp), out)
            return {"model": name, "version": params["version"], "method": method}
        folder = root / INPUTS / name
        parent = family.load(folder / inputs["parent"]["path"])
        substitute = np.load(folder / inputs["substitute"]["path"]) if inputs.get("substitute") else None
        data = family.load_data(root / "data")
        forget_request = family.retained_request(request, data, params["arch"], substitute)
        model, result = get_method(method)(parent, params["config"], "cpu").unlearn(forget_request)
        family.save(model, out, data)
    return {"model": name, "version": params["version"], "method": method, "time_s": round(result.time_s, 3)}
