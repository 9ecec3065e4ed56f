"""Provenance of a run: what code, config, data, software and hardware made it.

`collect` gathers one record; `write` stores it in ``workdir/provenance.json``.

The file holds ``{"starts": [record, ...]}``, one record per start of the run:
a run resumed from a checkpoint appends a record instead of replacing the
first, so the history of (possibly different) commits, hosts and meshes that
produced one workdir stays visible. ``starts[-1]`` is the latest. Only process
0 of a multi-host run should call `write`.

Record keys: ``git_commit``, ``git_dirty``, ``config``, ``versions``,
``python``, ``platform``, ``hostname``, ``corpus_hash``, ``mesh``,
``devices``, ``timestamp`` (UTC, ISO 8601), ``argv`` and ``extra``.
"""

from __future__ import annotations

import configparser
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from learned_loss.core import files

PROVENANCE_FILE = "provenance.json"

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _requirement_name(requirement: str) -> str:
    """'evosax<0.4,>=0.3.2' -> 'evosax' (PEP 508: the name ends at the first specifier)."""
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0]


def _install_requires() -> tuple[str, ...]:
    """The package's install requirements (setup.cfg), extras left out: from the installed
    distribution's metadata, or from setup.cfg beside a source tree that is not installed."""
    try:
        requires = [r for r in importlib.metadata.requires("learned_loss") or []
                    if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        parser = configparser.ConfigParser()
        parser.read(_PACKAGE_DIR.parent / "setup.cfg")
        requires = parser.get("options", "install_requires", fallback="").split("\n")
    return tuple(_requirement_name(r) for r in requires if r.strip())


# Distribution names (as pip knows them) whose versions every record holds: every package the
# code depends on (any of them can change a result: evosax decides ES runs, scipy the fits),
# and jaxlib, jax's compiled half.
PACKAGES = ("jaxlib",) + _install_requires()


def to_jsonable(obj: Any) -> Any:
    """Converts ``obj`` into plain JSON types.

    Mappings become dicts with string keys; tuples, lists and sets become
    lists; numpy/jax scalars and arrays become Python numbers and lists;
    non-finite floats become ``"nan"``/``"inf"``/``"-inf"`` (as in
    metrics.jsonl); anything else unknown becomes ``str(obj)``.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if hasattr(obj, "to_dict") and callable(obj.to_dict):  # ml_collections.
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(obj).tolist())
    return str(obj)


def config_hash(config: Any, drop: tuple[str, ...] = ()) -> str:
    """A short sha256 of a config's resolved values (a ConfigDict or a mapping), without the
    top-level keys in `drop`: what keys a cached or finished result to the settings behind it."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values = {k: v for k, v in values.items() if k not in drop}
    text = json.dumps(to_jsonable(values), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_hash(*modules: Any) -> str:
    """A short sha256 of the source text of `modules` (module objects): the code version that
    keys a cache entry built by them, so that an edit to any of them builds it afresh."""
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode())
        digest.update(pathlib.Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _git(args: list[str], repo_dir: pathlib.Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo_dir), *args], capture_output=True,
            text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


def git_state(repo_dir: str | os.PathLike[str] | None = None
              ) -> tuple[str | None, bool | None]:
    """Returns ``(commit sha, dirty)`` of the git repository at ``repo_dir``.

    Args:
      repo_dir: any folder inside the repository; defaults to the folder of
        the learned_loss package.

    Returns:
      The full HEAD sha and whether a *tracked* file differs from HEAD
      (untracked files are ignored: workdirs and caches are not code).
      ``(None, None)`` if git is missing or this is not a repository.
    """
    where = pathlib.Path(repo_dir) if repo_dir is not None else _PACKAGE_DIR
    head = _git(["rev-parse", "HEAD"], where)
    if head is None:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return head.strip(), None if status is None else bool(status.strip())


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution; ``None`` if not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_mesh(mesh: Any) -> dict[str, Any] | None:
    """``{"axis_names": [...], "shape": {axis: size}}`` of a jax Mesh."""
    if mesh is None:
        return None
    return {"axis_names": [str(a) for a in mesh.axis_names],
            "shape": {str(k): int(v) for k, v in mesh.shape.items()}}


def describe_devices() -> dict[str, Any]:
    """Backend, device kinds and counts, and this process's index."""
    try:
        devices = jax.devices()
        return {
            "platform": devices[0].platform,
            "kinds": sorted({d.device_kind for d in devices}),
            "count": len(devices),
            "local_count": jax.local_device_count(),
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
        }
    except RuntimeError as e:  # No usable backend: record why, do not crash.
        return {"error": str(e)}


def collect(config: Any, *, corpus_hash: str | None = None, mesh: Any = None,
            extra: Mapping[str, Any] | None = None,
            repo_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Gathers the provenance record of one start of a run.

    Args:
      config: an ml_collections ConfigDict (or FrozenConfigDict) or a mapping.
      corpus_hash: hash of the training data, if known.
      mesh: the jax.sharding.Mesh the run uses, if any.
      extra: further JSON-able facts to keep, stored under ``"extra"``.
      repo_dir: folder in the git repository to describe (default: the one
        holding the learned_loss package).

    Returns:
      A JSON-serialisable dict (see the module docstring for the keys).
    """
    commit, dirty = git_state(repo_dir)
    return to_jsonable({
        "git_commit": commit,
        "git_dirty": dirty,
        "config": config,  # to_jsonable calls ConfigDict.to_dict().
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "corpus_hash": corpus_hash,
        "mesh": describe_mesh(mesh),
        "devices": describe_devices(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "argv": list(sys.argv),
        "extra": dict(extra) if extra is not None else {},
    })


def read(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Returns the records of every start of the run, oldest first."""
    path = os.path.join(os.fspath(workdir), PROVENANCE_FILE)
    if not files.exists(path):
        return []
    data = files.read_json(path)
    if isinstance(data, dict) and isinstance(data.get("starts"), list):
        return data["starts"]
    return [data]  # A bare record (older layout): treat it as the only start.


def read_extra(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """The `extra` facts of a workdir's latest start ({} when it has none)."""
    starts = read(workdir)
    return dict(starts[-1].get("extra", {})) if starts else {}


def write(workdir: str | os.PathLike[str], record: Mapping[str, Any]) -> str:
    """Appends ``record`` to ``workdir/provenance.json``, atomically.

    Returns:
      The path of the file.
    """
    workdir = os.fspath(workdir)
    files.makedirs(workdir)
    path = os.path.join(workdir, PROVENANCE_FILE)
    starts = read(workdir) + [to_jsonable(record)]
    files.write_json(path, {"starts": starts}, allow_nan=False)
    return path
