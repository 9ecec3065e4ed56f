"""Sweeps: a config's `get_sweep()` points, each run in its own workdir (experiments/sweep.py).

A config file may define `get_sweep(arg)` (or `get_sweep()`) returning a list of override dicts
{dotted config key: value}; `product` and `zipped` build such lists. Each point runs the entry
module (`python -m ENTRY --config=FILE:ARG --workdir=ROOT/points/NAME --config.KEY=VALUE ...`)
as its own process, so a point that fails (non-zero exit) is recorded and the others go on.

ROOT/sweep.json records the points (name, overrides, command, status, return code, wall time and
the tail of a failed point's log); ROOT/points/NAME/log.txt holds each point's output and
ROOT/points/NAME/DONE marks a finished point, which a re-run skips. A point stopped by SIGTERM
(exit status cli.EXIT_PREEMPTED: saved, resumable) is recorded as preempted, not done, so that a
re-run resumes it.

Launchers (experiments/sweep.py --launcher):
  local   runs the points here, `--parallel` at a time, each slot on devices of its own (`run`).
  print   writes each point's command line, for a scheduler of one's own (`print_commands`).
  tpu_vm  writes, per point, the `gcloud compute tpus tpu-vm ssh NAME --worker=all` command that
          runs it on every worker of a TPU pod at once; jax finds the pod's workers itself
          (`--coordinator_address=auto`). launchers.tpu_vm_script.
  slurm   submits each point as a SLURM job through submitit (sbatch), records its job id, and
          waits for it: the job runs the same `run_point` as the local launcher, so DONE, the log
          and the record (done / failed / preempted) are the same. launchers.run_slurm.
A launcher that starts several processes per point (a pod; a SLURM job of several tasks) adds
`--coordinator_address=auto` to each point's command (learned_loss/core/distributed.py), so
extra flags may not set the entry's distributed flags then.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import itertools
import os
import queue
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from typing import Any, Callable, Mapping, Sequence

from learned_loss.core import cli, errors, files

SWEEP_FILE = "sweep.json"
DONE = "DONE"


class SweepError(errors.UserError):
    """A config without `get_sweep`, or a sweep that is not a list of override dicts."""


def product(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values: product(a=[1, 2], b=[3]) -> [{a:1,b:3},{a:2,b:3}]."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zipped(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The axes' values side by side; every axis must have the same length."""
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise SweepError(f"zipped axes differ in length: {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values)) for values in zip(*(axes[k] for k in keys))]


def load_sweep(config_spec: str) -> list[dict[str, Any]]:
    """The override dicts of `get_sweep` in FILE[:ARG]."""
    path, _, arg = config_spec.partition(":")
    if not os.path.exists(path):
        raise SweepError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path} defines no get_sweep(); add one returning a list of override "
                         f"dicts (learned_loss.studies.sweep.product / zipped)")
    points = module.get_sweep(*_sweep_args(module.get_sweep, arg, path))
    if not isinstance(points, list) or not points or not all(isinstance(p, dict)
                                                             for p in points):
        raise SweepError(f"{path}: get_sweep() must return a non-empty list of dicts, got "
                         f"{type(points).__name__}")
    return points


def _sweep_args(get_sweep: Callable[..., Any], arg: str, path: str) -> tuple[str, ...]:
    """The arguments `get_sweep` is called with: (ARG,) when it takes a parameter, () when it
    takes none (then an ARG is refused rather than dropped); read from its signature, so that
    an error raised inside the function is never mistaken for a call without its argument."""
    takes_arg = bool(inspect.signature(get_sweep).parameters)
    if arg and not takes_arg:
        raise SweepError(f"{path}: get_sweep() takes no argument, but the config names {arg!r}; "
                         f"drop ':{arg}' or give get_sweep a parameter")
    return (arg,) if arg and takes_arg else ()


def flag_value(value: Any) -> str:
    """A config override as config_flags parses it (tuples and lists as Python literals)."""
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def point_name(index: int, overrides: Mapping[str, Any]) -> str:
    """A stable, file-system-safe name: '003-lr=0.001,seeds=3'."""
    text = ",".join(f"{k}={flag_value(v)}" for k, v in overrides.items())
    return f"{index:03d}-" + re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)[:120]


@dataclasses.dataclass
class Point:
    name: str
    overrides: dict[str, Any]
    command: list[str]


# The entry's multi-host flags (learned_loss/core/distributed.py): a launcher that starts several
# processes per point sets them (--coordinator_address=auto), so extra flags may not.
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id")
COORDINATOR_AUTO = "--coordinator_address=auto"


def points(config_spec: str, root: str, entry: str, extra_flags: Sequence[str] = (),
           python: str = sys.executable, distributed: bool = False) -> list[Point]:
    """One Point per override dict, with the command line that runs it; `extra_flags`
    (`--NAME=VALUE`) are added to every point's, and refused where they set what the sweep
    sets (the config, the workdir or a swept key). `distributed`: each point runs as several
    processes that find each other (a TPU pod, a multi-task SLURM job): `--coordinator_address=
    auto` ends every command, and extra flags may not set the distributed flags. The workdir
    is joined as a string, so a bucket root (gs://...) stays one."""
    sweeps = load_sweep(config_spec)
    check_extra_flags(extra_flags, {k for overrides in sweeps for k in overrides},
                      DISTRIBUTED_FLAGS if distributed else ())
    out = []
    for i, overrides in enumerate(sweeps):
        name = point_name(i, overrides)
        workdir = os.path.join(root, "points", name)
        command = [python, "-m", entry, f"--config={config_spec}", f"--workdir={workdir}"]
        command += [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]
        command += list(extra_flags) + ([COORDINATOR_AUTO] if distributed else [])
        out.append(Point(name, dict(overrides), command))
    return out


def check_extra_flags(extra_flags: Sequence[str], swept: set[str],
                      reserved: Sequence[str] = ()) -> None:
    """SweepError unless each extra flag is `--NAME[=VALUE]` for a NAME the sweep leaves free
    (not the config, the workdir, a swept key, nor a `reserved` flag the launcher sets)."""
    for flag in extra_flags:
        name = flag[2:].split("=", 1)[0] if flag.startswith("--") else ""
        if not name:
            raise SweepError(f"extra argument {flag!r}: the points take flags, --NAME=VALUE")
        if name in ("config", "workdir") or name.removeprefix("config.") in swept:
            raise SweepError(f"extra flag {flag!r} sets what the sweep sets for each point; "
                             f"change get_sweep() instead")
        if name in reserved:
            raise SweepError(f"extra flag {flag!r}: this launcher starts several processes per "
                             f"point and sets --coordinator_address=auto itself; drop the flag")


def print_commands(pts: Sequence[Point]) -> str:
    """One shell command line per point (for a cluster scheduler)."""
    return "\n".join(shlex.join(p.command) for p in pts) + "\n"


def _tail(text: str, lines: int = 20) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


def status(returncode: int) -> str:
    """A point's status from its exit status: done, preempted (resumable) or failed."""
    if returncode == 0:
        return "done"
    return "preempted" if returncode == cli.EXIT_PREEMPTED else "failed"


def run_point(point: Point, root: str, env: Mapping[str, str], log_name: str = "log.txt",
              mark_done: bool = True) -> dict:
    """Runs one point to the end in the environment `env`; its record for sweep.json. The output
    goes to ROOT/points/NAME/`log_name` (in a bucket: written to a local file while the point
    runs, uploaded when it ends); a point that exits 0 gets its DONE when `mark_done` (one
    process of several, as in a multi-task SLURM job, leaves that to the first)."""
    workdir = os.path.join(root, "points", point.name)
    files.makedirs(workdir)
    log = os.path.join(workdir, log_name)
    start = time.time()
    remote = files.is_remote(log)
    # errors="replace": a point's output that is not UTF-8 still reads back as its log's tail.
    with (tempfile.NamedTemporaryFile("w+", suffix=".log", errors="replace") if remote
          else open(log, "w+", errors="replace")) as f:
        rc = subprocess.run(point.command, stdout=f, stderr=subprocess.STDOUT,
                            env=dict(env)).returncode
        f.seek(0)
        text = f.read()
    if remote:
        files.write_atomic(log, text)
    record = {"name": point.name, "overrides": point.overrides, "command": point.command,
              "returncode": rc, "status": status(rc), "seconds": round(time.time() - start, 1)}
    if rc == 0:
        if mark_done:
            files.write_atomic(os.path.join(workdir, DONE), "")
    else:
        record["log_tail"] = _tail(text)
    return record


def write_records(root: str, records: Mapping[str, dict]) -> None:
    files.write_json(os.path.join(root, SWEEP_FILE),
                     {"points": [records[k] for k in sorted(records)]}, indent=1)


def read_records(root: str) -> dict[str, dict]:
    path = os.path.join(root, SWEEP_FILE)
    if not files.exists(path):
        return {}
    return {r["name"]: r for r in files.read_json(path)["points"]}


def visible_gpus(env: Mapping[str, str] = os.environ,
                 proc: str = "/proc/driver/nvidia/gpus") -> list[str]:
    """The NVIDIA GPUs the sweep may hand out: CUDA_VISIBLE_DEVICES when set, else one id per
    GPU the driver lists (none on a machine without one)."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    return [str(i) for i in range(len(os.listdir(proc)))] if os.path.isdir(proc) else []


def has_tpu(dev: str = "/dev") -> bool:
    """Whether this host has TPU chips (their /dev/accel* or /dev/vfio devices)."""
    return os.path.isdir(dev) and any(n.startswith("accel") or n == "vfio"
                                      for n in os.listdir(dev))


def device_slots(parallel: int, gpus: Sequence[str], tpu: bool) -> list[dict[str, str]]:
    """The environment of each of `parallel` slots: on GPUs each slot its own share of them
    (CUDA_VISIBLE_DEVICES; otherwise every point would see, and preallocate 75% of, every GPU);
    on a CPU host nothing to split. SweepError where the points cannot have devices of their
    own: more slots than GPUs, or more than one on a TPU host (its chips are not split)."""
    if parallel < 1:
        raise SweepError(f"--parallel must be >= 1, got {parallel}")
    if parallel > 1 and tpu:
        raise SweepError(f"--parallel={parallel} on a TPU host: its chips are not split between "
                         f"points; use --parallel=1 (or a host per point: --launcher=print)")
    if not gpus or parallel == 1:
        return [{} for _ in range(parallel)]
    if parallel > len(gpus):
        raise SweepError(f"--parallel={parallel} on {len(gpus)} GPUs: each point needs a GPU of "
                         f"its own; use --parallel={len(gpus)} or fewer")
    shares = [gpus[i::parallel] for i in range(parallel)]  # round robin, every GPU used
    return [{"CUDA_VISIBLE_DEVICES": ",".join(share)} for share in shares]


def unfinished(pts: Sequence[Point], root: str,
               log: Callable[[str], None] = print) -> tuple[dict[str, dict], list[Point]]:
    """(records, the points to run): the records of ROOT/sweep.json (created), with a done record
    for each point whose DONE exists (skipped, logged), and the other points in order. ROOT may
    be a bucket (gs://...)."""
    files.makedirs(root)
    records = read_records(root)
    todo = []
    for p in pts:
        if files.exists(os.path.join(root, "points", p.name, DONE)):
            records.setdefault(p.name, {"name": p.name, "overrides": p.overrides,
                                        "command": p.command, "status": "done",
                                        "returncode": 0})
            log(f"{p.name}: finished earlier, skipped")
        else:
            todo.append(p)
    write_records(root, records)
    return records, todo


def run(pts: Sequence[Point], root: str, parallel: int = 1, log: Callable[[str], None] = print,
        env: Mapping[str, str] | None = None, gpus: Sequence[str] | None = None,
        tpu: bool | None = None) -> dict[str, dict]:
    """Runs the unfinished points, `parallel` processes at a time, each slot on devices of its
    own (`device_slots`; gpus and tpu: what this host has, found when None); finished points
    (DONE) are skipped. Returns name -> record (also in ROOT/sweep.json, updated as points
    end)."""
    slots = device_slots(parallel, visible_gpus() if gpus is None else gpus,
                         has_tpu() if tpu is None else tpu)
    records, todo = unfinished(pts, root, log)
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def in_a_slot(point: Point) -> dict:
        slot = free.get()  # a slot is free whenever a worker starts: as many of each
        try:
            return run_point(point, root, dict(env if env is not None else os.environ, **slot))
        finally:
            free.put(slot)

    with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        running = {pool.submit(in_a_slot, p): p for p in todo}
        for done in futures.as_completed(running):
            record = done.result()
            records[record["name"]] = record
            write_records(root, records)
            log(f"{record['name']}: {record['status']} ({record['seconds']:.0f}s)")
    return records
