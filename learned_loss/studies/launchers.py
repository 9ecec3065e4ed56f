"""Sweep launchers on real engines: a TPU VM pod through `gcloud ... ssh --worker=all`, and
SLURM through submitit (learned_loss/studies/sweep.py makes the points; experiments/sweep.py
picks the launcher).

TPU VM (`--launcher=tpu_vm`): one command line per point, which this module writes and does not
run. `gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command=REMOTE` runs REMOTE
on every worker of the pod at once; REMOTE cds into the checkout on the VM (`remote_dir`,
relative to the ssh user's home) and runs the point with `--coordinator_address=auto`, with
which jax finds the pod's workers itself. The lines run one after another, each point on the
whole pod. Every worker writes into the same workdir, so on a pod it is a bucket (gs://...).

SLURM (`--launcher=slurm`): each point is one job (submitit's sbatch executor), whose task runs
`sweep.run_point`, the very function of the local launcher: the same log, the same DONE, the
same record (done / failed / preempted, exit cli.EXIT_PREEMPTED: no DONE, a re-run resumes
it). The sweep records each job id as it submits, then waits and records each job's outcome.
A job of several tasks (nodes x tasks per node) runs the point as that many processes, which
find each other from SLURM's environment (`--coordinator_address=auto`); task 0 writes log.txt,
DONE and the record, task N log.taskN.txt. submitit's own files go to ROOT/slurm. A sweep
stopped while it waits leaves its jobs running (they write their DONE); re-run it once they have
ended, or a point whose job still runs is submitted again. The cluster
`local` (submitit's LocalExecutor: the jobs run on this machine, one node) is for tests and for
trying a sweep before a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import time
from typing import Callable, Sequence

import submitit
from submitit.core import utils as submitit_utils

from learned_loss.core import files
from learned_loss.studies import sweep

TPU_VM_SCRIPT = "launch_tpu_vm.sh"
SLURM_FOLDER = "slurm"
SLURM_CLUSTERS = ("slurm", "local")


# ---- TPU VM pods ---------------------------------------------------------------------------

def tpu_vm_command(command: Sequence[str], name: str, zone: str | None = None,
                   project: str | None = None, remote_dir: str = "learned_loss") -> str:
    """The shell line that runs `command` on every worker of the TPU VM `name`: gcloud's ssh with
    --worker=all and --command='cd REMOTE_DIR && COMMAND', each part quoted (shlex) so that it
    reaches the VM's shell as the same argv. Zone and project default to gcloud's config."""
    if not name:
        raise sweep.SweepError("--tpu_name is required with --launcher=tpu_vm: the TPU VM (pod) "
                               "that runs the points")
    remote = f"cd {shlex.quote(remote_dir)} && {shlex.join(command)}"
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name]
    argv += [f"--zone={zone}"] if zone else []
    argv += [f"--project={project}"] if project else []
    return shlex.join(argv + ["--worker=all", f"--command={remote}"])


def tpu_vm_script(pts: Sequence[sweep.Point], name: str, zone: str | None = None,
                  project: str | None = None, remote_dir: str = "learned_loss") -> str:
    """A bash script with one `tpu_vm_command` line per point, run one after another; a point
    that fails does not stop the next (no `set -e`), as in the local launcher."""
    lines = [tpu_vm_command(p.command, name, zone, project, remote_dir) for p in pts]
    return "#!/bin/bash\n# One line per sweep point, each on every worker of the pod.\n" + \
        "\n".join(lines) + "\n"


def write_tpu_vm_script(root: str, script: str) -> str:
    """Writes `script` to ROOT/launch_tpu_vm.sh (in a bucket too; executable where local) and
    returns its path."""
    path = files.write_atomic(os.path.join(root, TPU_VM_SCRIPT), script)
    if not files.is_remote(path):
        os.chmod(path, 0o755)
    return path


# ---- SLURM through submitit ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Slurm:
    """Each point's job: partition (None: the cluster's default), time limit in minutes, GPUs
    per node, nodes, tasks per node, and the submitit cluster ('slurm', or 'local': this
    machine)."""
    partition: str | None = None
    time_min: int = 240
    gpus_per_node: int = 1
    nodes: int = 1
    tasks_per_node: int = 1
    cluster: str = "slurm"

    @property
    def distributed(self) -> bool:
        """Whether a job runs its point as several processes (then --coordinator_address=auto)."""
        return self.nodes * self.tasks_per_node > 1


def check_slurm(settings: Slurm, which: Callable[[str], str | None] = shutil.which) -> None:
    """SweepError naming the flag for settings no job can have, or a cluster not reachable here."""
    if settings.cluster not in SLURM_CLUSTERS:
        raise sweep.SweepError(f"--slurm_cluster={settings.cluster}: one of {SLURM_CLUSTERS}")
    for flag, value, least in (("slurm_time", settings.time_min, 1),
                               ("slurm_gpus_per_node", settings.gpus_per_node, 0),
                               ("slurm_nodes", settings.nodes, 1),
                               ("slurm_tasks_per_node", settings.tasks_per_node, 1)):
        if value < least:
            raise sweep.SweepError(f"--{flag} must be >= {least}, got {value}")
    if settings.cluster == "local" and settings.nodes > 1:
        raise sweep.SweepError(f"--slurm_cluster=local runs on this machine, one node; use "
                               f"--slurm_nodes=1, not {settings.nodes}")
    if settings.cluster == "slurm" and which("sbatch") is None:
        raise sweep.SweepError("sbatch is not on PATH: run --launcher=slurm on a SLURM login "
                               "node (or try the sweep here with --slurm_cluster=local)")


def slurm_parameters(settings: Slurm) -> dict:
    """submitit AutoExecutor parameters; slurm_partition is ignored by the local cluster."""
    params = {"timeout_min": settings.time_min, "gpus_per_node": settings.gpus_per_node,
              "nodes": settings.nodes, "tasks_per_node": settings.tasks_per_node}
    if settings.partition:
        params["slurm_partition"] = settings.partition
    return params


def slurm_task(point: sweep.Point, root: str) -> dict:
    """What each task of a point's job runs: the point, as the local launcher runs it, in the
    task's environment (SLURM's variables included). Task 0 writes log.txt, DONE and the record
    the sweep keeps; task N logs to log.taskN.txt."""
    rank = submitit.JobEnvironment().global_rank
    return sweep.run_point(point, root, dict(os.environ),
                           log_name="log.txt" if rank == 0 else f"log.task{rank}.txt",
                           mark_done=rank == 0)


def job_record(point: sweep.Point, job: submitit.Job) -> dict:
    """The finished job's record: task 0's, with the job id; a job that ended without one
    (cancelled, out of time, its node lost) is failed, with submitit's error as the log tail."""
    try:
        record = job.results()[0]
    except submitit_utils.UncompletedJobError as e:
        record = {"name": point.name, "overrides": point.overrides, "command": point.command,
                  "returncode": None, "status": "failed",
                  "log_tail": "\n".join(str(e).splitlines()[-20:])}
    return dict(record, job_id=job.job_id)


def run_slurm(pts: Sequence[sweep.Point], root: str, settings: Slurm,
              log: Callable[[str], None] = print, poll_s: float = 1.0) -> dict[str, dict]:
    """Submits the unfinished points (DONE ones are skipped), one job each, records their job ids
    (status 'submitted') in ROOT/sweep.json, then waits, recording each job's outcome as it ends.
    Returns name -> record, as `sweep.run` does."""
    check_slurm(settings)
    files.local_only(root, "--workdir with --launcher=slurm (submitit keeps its job files in "
                     "ROOT/slurm, on a file system the nodes share)")
    records, todo = sweep.unfinished(pts, root, log)
    executor = submitit.AutoExecutor(folder=os.path.join(root, SLURM_FOLDER),
                                     cluster=settings.cluster)
    executor.update_parameters(**slurm_parameters(settings))
    jobs = {}
    for p in todo:
        executor.update_parameters(name=p.name)
        jobs[p.name] = (p, executor.submit(slurm_task, p, root))
        records[p.name] = {"name": p.name, "overrides": p.overrides, "command": p.command,
                           "status": "submitted", "job_id": jobs[p.name][1].job_id}
        log(f"{p.name}: submitted, job {jobs[p.name][1].job_id}")
    sweep.write_records(root, records)
    while jobs:
        for name, (point, job) in list(jobs.items()):
            if job.done():
                records[name] = job_record(point, job)
                del jobs[name]
                sweep.write_records(root, records)
                log(f"{name}: {records[name]['status']} (job {job.job_id})")
        if jobs:
            time.sleep(poll_s)
    return records
