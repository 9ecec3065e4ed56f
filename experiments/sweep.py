"""Runs every point of a config's `get_sweep()`, each in its own workdir
(learned_loss/studies/sweep.py; the TPU VM and SLURM launchers: learned_loss/studies/launchers.py).

  python -m experiments.sweep --config=configs/compare.py:tiny --workdir=ROOT [--parallel=2]
  python -m experiments.sweep --config=configs/pretrain.py:tiny --entry=experiments.pretrain \
      --workdir=ROOT --launcher=print > commands.txt   # one line per point, for a scheduler
  python -m experiments.sweep --config=configs/compare.py:tiny --workdir=ROOT -- --config.steps=50
      # flags after `--` reach every point (not one that the sweep itself sets)
  python -m experiments.sweep --config=configs/compare.py:tiny --workdir=gs://BUCKET/sweep \
      --launcher=tpu_vm --tpu_name=POD --tpu_zone=us-central2-b [--tpu_project=P] \
      [--remote_dir=learned_loss] [--python=python3]
      # prints (and, for a local ROOT, writes ROOT/launch_tpu_vm.sh) one
      # `gcloud compute tpus tpu-vm ssh POD --worker=all --command=...` line per point
  python -m experiments.sweep --config=configs/compare.py:tiny --workdir=/shared/sweep \
      --launcher=slurm --slurm_partition=gpu --slurm_time=240 --slurm_gpus_per_node=8 \
      [--slurm_nodes=2 --slurm_tasks_per_node=1] [--slurm_cluster=local]
      # one submitit job per point; waits for them and records each as the local launcher does

Locally the points run one after another or `--parallel` at a time (on GPUs each with GPUs of
its own; refused above the GPU count, and above 1 on a TPU host); finished points are skipped
on a re-run, and a failed point is recorded in ROOT/sweep.json without stopping the others (the
run then exits 2); a point stopped by SIGTERM is resumed by a re-run (the run exits 75 when one
was and none failed). `python -m experiments.report --workdir=ROOT` aggregates the sweep.

`--launcher=tpu_vm` runs nothing: each line runs its point on every worker of the pod, in the
checkout `--remote_dir` (relative to the VM's home), with `--python` (python3: the local
interpreter's path means nothing there) and `--coordinator_address=auto` (jax finds the pod's
workers). The workdir should be a bucket (gs://...) that every worker writes to.

`--launcher=slurm` submits each unfinished point through submitit (sbatch; its files go to
ROOT/slurm), records the job ids, waits, and records each point's status as the local launcher
does (the job runs the same code: DONE, log, done / failed / preempted; the sweep exits as the
local one). With more than one process per job (`--slurm_nodes` x `--slurm_tasks_per_node`)
each point gets `--coordinator_address=auto` and jax reads SLURM's environment; one task per
node (the default) drives all of its node's GPUs. `--slurm_cluster=local` runs the jobs on this
machine through submitit's LocalExecutor (one node): for tests, and to try a sweep first.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from learned_loss.core import cli, files
from learned_loss.studies import launchers, sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file and variant, FILE:ARG, defining "
                              "get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root: ROOT/points/NAME per point (a "
                               "gs:// bucket for --launcher=tpu_vm).")
_ENTRY = flags.DEFINE_string("entry", "experiments.compare_objectives",
                             "Module each point runs with python -m.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once (local launcher).")
_LAUNCHER = flags.DEFINE_enum(
    "launcher", "local", ["local", "print", "tpu_vm", "slurm"],
    "local: run the points here; print: write their command lines; tpu_vm: write the gcloud "
    "ssh line that runs each on every worker of a TPU pod; slurm: submit each through submitit.")
_PYTHON = flags.DEFINE_string("python", None, "Interpreter in each point's command; default "
                              "python3 for tpu_vm (on the VM), this interpreter otherwise.")
_TPU_NAME = flags.DEFINE_string("tpu_name", None, "tpu_vm: the TPU VM (pod) name.")
_TPU_ZONE = flags.DEFINE_string("tpu_zone", None, "tpu_vm: its zone (default: gcloud's).")
_TPU_PROJECT = flags.DEFINE_string("tpu_project", None, "tpu_vm: its project (default: "
                                   "gcloud's).")
_REMOTE_DIR = flags.DEFINE_string("remote_dir", "learned_loss", "tpu_vm: the checkout on the "
                                  "VM, relative to the ssh user's home, where points run.")
_SLURM_CLUSTER = flags.DEFINE_enum("slurm_cluster", "slurm", list(launchers.SLURM_CLUSTERS),
                                   "slurm: sbatch; local: submitit's LocalExecutor on this "
                                   "machine (tests, trying a sweep).")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "slurm: partition (default: "
                                       "the cluster's).")
_SLURM_TIME = flags.DEFINE_integer("slurm_time", 240, "slurm: each job's time limit, minutes.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_node", 1, "slurm: GPUs per node.")
_SLURM_NODES = flags.DEFINE_integer("slurm_nodes", 1, "slurm: nodes per job (per point).")
_SLURM_TASKS = flags.DEFINE_integer("slurm_tasks_per_node", 1, "slurm: processes per node; "
                                    "more than one process per job adds "
                                    "--coordinator_address=auto.")


def slurm_settings() -> launchers.Slurm:
    """The SLURM flags as launchers.Slurm."""
    return launchers.Slurm(partition=_SLURM_PARTITION.value, time_min=_SLURM_TIME.value,
                           gpus_per_node=_SLURM_GPUS.value, nodes=_SLURM_NODES.value,
                           tasks_per_node=_SLURM_TASKS.value, cluster=_SLURM_CLUSTER.value)


def write_tpu_vm(points: list[sweep.Point]) -> None:
    """Prints the TPU VM script and writes it to ROOT (a bucket, on a pod)."""
    script = launchers.tpu_vm_script(points, _TPU_NAME.value, _TPU_ZONE.value,
                                     _TPU_PROJECT.value, _REMOTE_DIR.value)
    if not files.is_remote(_WORKDIR.value):
        logging.warning("--workdir=%s is not a bucket: every worker of a pod writes its own "
                        "copy (fine on a single-host TPU VM)", _WORKDIR.value)
    logging.info("wrote %s", launchers.write_tpu_vm_script(_WORKDIR.value, script))
    sys.stdout.write(script)


def finish(records: dict[str, dict]) -> None:
    """Exits 2 when a point failed, EXIT_PREEMPTED when one was stopped by SIGTERM."""
    failed = sorted(n for n, r in records.items() if r["status"] == "failed")
    if failed:
        for name in failed:
            logging.error("point %s failed (exit %s); log tail:\n%s", name,
                          records[name]["returncode"], records[name].get("log_tail", ""))
        cli.fail(f"{len(failed)} of {len(records)} points failed: {failed}; see "
                 f"{_WORKDIR.value}/sweep.json")
    preempted = sorted(n for n, r in records.items() if r["status"] == "preempted")
    if preempted:
        raise cli.Preempted(f"{len(preempted)} of {len(records)} points stopped by SIGTERM "
                            f"({preempted}); re-run the sweep to resume them")


def main(argv):
    if not _CONFIG.value or not _WORKDIR.value:
        raise cli.UserError("--config=FILE:ARG and --workdir=ROOT are required")
    launcher = _LAUNCHER.value
    if launcher == "tpu_vm" and not _TPU_NAME.value:
        raise cli.UserError("--tpu_name is required with --launcher=tpu_vm: the TPU VM (pod) "
                            "that runs the points")
    slurm = slurm_settings()
    if launcher == "slurm":
        launchers.check_slurm(slurm)
    python = _PYTHON.value or ("python3" if launcher == "tpu_vm" else sys.executable)
    distributed = launcher == "tpu_vm" or launcher == "slurm" and slurm.distributed
    points = sweep.points(_CONFIG.value, _WORKDIR.value, _ENTRY.value, extra_flags=argv[1:],
                          python=python, distributed=distributed)
    if launcher == "print":
        sys.stdout.write(sweep.print_commands(points))
        return
    if launcher == "tpu_vm":
        write_tpu_vm(points)
        return
    if launcher == "slurm":
        finish(launchers.run_slurm(points, _WORKDIR.value, slurm, log=logging.info))
        return
    finish(sweep.run(points, _WORKDIR.value, _PARALLEL.value, log=logging.info))


if __name__ == "__main__":
    cli.run(main)
