"""Re-derive a registry version with ``dvc repro`` in a clone, and judge the result.

Each version is the output of its model's DVC stage as of the version's commit (adapters/registry.py
writes it; unlearn_core/rederive.py is what the stage runs). Here:

- :func:`check_inputs` is the ``<name>-inputs`` stage's command: the dataset version and every recorded
  input are present with their md5, or the erasure that removed them is named (a later deletion for a
  superseded dataset version, retention's signed record for a parent model, the deletion itself for
  the rows a method read). ``dvc repro`` then stops with that sentence.
- :func:`recompute` clones the registry at a version, pulls what is still stored, runs
  ``dvc repro -f <name>`` and compares: the same md5, or, where kernels or thread counts differ from
  the service's run, classifier metrics on the version's dataset within a tolerance.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from adapters.registry import DVC, RegistryWorkspace, Version, file_md5
from unlearn_core.rederive import DATASET_POINTER, INPUTS, ErasedInput, check_not_erased, read_spec

REFUSED = "cannot be re-derived"  # what the stages print when erasure wins


def _newest(root: Path, rel: str) -> str | None:
    """``rel`` as the newest commit of any branch of the clone holds it (later than the checked-out version)."""
    shas = subprocess.run(["git", "log", "--all", "--format=%H", "-n1", "--", rel], cwd=root,
                          capture_output=True, text=True).stdout.split()
    if not shas:
        return None
    return subprocess.run(["git", "show", f"{shas[0]}:{rel}"], cwd=root, capture_output=True, text=True).stdout or None


def _erasure_record(root: Path, name: str, version: str) -> dict | None:
    """Retention's record of a model version's erasure (committed after the version being re-run)."""
    text = _newest(root, f"erasures/{name}/v{version.rsplit('.', 1)[-1]}.json")
    return json.loads(text) if text else None


def _latest_dataset_md5(root: Path) -> str | None:
    """The md5 of the newest dataset version the clone records."""
    text = _newest(root, "data.dvc")
    return yaml.safe_load(text)["outs"][0]["md5"] if text else None


def _dataset_in_place(root: Path, md5: str) -> bool:
    """``data/`` is the dataset version ``md5``: data.dvc names it and every file of its listing is there."""
    tracked = root / "data.dvc"
    if not tracked.exists() or yaml.safe_load(tracked.read_text())["outs"][0]["md5"] != md5:
        return False
    listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if not listing.exists():
        return False
    return all((root / "data" / e["relpath"]).is_file() and file_md5(root / "data" / e["relpath"]) == e["md5"]
               for e in json.loads(listing.read_text()))


def check_inputs(root: Path, name: str) -> list[str]:
    """The ``<name>-inputs`` stage: the dataset version in ``data/`` and each input file in place with its
    recorded md5, else :class:`ErasedInput` naming the erasure (or a RuntimeError when nothing explains
    the absence: then it was not pulled)."""
    root = Path(root)
    check_not_erased(root, name)
    params, _, inputs = read_spec(root, name)
    version = params.get("version", "?")
    folder = root / INPUTS / name
    folder.mkdir(parents=True, exist_ok=True)
    dataset = inputs["dataset"]
    (folder / DATASET_POINTER).write_text(json.dumps(dataset) + "\n")
    if not _dataset_in_place(root, dataset["md5"]):
        if _latest_dataset_md5(root) != dataset["md5"]:
            raise ErasedInput(name, version, f"'dataset version' (data md5 {dataset['md5']})",
                              "was erased when a later deletion superseded it: only the latest dataset version "
                              "is kept, since every earlier one holds rows deleted since")
        raise RuntimeError(f"{name} {version}: data/ is not dataset version {dataset['md5']}; run `dvc pull data.dvc`")
    checked = [f"dataset {dataset['md5']}"]
    for key in ("parent", "substitute"):
        entry = inputs.get(key)
        if not entry:
            continue
        path = folder / entry["path"]
        if path.is_file() and file_md5(path) == entry["md5"]:
            checked.append(f"{key} {entry['md5']}")
            continue
        if key == "parent":
            record = _erasure_record(root, name, entry["version"])
            if record is not None:
                raise ErasedInput(name, version, f"'parent model' ({name} {entry['version']}, md5 {entry['md5']})",
                                  f"was erased by retention at {record.get('at')} ({record.get('summary')})")
        raise RuntimeError(f"{name} {version}: input {key} (md5 {entry['md5']}) is not in {folder} and no "
                           "erasure is recorded; run `dvc pull` first")
    return checked


@dataclass
class Recomputed:
    status: str  # "identical", "metrics match", "differs", "refused", "failed"
    detail: str


def recompute(source: RegistryWorkspace, version: Version, dest: Path, tolerance: float,
              committed_model: Path | None) -> Recomputed:
    """Clone ``source`` at ``version``, ``dvc pull`` what is stored, ``dvc repro -f <name>``, compare."""
    name = version.name
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    source._git("clone", "-q", str(source.path), str(dest), cwd=dest.parent)
    source._git("checkout", "-q", version.git_sha, cwd=dest)
    source._write_local_config(dest)
    env = {**source._env(), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    try:
        check_not_erased(dest, name)
    except ErasedInput as exc:
        return Recomputed("refused", str(exc))
    # what is still stored; an erased parent stays missing, and the inputs stage names its erasure
    for target in source._dvc_targets(name):  # one by one: an erased object fails the whole pull's checkout
        subprocess.run([DVC, "pull", "-q", target], cwd=dest, env=env, capture_output=True, text=True)
    run = subprocess.run([DVC, "repro", "-f", name], cwd=dest, env=env, capture_output=True, text=True)
    output = (run.stdout + run.stderr).strip()
    if run.returncode != 0:
        refusal = next((line for line in output.splitlines() if REFUSED in line), None)
        if refusal:
            return Recomputed("refused", refusal.removeprefix("error: ").strip())
        return Recomputed("failed", source._scrub(output)[-600:])
    produced = dest / "models" / name / "model.pt"
    md5 = file_md5(produced)
    if md5 == version.model_md5:
        return Recomputed("identical", f"`dvc repro -f {name}` at {version.tag} re-derived md5 {md5}")
    return _compare_metrics(dest, version, produced, committed_model, tolerance, md5)


def _compare_metrics(root: Path, version: Version, produced: Path, committed: Path | None, tolerance: float,
                     md5: str) -> Recomputed:
    """Bytes differ (other kernels or thread counts than the service's run): compare what the gates read."""
    params, request, _ = read_spec(root, version.name)
    head = f"re-derived md5 {md5} != {version.model_md5}"
    if params.get("family") != "classifier":
        return Recomputed("differs", f"{head}; metrics are compared for classifiers only "
                                     f"(family {params.get('family')})")
    if committed is None:
        return Recomputed("differs", f"{head}; the committed model's bytes are erased, nothing to compare with")
    from unlearn_core.data import load_dataset
    from unlearn_core.metrics import retained_metrics
    from unlearn_core.models import load_model

    dataset = load_dataset(root / "data")
    kind = request.get("kind")
    ours = retained_metrics(load_model(produced, "cpu")[0], dataset, kind)
    theirs = retained_metrics(load_model(committed, "cpu")[0], dataset, kind)
    gaps = {k: abs(ours[k] - theirs[k]) for k in ours if k in theirs}
    worst = max(gaps, key=gaps.get)
    shown = ", ".join(f"{k} {theirs[k]:.4f}/{ours[k]:.4f}" for k in sorted(gaps))
    if gaps[worst] > tolerance:
        return Recomputed("differs", f"{head}; {worst} differs by {gaps[worst]:.4f} > {tolerance} "
                                     f"(committed/re-derived: {shown})")
    return Recomputed("metrics match", f"{head} (other kernels or threads); committed/re-derived {shown}, "
                                       f"all within {tolerance}")
