"""Two local processes with 4 CPU devices each (gloo collectives) match one 8-device process, and
stop together on a SIGTERM that only one of them receives."""

import json
import os
import re
import signal
import subprocess
import time

import numpy as np

from learned_loss.core import cli
from tests import runs

MODULE = "experiments.pretrain"
CONFIG = "configs/pretrain.py:smoke"


def _start_pair(workdir, *overrides) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a 2-process pre-training run (4 CPU devices each)."""
    port = runs.free_port()
    return [runs.start(MODULE, workdir, CONFIG, *overrides,
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={i}", devices=4)
            for i in range(2)]


def _finish(processes, timeout=300, returncode=0) -> list[str]:
    """Both processes' outputs, once each has exited with `returncode` (both are killed on a
    timeout)."""
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    for process, output in zip(processes, outputs):
        assert process.returncode == returncode, output[-3000:]
    return outputs


def test_two_processes_match_one(tmp_path):
    overrides = ("--config.train.num_steps=5", "--config.train.log_every=1",
                 "--config.mesh.shape.data=8", f"--config.data.data_dir={tmp_path / 'tfds'}")
    multi = tmp_path / "multi"
    outputs = _finish(_start_pair(multi, *overrides))
    assert "process 1 of 2 joined" in outputs[1]

    single = tmp_path / "single"
    result = runs.run(MODULE, single, CONFIG, *overrides, devices=8)
    assert result.returncode == 0, result.stderr[-3000:]

    multi_losses = [r["loss"] for r in runs.metrics(multi)]
    single_losses = [r["loss"] for r in runs.metrics(single)]
    assert len(multi_losses) == 5
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
    with open(multi / "provenance.json", encoding="utf-8") as f:
        devices = json.load(f)["starts"][0]["devices"]
    assert devices["process_count"] == 2 and devices["count"] == 8


def _wait_for_logged_step(workdir, step, processes, timeout=240):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if sum(line.endswith("\n") for line in f) >= step:
                    return
        time.sleep(0.05)
    for p in processes:
        p.kill()
    raise AssertionError(f"step {step} never logged, or a process ended before it")


def test_sigterm_to_one_process_stops_both_at_one_step_and_a_rerun_resumes(tmp_path):
    # About 4 steps/s on 2 busy CPU cores; jax notices SIGTERM within a second, then the hosts
    # agree on a step: the stop lands a few steps after step 8, well before the end.
    steps = 30
    overrides = (f"--config.train.num_steps={steps}", "--config.train.log_every=1",
                 "--config.train.eval_every=1000", "--config.train.checkpoint_every=1000",
                 "--config.mesh.shape.data=8", f"--config.data.data_dir={tmp_path / 'tfds'}")
    workdir = tmp_path / "run"
    processes = _start_pair(workdir, *overrides)
    _wait_for_logged_step(workdir, 8, processes)
    processes[1].send_signal(signal.SIGTERM)  # Not process 0: the notice must travel.
    outputs = _finish(processes, returncode=cli.EXIT_PREEMPTED)  # Both stopped, both resumable.
    stops = [re.findall(r"SIGTERM received: saved checkpoint (\d+), stopping", out)
             for out in outputs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, [out[-2000:] for out in outputs]
    assert all("Reached preemption sync point" in out for out in outputs)  # orbax's check.
    stopped = int(stops[0][0])
    assert 8 <= stopped < steps
    assert os.listdir(workdir / "checkpoints") == [str(stopped)]
    assert [r["step"] for r in runs.metrics(workdir)] == list(range(1, stopped + 1))

    outputs = _finish(_start_pair(workdir, *overrides))
    for output in outputs:
        assert f"resumed from checkpoint {stopped}" in output
    assert [r["step"] for r in runs.metrics(workdir)] == list(range(1, steps + 1))
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(stopped), str(steps)]
