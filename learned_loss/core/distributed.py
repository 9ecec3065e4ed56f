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
from typing import Optional

import jax
from absl import flags, logging

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
