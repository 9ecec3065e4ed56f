"""Multi-host start-up: `jax.distributed.initialize` from flags or environment variables.

One program runs on every host of a pod; each process must be told the coordinator's address,
the number of processes and its own id. They come from flags (`--coordinator_address`,
`--num_processes`, `--process_id`) or, when a flag is unset, from the environment variables
LEARNED_LOSS_COORDINATOR_ADDRESS, LEARNED_LOSS_NUM_PROCESSES and LEARNED_LOSS_PROCESS_ID.
`--coordinator_address=auto` lets JAX detect the cluster itself (Cloud TPU, SLURM, ...).
With none of them set, this is a no-op: a single-process run.

Joining starts jax's preemption service too (`jax_enable_preemption_service`, on by default and
kept on here): its SIGTERM handler and sync manager are what `loop.StopSignal` asks, through
orbax, for the step at which every host saves and stops.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

T = TypeVar("T")

_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for multi-host runs, or 'auto' to let JAX detect the cluster.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")

ENV_PREFIX = "LEARNED_LOSS_"


def _value(flag_value, env_name: str):
    if flag_value is not None:
        return flag_value
    return os.environ.get(ENV_PREFIX + env_name)


def initialize(address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """Joins the multi-host job if one is configured. Returns whether it did.

    CPU processes talk over gloo (the only CPU collectives that work across processes here);
    the setting only affects the CPU backend, so it is harmless on GPU and TPU. The preemption
    service must be on when `jax.distributed.initialize` runs (it is read there, once), or no
    host would stop on SIGTERM: set here whatever the environment says.
    """
    address = address if address is not None else _value(_ADDRESS.value, "COORDINATOR_ADDRESS")
    num = num_processes if num_processes is not None else _value(
        _NUM_PROCESSES.value, "NUM_PROCESSES")
    pid = process_id if process_id is not None else _value(_PROCESS_ID.value, "PROCESS_ID")
    if address is None:
        if num is not None or pid is not None:
            raise ValueError("--num_processes/--process_id were given without "
                             "--coordinator_address; pass all three (or none)")
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", True)
    if address == "auto":
        jax.distributed.initialize()
    else:
        if num is None or pid is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(address, num_processes=int(num), process_id=int(pid))
    logging.info("process %d of %d joined %s; %d local of %d global devices",
                 jax.process_index(), jax.process_count(), address,
                 jax.local_device_count(), jax.device_count())
    return True


def is_writer() -> bool:
    """Whether this process writes the job's files: process 0 of a multi-host job (every
    process computes the same values; one writes them), or the only process."""
    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """Process 0's `flag` on every host: a decision read from shared storage (is a stage
    finished? is a file there?) that all hosts must take alike, though a host may look a
    moment before or after another writes. A no-op in a single-process run."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))


def host_value(x: jax.Array) -> np.ndarray:
    """A global array's whole value on this host: gathered across processes when some of its
    shards live on other hosts (every process must call it), else read directly."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def barrier(name: str) -> None:
    """Waits until every host reaches this point (no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def first_on_process_zero(fn: Callable[[], T], name: str) -> T:
    """Runs `fn` on process 0, waits for it on every host, then runs it on the others.

    For idempotent preparation into shared storage (building a dataset that later calls find
    and reuse), so that hosts never race to write the same files.
    """
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(name)
    return fn() if result is None else result
