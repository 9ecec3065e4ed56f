"""The studies kernel: finished results keyed by the hash of their settings, and stages run once.

A study (the objective comparison, the noisy-demonstration grid, the scaling, diversity and
emergence studies, the RLHF pipeline's shared stages) is a list of cells, each an expensive
computation whose result is a small JSON record. Re-running the study skips the cells already
done; a cell computed under other settings is refused (one line naming the file and the fix),
never reported as if it had been computed under these.

  Store(root)                      one JSON record per key under `root`
    .read(key, settings)           the record, or None when the cell is not done yet
    .write(key, settings, record)  the record with its settings hash, written atomically
    .claim(key, settings)          records the settings of a cell that is about to run (a
                                   resumable run keeps partial results) or checks them
  ensure(what, done, build, ...)   runs a stage unless its output is there; a stage that
                                   returned without finishing (SIGTERM) stops the job

Settings hashes come from `provenance.config_hash` (the config's resolved values without the
keys that name which cells there are).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping, Optional

from learned_loss.core import cli, files, hosts, loop
from learned_loss.core import timing as timing_lib

HASH_KEY = "config_hash"  # The field of a record holding its settings hash.


class Store:
    """Records under `root`, one `KEY.json` each, each holding the hash of its settings.

    `fix` is what a refusal tells the user to do (default: a new workdir, or remove `root`)."""

    def __init__(self, root: str, fix: str = ""):
        self.root = root
        self.fix = fix or f"use a new workdir or remove {root} to recompute"

    def path(self, key: str) -> str:
        return os.path.join(self.root, f"{key}.json")

    def exists(self, key: str) -> bool:
        return files.exists(self.path(key))

    def read(self, key: str, settings: str) -> Optional[dict]:
        """The record of `key` (None when there is none); cli.UserError when it is unreadable or
        was computed under settings other than `settings`.

        In a multi-host job every host gets process 0's answer (a host may look before or after
        process 0 writes the record; a record that process 0 found is read again after it)."""
        record = self._read(key, settings)
        if not hosts.agree(record is not None):
            return None
        return record if record is not None else self._read(key, settings)

    def _read(self, key: str, settings: str) -> Optional[dict]:
        """`read` on this host alone."""
        path = self.path(key)
        if not files.exists(path):
            return None
        try:
            record = files.read_json(path)
            found = record[HASH_KEY]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise cli.UserError(f"{path} is unreadable ({e!r}); {self.fix}") from None
        if found != settings:
            raise cli.UserError(f"{path} was computed with other settings (config hash {found}, "
                                f"now {settings}); {self.fix}")
        return record

    def write(self, key: str, settings: str, record: Mapping[str, Any]) -> dict:
        """Writes `record` with its settings hash (atomically); returns what was written."""
        record = dict(record, **{HASH_KEY: settings})
        files.write_json(self.path(key), record)
        return record

    def claim(self, key: str, settings: str) -> None:
        """Before a resumable run: records `settings` for `key`, or refuses a key recorded
        under other settings (its partial run would be resumed as if it had these)."""
        if self.read(key, settings) is None:
            self.write(key, settings, {})


def add_seconds(timing: str, seconds: float) -> float:
    """Adds `seconds` to the total kept in the JSON file `timing` (a resumed stage adds its
    time to the earlier attempts'); returns the total."""
    total = seconds + recorded_seconds(timing, default=0.0)
    files.write_json(timing, {"seconds": total})
    return total


def recorded_seconds(timing: str, default: float = float("nan")) -> float:
    """The seconds kept in `timing` (`default` when a stage ran before timing was kept)."""
    if not files.exists(timing):
        return default
    return float(files.read_json(timing)["seconds"])


def ensure(what: str, done: Callable[[], bool], build: Callable[[], Any], where: str,
           timing: str = "") -> bool:
    """Runs `build()` unless `done()`; returns whether it ran.

    `what` names the stage in messages and `where` its folder. A build that returns without
    finishing (a SIGTERM stopped it) stops the job with cli.Preempted; one that returns unfinished
    for another reason fails with a one-line cli.UserError. With `timing`, the seconds the build
    took are added to that file's total; a stage found done is noted in the open stage of the
    job's wall-time account (core/timing.py). In a multi-host job every host builds together
    (`build` runs sharded programs) and all take process 0's view of `done()`.
    """
    if hosts.agree(done()):
        timing_lib.note(f"{what} done before")
        return False
    loop.raise_if_stopped(what)
    start = time.time()
    build()
    if not hosts.agree(done()):
        loop.raise_if_stopped(f"the end of {what}")
        raise cli.UserError(f"{what} in {where} stopped before it finished; re-run to resume it")
    if timing:
        add_seconds(timing, time.time() - start)
    return True
