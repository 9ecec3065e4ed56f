"""The environment that keeps libtpu on this machine (no jax import here: it must be applied
before jax is imported).

With libtpu installed (`pip install '.[tpu]'`, and the `test` extra), a process that imports jax
without these settings lets libtpu look for TPU chips and ask a cloud metadata server what it
runs on: network traffic that must never leave a machine without TPUs. `OFFLINE` answers the
questions libtpu would ask (no metadata server, one worker on localhost) and keeps jax on the
CPU; `apply` sets each one a process has not set itself (a real TPU VM sets JAX_PLATFORMS to
use its chips). `ALLOW_MULTIPLE_LIBTPU_LOAD` lets several processes load libtpu at once
(without it the second waits on /tmp/libtpu_lockfile and fails): a dry run only compiles.
"""

from __future__ import annotations

import os
from typing import MutableMapping

OFFLINE = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
           "JAX_PLATFORMS": "cpu"}
# What a dry run (compile only, learned_loss.core.dry_run) adds.
COMPILE_ONLY = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def apply(environ: MutableMapping[str, str] = os.environ, **forced: str) -> None:
    """Sets every variable of OFFLINE that `environ` lacks, and `forced` ones outright."""
    for key, value in OFFLINE.items():
        environ.setdefault(key, value)
    environ.update(forced)
