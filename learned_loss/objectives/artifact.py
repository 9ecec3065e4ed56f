"""A learned objective as a file: theta plus the settings and config it was meta-trained with.

  DIR/theta.npz        theta's arrays, keyed by name (a flat dict of arrays)
  DIR/artifact.json    {'name', 'settings' (what rebuilds the loss, e.g. its features),
                        'config' (the meta-training config), 'provenance', 'theta_sha256'}

`save` writes a sibling temporary directory and renames it into place, so a crash never leaves a
half-written artifact and an earlier good one is replaced only by a complete one. `load` checks
the hash of theta.npz against the record.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Mapping, NamedTuple

import numpy as np

from learned_loss.core import errors, files, hosts

THETA = "theta.npz"
RECORD = "artifact.json"


class ArtifactError(errors.UserError):
    """A missing, corrupt or mismatched artifact."""


class Artifact(NamedTuple):
    name: str
    theta: dict  # name -> np.ndarray
    settings: dict
    config: dict
    provenance: dict


def _theta_bytes(theta: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in sorted(theta.items())})
    return buffer.getvalue()


def save(path: str, name: str, theta: Mapping[str, Any], settings: Mapping[str, Any],
         config: Mapping[str, Any], provenance: Mapping[str, Any] | None = None) -> None:
    """Writes the artifact to `path` atomically (replacing an older one only once complete);
    in a multi-host job, on process 0 only (every host holds the same theta)."""
    if not hosts.is_writer():
        return
    data = _theta_bytes(theta)
    record = {"name": name, "settings": _jsonable(settings), "config": _jsonable(config),
              "provenance": _jsonable(provenance or {}),
              "theta_sha256": hashlib.sha256(data).hexdigest()}
    path = files.absolute(path)
    tmp = path + ".tmp"
    files.rmtree(tmp)
    files.write_atomic(os.path.join(tmp, THETA), data)
    files.write_atomic(os.path.join(tmp, RECORD), json.dumps(record, indent=2, sort_keys=True))
    files.replace_dir(tmp, path)


def load(path: str, expected_name: str | None = None) -> Artifact:
    """The artifact at `path`.

    Raises:
      ArtifactError: no artifact there, a corrupt one (hash mismatch, unreadable file), or one
        of another objective than `expected_name`.
    """
    record_path, theta_path = os.path.join(path, RECORD), os.path.join(path, THETA)
    if not (files.isfile(record_path) and files.isfile(theta_path)):
        raise ArtifactError(f"no learned-objective artifact at {path!r} (expected {RECORD} and "
                            f"{THETA}); point objective.path at WORKDIR/artifact of a finished "
                            f"experiments/meta_train.py run")
    try:
        record = files.read_json(record_path)
        data = files.read_bytes(theta_path)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"unreadable artifact at {path!r}: {e}") from e
    if hashlib.sha256(data).hexdigest() != record.get("theta_sha256"):
        raise ArtifactError(f"corrupt artifact at {path!r}: {THETA} does not match the hash in "
                            f"{RECORD}; re-run meta-training or restore the file")
    if expected_name is not None and record.get("name") != expected_name:
        raise ArtifactError(f"the artifact at {path!r} holds a {record.get('name')!r} objective, "
                            f"not {expected_name!r}; set objective={record.get('name')}")
    with np.load(io.BytesIO(data)) as npz:
        theta = {k: npz[k] for k in npz.files}
    return Artifact(record["name"], theta, record["settings"], record["config"],
                    record.get("provenance", {}))


def _jsonable(tree: Any) -> Any:
    """Mappings, sequences and numpy scalars as plain JSON values."""
    if isinstance(tree, Mapping):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree
