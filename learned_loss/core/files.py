"""Workdir files, local or in a bucket: every read and write of a workdir, cache or data folder
goes through here, over `etils.epath` (orbax's own path layer), so that `--workdir=gs://b/run`
works wherever a local folder does.

A path is a string: a local path, or a URL with a scheme (`gs://bucket/run`, what etils
serves through fsspec; gs:// needs `gcsfs`). `os.path.join`, `dirname` and `basename` work on
both; `os.path.abspath` does not (it would turn `gs://b` into a local `./gs:/b`): use
`absolute`.

  write_atomic(path, data)     a reader (or a run killed mid-write) sees the old file or the new
                               one, never half of either: locally bytes or text go into a
                               temporary file beside `path`, flushed to disk, then renamed over
                               it (os.replace is atomic on POSIX); in a bucket the object is
                               written whole (an object upload is atomic)
  write_json(path, obj)        the same for JSON: keys sorted, indented, a final newline
  read_text / read_bytes / read_json, exists, isdir, listdir, glob, makedirs, remove, rmtree,
  replace_dir                  the os / shutil calls, for both kinds of path
  is_remote(path), local_only(path, what)
                               whether a path is in a bucket; a one-line refusal where only a
                               local folder can work (a file lock)
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from typing import Any

import fsspec  # etils.epath's gs:// backend (comes with etils[epath])
from etils import epath

from learned_loss.core import errors, hosts

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# gcsfs caches folder listings, but other processes (a multi-host job's, the next stage's) and
# other clients (tensorboardX's and tensorstore's own uploads) write to the same folders: list
# afresh each time.
fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return bool(_SCHEME.match(os.fspath(path)))


def path(p: str | os.PathLike[str]) -> epath.Path:
    """`p` as an `etils.epath.Path` (local or in a bucket)."""
    return epath.Path(os.fspath(p))


def absolute(p: str | os.PathLike[str]) -> str:
    """`os.path.abspath` for a local path; a URL unchanged."""
    p = os.fspath(p)
    return p if is_remote(p) else os.path.abspath(p)


def local_only(p: str | os.PathLike[str], what: str) -> str:
    """`p`, refused with a one-line cli.UserError when it is in a bucket (`what` names the
    setting and says why it must be local)."""
    p = os.fspath(p)
    if is_remote(p):
        raise errors.UserError(f"{what} must be a local folder, got {p}")
    return p


def exists(p: str | os.PathLike[str]) -> bool:
    return os.path.exists(p) if not is_remote(p) else path(p).exists()


def isdir(p: str | os.PathLike[str]) -> bool:
    return os.path.isdir(p) if not is_remote(p) else path(p).is_dir()


def isfile(p: str | os.PathLike[str]) -> bool:
    """Whether `p` is a file (in a bucket: an object that is not a folder)."""
    if not is_remote(p):
        return os.path.isfile(p)
    q = path(p)
    return q.exists() and not q.is_dir()


def listdir(p: str | os.PathLike[str]) -> list[str]:
    """The names in folder `p` (unsorted, as os.listdir); FileNotFoundError when it is not
    there."""
    if not is_remote(p):
        return os.listdir(p)
    if not isdir(p):
        raise FileNotFoundError(f"no folder {os.fspath(p)}")
    return [q.name for q in path(p).iterdir()]


def glob(folder: str | os.PathLike[str], pattern: str) -> list[str]:
    """The sorted paths of the entries of `folder` whose names match `pattern` (one level, no
    '/' in the pattern; as glob.glob, '*' does not match a leading '.'); [] when `folder` is not
    there."""
    if not isdir(folder):
        return []
    hidden = pattern.startswith(".")
    return sorted(os.path.join(os.fspath(folder), name) for name in listdir(folder)
                  if fnmatch.fnmatchcase(name, pattern) and (hidden or not name.startswith(".")))


def makedirs(p: str | os.PathLike[str]) -> None:
    """Makes folder `p` and its parents (nothing to do where it exists). In a bucket a folder is
    only a name prefix: nothing is made (gcsfs's makedirs would create a missing bucket, so a
    mistyped bucket name would become a new bucket rather than an error)."""
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def remove(p: str | os.PathLike[str]) -> None:
    """Removes file `p` (FileNotFoundError when it is not there)."""
    if is_remote(p):
        path(p).unlink()
    else:
        os.remove(p)


def rmtree(p: str | os.PathLike[str]) -> None:
    """Removes folder `p` and everything in it; nothing when it is not there."""
    if is_remote(p):
        if path(p).exists():
            path(p).rmtree()
    else:
        shutil.rmtree(p, ignore_errors=True)


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Moves folder `src` to `dst`, replacing what was there. Locally by renames: the old `dst`
    is moved aside to `dst.old` first and removed last, so `dst` is never half written; in a
    bucket, where a folder is only a name prefix, the objects are copied and the source
    removed (not atomic: a reader in between may see a partial `dst`)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src) and not is_remote(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(dst):
            os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    rmtree(dst)
    _copy_tree(src, dst)
    rmtree(src)


def _copy_tree(src: str, dst: str) -> None:
    """Copies the files under folder `src` to the same names under `dst`."""
    makedirs(dst)
    for name in listdir(src):
        source, target = os.path.join(src, name), os.path.join(dst, name)
        if isdir(source):
            _copy_tree(source, target)
        else:
            path(source).copy(path(target), overwrite=True)


def read_bytes(p: str | os.PathLike[str]) -> bytes:
    if not is_remote(p):
        with open(p, "rb") as f:
            return f.read()
    return path(p).read_bytes()


def read_text(p: str | os.PathLike[str], errors_: str = "strict") -> str:
    """The UTF-8 text of `p` (`errors_`: how to decode bad bytes, as `open`'s `errors`)."""
    return read_bytes(p).decode("utf-8", errors=errors_)


def read_json(p: str | os.PathLike[str]) -> Any:
    return json.loads(read_text(p))


def write_atomic(path_: str | os.PathLike[str], data: bytes | str) -> str:
    """Writes `data` to `path_` atomically (folders made as needed); returns the path.

    Locally the file gets mode 0644 (mkstemp's temporary file is 0600); on any error the
    temporary file is removed and the old file is left as it was. In a bucket the object is
    uploaded whole, which replaces the old one atomically. In a multi-host job only process 0
    writes (`hosts.is_writer`): every host computed the same `data`.
    """
    p = os.fspath(path_)
    if not hosts.is_writer():
        return p
    data = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(p):
        path(p).write_bytes(data)
        return p
    folder = os.path.dirname(os.path.abspath(p))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(p)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_json(path_: str | os.PathLike[str], obj: Any, *, indent: int = 2,
               allow_nan: bool = True) -> str:
    """Writes `obj` as JSON (keys sorted, `indent`, a final newline) atomically; returns the
    path. `allow_nan=False` refuses NaN and infinities (strict JSON) with a ValueError."""
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=allow_nan) + "\n"
    return write_atomic(path_, text)
