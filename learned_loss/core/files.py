"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one,
never half of either.

  write_atomic(path, data)     bytes or text into a temporary file beside `path`, flushed to
                               disk, then renamed over it (os.replace is atomic on POSIX)
  write_json(path, obj)        the same for JSON: keys sorted, indented, a final newline
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> str:
    """Writes `data` to `path` atomically (folders made as needed); returns the path.

    The file gets mode 0644 (mkstemp's temporary file is 0600); on any error the temporary
    file is removed and the old `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2,
               allow_nan: bool = True) -> str:
    """Writes `obj` as JSON (keys sorted, `indent`, a final newline) atomically; returns the
    path. `allow_nan=False` refuses NaN and infinities (strict JSON) with a ValueError."""
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=allow_nan) + "\n"
    return write_atomic(path, text)
