"""Sweeps: products and zips of overrides, one process per point, a failed point that does not
stop the others, skipped finished points, the printed, TPU VM and SLURM launchers, and the
aggregated report."""

import json
import os
import shlex
import subprocess
import sys

import pytest
from submitit.core import utils as submitit_utils

from learned_loss.core import cli
from learned_loss.report import render as report
from learned_loss.studies import launchers, sweep

CONFIG = '''
from learned_loss.studies import sweep

def get_config(arg="tiny"):
    raise AssertionError("the sweep reads get_sweep only")

def get_sweep(arg="tiny"):
    return sweep.product(lr=[1.0, 2.0], seeds=[2]) + [{"lr": "fail", "seeds": 2}]
'''


def test_product_and_zipped():
    assert sweep.product(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert sweep.zipped(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(sweep.SweepError, match="differ in length"):
        sweep.zipped(a=[1, 2], b=[3])
    assert sweep.flag_value(("mle", "dpo")) == "('mle', 'dpo')"
    assert sweep.point_name(3, {"lr": 0.001, "m": ("a", "b")}) == "003-lr=0.001,m=__a_,__b__"


def test_missing_get_sweep_is_a_clear_error(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("def get_config():\n    return None\n")
    with pytest.raises(sweep.SweepError, match="defines no get_sweep"):
        sweep.load_sweep(f"{path}:tiny")


def test_get_sweep_errors_are_not_swallowed(tmp_path):
    """A TypeError raised inside get_sweep(arg) reaches the user (it was once taken for a
    get_sweep without a parameter, which was then called without the argument); a variant
    named for a get_sweep that takes none is refused, not dropped."""
    path = tmp_path / "c.py"
    path.write_text("def get_sweep(arg):\n    return [{'lr': len(arg) + None}]\n")
    with pytest.raises(TypeError, match="unsupported operand"):
        sweep.load_sweep(f"{path}:tiny")
    path.write_text("def get_sweep():\n    return [{'lr': 1.0}]\n")
    assert sweep.load_sweep(str(path)) == [{"lr": 1.0}]
    with pytest.raises(sweep.SweepError, match="takes no argument.*drop ':tiny'"):
        sweep.load_sweep(f"{path}:tiny")


def test_failed_point_does_not_stop_the_others(tmp_path):
    config = tmp_path / "sweepcfg.py"
    config.write_text(CONFIG)
    root = str(tmp_path / "root")
    points = sweep.points(f"{config}:tiny", root, "tests.sweep_entry")
    assert len(points) == 3 and "--config.lr=fail" in points[2].command
    records = sweep.run(points, root, parallel=2, log=lambda _: None, gpus=[], tpu=False)
    assert [records[p.name]["status"] for p in points] == ["done", "done", "failed"]
    assert records[points[2].name]["returncode"] == 3
    assert "lr must be a number" in records[points[2].name]["log_tail"]
    with open(os.path.join(root, "sweep.json")) as f:
        assert len(json.load(f)["points"]) == 3
    # A re-run skips the finished points and retries only the failed one.
    done_log = os.path.join(root, "points", points[0].name, "log.txt")
    stamp = os.path.getmtime(done_log)
    logs = []
    sweep.run(points, root, log=logs.append)
    assert os.path.getmtime(done_log) == stamp
    assert sum("skipped" in line for line in logs) == 2
    # The aggregated report: a table per swept key, the failure listed.
    report.write_sweep(root)
    md = open(os.path.join(root, "report.md")).read()
    assert "## lr" in md and "## seeds" in md and "failed (exit 3)" in md
    mean, half = report.mean_ci([0.2, 0.21])
    assert f"| 2.0 | {mean + 0.1:.3f} ± {half:.3f} | {mean:.3f} ± {half:.3f} |" in md


def test_print_launcher_writes_one_line_per_point(tmp_path):
    config = tmp_path / "sweepcfg.py"
    config.write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config}:tiny",
                          f"--workdir={tmp_path / 'root'}", "--entry=tests.sweep_entry",
                          "--launcher=print"], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all("-m tests.sweep_entry" in line for line in lines)
    assert not os.path.exists(tmp_path / "root" / "points")
    # Flags after `--` reach every point; one that sets a swept key is refused.
    base = [sys.executable, "-m", "experiments.sweep", f"--config={config}:tiny",
            f"--workdir={tmp_path / 'root'}", "--entry=tests.sweep_entry", "--launcher=print"]
    out = subprocess.run(base + ["--", "--config.steps=5"], capture_output=True, text=True,
                         check=True)
    assert [line.endswith(" --config.steps=5") for line in out.stdout.splitlines()] == [True] * 3
    out = subprocess.run(base + ["--", "--config.lr=0.1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "extra flag '--config.lr=0.1' sets what the sweep sets" in out.stderr


def test_sweep_cli_exits_non_zero_when_a_point_fails(tmp_path):
    config = tmp_path / "sweepcfg.py"
    config.write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config}:tiny",
                          f"--workdir={tmp_path / 'root'}", "--entry=tests.sweep_entry",
                          "--parallel=2"], capture_output=True, text=True,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))  # as on a CPU host
    assert out.returncode == 2
    assert "1 of 3 points failed" in out.stderr
    assert os.path.exists(tmp_path / "root" / "points" / "001-lr=2.0,seeds=2" / "DONE")
    out = subprocess.run([sys.executable, "-m", "experiments.report",
                          f"--workdir={tmp_path / 'root'}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Unfinished points" in (tmp_path / "root" / "report.md").read_text()


def test_a_preempted_point_is_not_done_and_a_rerun_resumes_it(tmp_path):
    """A point stopped by SIGTERM exits cli.EXIT_PREEMPTED (saved, resumable): the sweep records
    it as preempted, writes no DONE, and the sweep itself exits EXIT_PREEMPTED (once a point
    that exited 0 on SIGTERM was marked done and never resumed)."""
    config = tmp_path / "sweepcfg.py"
    config.write_text("from learned_loss.studies import sweep\n"
                      "def get_sweep(arg):\n"
                      "    return sweep.product(lr=[1.0, 'preempt'], seeds=[1])\n")
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config}:tiny",
                          f"--workdir={root}", "--entry=tests.sweep_entry"],
                         capture_output=True, text=True)
    assert out.returncode == cli.EXIT_PREEMPTED, out.stderr[-2000:]
    assert "1 of 2 points stopped by SIGTERM" in out.stderr
    records = sweep.read_records(str(root))
    assert [r["status"] for r in records.values()] == ["done", "preempted"]
    assert [r["returncode"] for r in records.values()] == [0, cli.EXIT_PREEMPTED]
    assert os.path.exists(root / "points" / "000-lr=1.0,seeds=1" / "DONE")
    assert not os.path.exists(root / "points" / "001-lr=preempt,seeds=1" / "DONE")
    logs = []
    sweep.run(sweep.points(f"{config}:tiny", str(root), "tests.sweep_entry"), str(root),
              log=logs.append)
    assert sum("skipped" in line for line in logs) == 1  # the preempted point runs again


def test_parallel_points_get_devices_of_their_own(tmp_path):
    """On GPUs each parallel slot gets its own share (CUDA_VISIBLE_DEVICES); more slots than
    GPUs, or several on a TPU host, are refused; a CPU host splits nothing."""
    assert sweep.device_slots(2, ["0", "1", "2"], tpu=False) == [
        {"CUDA_VISIBLE_DEVICES": "0,2"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert sweep.device_slots(2, [], tpu=False) == [{}, {}]
    assert sweep.device_slots(1, [], tpu=True) == [{}]
    with pytest.raises(sweep.SweepError, match="--parallel=3 on 2 GPUs.*--parallel=2 or fewer"):
        sweep.device_slots(3, ["0", "1"], tpu=False)
    with pytest.raises(sweep.SweepError, match="TPU host.*use --parallel=1"):
        sweep.device_slots(2, [], tpu=True)
    with pytest.raises(sweep.SweepError, match="must be >= 1"):
        sweep.device_slots(0, [], tpu=False)
    # What the host has: CUDA_VISIBLE_DEVICES first, else the driver's list; TPU chips in /dev.
    (tmp_path / "gpus" / "0000:01").mkdir(parents=True)
    (tmp_path / "gpus" / "0000:02").mkdir()
    assert sweep.visible_gpus({}, str(tmp_path / "gpus")) == ["0", "1"]
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, str(tmp_path / "gpus")) == ["3", "5"]
    assert sweep.visible_gpus({}, str(tmp_path / "none")) == []
    (tmp_path / "dev").mkdir()
    assert not sweep.has_tpu(str(tmp_path / "dev"))
    (tmp_path / "dev" / "accel0").touch()
    assert sweep.has_tpu(str(tmp_path / "dev"))
    # Two points at once on two GPUs: each process sees only its own.
    config = tmp_path / "sweepcfg.py"
    config.write_text("from learned_loss.studies import sweep\n"
                      "def get_sweep():\n"
                      "    return sweep.product(lr=[1.0, 2.0, 3.0], seeds=[1])\n")
    root = tmp_path / "root"
    points = sweep.points(str(config), str(root), "tests.sweep_entry")
    records = sweep.run(points, str(root), parallel=2, log=lambda _: None, gpus=["0", "1"],
                        tpu=False)
    assert [r["status"] for r in records.values()] == ["done"] * 3
    seen = [(root / "points" / p.name / "gpus.txt").read_text() for p in points]
    assert set(seen) == {"0", "1"}


TRICKY = '''
from learned_loss.studies import sweep

def get_sweep(arg):
    return sweep.product(lr=[1.0, 2.0], objectives=[("mle", "it's")])
'''


def test_tpu_vm_command_survives_ssh_quoting(tmp_path):
    """Each point's line, split as a shell splits it, is gcloud's ssh to every worker; its
    --command, split again as the VM's shell splits it, cds into the checkout and runs the entry
    with the point's flags, the extra flags and --coordinator_address=auto."""
    config = tmp_path / "sweep cfg.py"  # A space, and a quote in a swept value, to quote.
    config.write_text(TRICKY)
    points = sweep.points(f"{config}:tiny", "gs://bucket/sweep", "tests.sweep_entry",
                          extra_flags=["--config.steps=5"], python="python3", distributed=True)
    line = launchers.tpu_vm_command(points[1].command, "pod", "us-central2-b", "proj",
                                    remote_dir="my repo")
    argv = shlex.split(line)
    assert argv[:-1] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod",
                         "--zone=us-central2-b", "--project=proj", "--worker=all"]
    assert argv[-1].startswith("--command=")
    remote = shlex.split(argv[-1].removeprefix("--command="))
    workdir = "gs://bucket/sweep/points/001-lr=2.0,objectives=__mle_,__it_s__"
    assert remote == ["cd", "my repo", "&&", "python3", "-m", "tests.sweep_entry",
                      f"--config={config}:tiny", f"--workdir={workdir}", "--config.lr=2.0",
                      "--config.objectives=('mle', \"it's\")", "--config.steps=5",
                      "--coordinator_address=auto"]
    script = launchers.tpu_vm_script(points, "pod")
    assert script.startswith("#!/bin/bash\n") and script.count("--worker=all") == 2
    assert "--zone" not in script  # gcloud's configured zone
    # The launcher sets the distributed flags itself; an extra flag may not.
    with pytest.raises(sweep.SweepError, match="sets --coordinator_address=auto itself"):
        sweep.points(f"{config}:tiny", "gs://b", "tests.sweep_entry", distributed=True,
                     extra_flags=["--coordinator_address=10.0.0.1:1234"])


def test_tpu_vm_launcher_cli(tmp_path):
    """The CLI writes ROOT/launch_tpu_vm.sh and prints it, with python3, not this interpreter;
    a missing --tpu_name is one line and exit 2."""
    config = tmp_path / "sweepcfg.py"
    config.write_text(CONFIG)
    base = [sys.executable, "-m", "experiments.sweep", f"--config={config}:tiny",
            "--entry=tests.sweep_entry", "--launcher=tpu_vm"]
    out = subprocess.run(base + [f"--workdir={tmp_path / 'root'}"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: --tpu_name is required with --launcher=tpu_vm: the TPU VM (pod) that runs the "
        "points"]
    out = subprocess.run(base + [f"--workdir={tmp_path / 'root'}", "--tpu_name=pod",
                                 "--tpu_zone=z", "--", "--config.steps=5"],
                         capture_output=True, text=True, check=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("gcloud")]
    assert len(lines) == 3 and (tmp_path / "root" / "launch_tpu_vm.sh").read_text() == out.stdout
    remote = shlex.split(shlex.split(lines[0])[-1].removeprefix("--command="))
    assert remote[:6] == ["cd", "learned_loss", "&&", "python3", "-m", "tests.sweep_entry"]
    assert remote[-2:] == ["--config.steps=5", "--coordinator_address=auto"]
    assert sys.executable not in out.stdout
    assert not os.path.exists(tmp_path / "root" / "points")  # Nothing ran here.


def test_slurm_settings_are_checked():
    local = launchers.Slurm(cluster="local", gpus_per_node=0)
    launchers.check_slurm(local)
    assert not local.distributed and launchers.Slurm(nodes=2).distributed
    assert launchers.slurm_parameters(launchers.Slurm(partition="gpu", time_min=30)) == {
        "timeout_min": 30, "gpus_per_node": 1, "nodes": 1, "tasks_per_node": 1,
        "slurm_partition": "gpu"}
    with pytest.raises(sweep.SweepError, match="one node; use --slurm_nodes=1"):
        launchers.check_slurm(launchers.Slurm(cluster="local", nodes=2))
    with pytest.raises(sweep.SweepError, match="--slurm_time must be >= 1"):
        launchers.check_slurm(launchers.Slurm(cluster="local", time_min=0))
    with pytest.raises(sweep.SweepError, match="sbatch is not on PATH.*--slurm_cluster=local"):
        launchers.check_slurm(launchers.Slurm(), which=lambda _: None)
    # A job that ended without a record (cancelled, out of time) is a failed point.

    class Lost:
        job_id = "7"

        def results(self):
            raise submitit_utils.UncompletedJobError("job 7 was cancelled")

    point = sweep.Point("000-lr=1.0", {"lr": 1.0}, ["python3", "-m", "x"])
    assert launchers.job_record(point, Lost()) == {
        "name": "000-lr=1.0", "overrides": {"lr": 1.0}, "command": ["python3", "-m", "x"],
        "returncode": None, "status": "failed", "log_tail": "job 7 was cancelled", "job_id": "7"}


def test_slurm_launcher_runs_points_as_jobs(tmp_path):
    """Through submitit's local executor (--slurm_cluster=local), a real run of the stand-in
    entry: each point is a job whose id the sweep records; the finished point writes its cells
    and DONE, the preempted one (exit 75) is recorded preempted without DONE, and the sweep
    exits EXIT_PREEMPTED, as with the local launcher."""
    config = tmp_path / "sweepcfg.py"
    config.write_text("from learned_loss.studies import sweep\n"
                      "def get_sweep(arg):\n"
                      "    return sweep.product(lr=[1.0, 'preempt'], seeds=[1])\n")
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config}:tiny",
                          f"--workdir={root}", "--entry=tests.sweep_entry", "--launcher=slurm",
                          "--slurm_cluster=local", "--slurm_gpus_per_node=0", "--slurm_time=5",
                          "--", "--config.steps=5"], capture_output=True, text=True)
    assert out.returncode == cli.EXIT_PREEMPTED, out.stderr[-3000:]
    records = sweep.read_records(str(root))
    assert [r["status"] for r in records.values()] == ["done", "preempted"]
    assert [r["returncode"] for r in records.values()] == [0, cli.EXIT_PREEMPTED]
    assert all(r["job_id"] for r in records.values())
    assert all(r["command"][-1] == "--config.steps=5" for r in records.values())
    done, preempted = (root / "points" / name for name in records)
    assert (done / "DONE").exists() and (done / "cells" / "mle-0.json").exists()
    assert not (preempted / "DONE").exists() and (preempted / "log.txt").exists()
    assert (root / "slurm").is_dir()  # submitit's own files
    _, todo = sweep.unfinished(sweep.points(f"{config}:tiny", str(root), "tests.sweep_entry"),
                               str(root), log=lambda _: None)
    assert [p.name for p in todo] == [preempted.name]  # a re-run resumes only the preempted
