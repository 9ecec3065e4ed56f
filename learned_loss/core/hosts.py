"""Working across the hosts of a multi-host job (after `distributed.initialize` joined it).

Every host runs the same program. Sharded programs divide their work over all hosts' devices;
what runs outside them follows a few rules, each a small function here:

  is_writer()                process 0 writes the job's files (the others computed the same)
  agree(flag)                a decision read from shared storage, taken as process 0 takes it
  host_value(x)              a global array's whole value on this host (gathered if needed)
  barrier(name)              every host waits until all reach this point
  first_on_process_zero(fn)  idempotent preparation (building a dataset) on process 0 first

Each is a no-op, or the plain single-process answer, when the job has one process; that is
told without starting a jax backend (`jax.distributed.is_initialized`), so a process that
writes files but never computes (a sweep's driver) does not start one.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def _several() -> bool:
    """Whether this process is one of several of a joined multi-host job."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the job's files: process 0 of a multi-host job (every
    process computes the same values; one writes them), or the only process."""
    return not _several() or jax.process_index() == 0


def agree(flag: bool) -> bool:
    """Process 0's `flag` on every host: a decision read from shared storage (is a stage
    finished? is a file there?) that all hosts must take alike, though a host may look a
    moment before or after another writes. A no-op in a single-process run."""
    if not _several():
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))


def host_value(x: jax.Array) -> np.ndarray:
    """A global array's whole value on this host: gathered across processes when some of its
    shards live on other hosts (every process must call it), else read directly."""
    if _several() and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def barrier(name: str) -> None:
    """Waits until every host reaches this point (no-op in a single-process run)."""
    if _several():
        multihost_utils.sync_global_devices(name)


def first_on_process_zero(fn: Callable[[], T], name: str) -> T:
    """Runs `fn` on process 0, waits for it on every host, then runs it on the others.

    For idempotent preparation into shared storage (building a dataset that later calls find
    and reuse), so that hosts never race to write the same files.
    """
    if not _several():
        return fn()
    result = fn() if is_writer() else None
    barrier(name)
    return fn() if result is None else result
