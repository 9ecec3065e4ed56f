"""Two local processes (gloo collectives) match one process: pre-training with 4 CPU devices
each, stopped together by a SIGTERM that only one of them receives and resumed, against one
8-device process; meta-training with its population over both. The comparison's 2-process run
is in tests/test_compare.py."""

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
    return runs.start_pair(MODULE, workdir, CONFIG, *overrides)


def test_meta_training_with_the_population_over_two_processes_matches_one(tmp_path):
    # Antithetic ES, 2 pairs over pop=2: process 0's device holds pop index 0 and process 1's
    # pop index 1, so each host runs the inner runs of its own pair and the meta-gradient's
    # mean over the population is a collective across hosts. (One device per host: the
    # batch axis's sharding is the pre-training test's.)
    overrides = ("--config.estimator.name=es", "--config.mesh.shape.pop=2",
                 "--config.mesh.shape.data=1", "--config.outer.num_steps=2",
                 f"--config.data.data_dir={tmp_path / 'tfds'}")
    meta = ("experiments.meta_train", "configs/meta_train.py:smoke")
    multi = tmp_path / "multi"
    outputs = runs.finish(runs.start_pair(meta[0], multi, meta[1], *overrides, devices=1))
    for i, output in enumerate(outputs):
        assert f"population axis pop=2 spans 2 processes; this one runs pop [{i}]" in output

    single = tmp_path / "single"
    result = runs.run(meta[0], single, meta[1], *overrides, devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same outer steps: meta-loss, meta-gradient norm, sanity checks and meta-validation
    # agree to float32 rounding (the cross-host reductions sum in another order).
    multi_records, single_records = runs.metrics(multi), runs.metrics(single)
    assert [r["step"] for r in multi_records] == [1, 2]
    for m, s in zip(runs.deterministic(multi_records), runs.deterministic(single_records)):
        assert m.keys() == s.keys()
        np.testing.assert_allclose([m[k] for k in sorted(m)], [s[k] for k in sorted(s)],
                                   rtol=1e-5)
    thetas = [np.load(w / "artifact" / "theta.npz") for w in (multi, single)]
    assert sorted(thetas[0].files) == sorted(thetas[1].files)
    for name in thetas[0].files:
        np.testing.assert_allclose(thetas[0][name], thetas[1][name], rtol=1e-5, atol=1e-7)
    with open(multi / "provenance.json", encoding="utf-8") as f:
        start = json.load(f)["starts"][0]
    assert start["devices"]["process_count"] == 2
    assert start["mesh"]["shape"] == {"pop": 2, "data": 1}


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


def test_sigterm_to_one_process_stops_both_a_rerun_resumes_and_they_match_one_process(
        tmp_path):
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
    outputs = runs.finish(processes, returncode=cli.EXIT_PREEMPTED)  # Both stopped, both resumable.
    stops = [re.findall(r"SIGTERM received: saved checkpoint (\d+), stopping", out)
             for out in outputs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, [out[-2000:] for out in outputs]
    assert all("Reached preemption sync point" in out for out in outputs)  # orbax's check.
    stopped = int(stops[0][0])
    assert 8 <= stopped < steps
    assert os.listdir(workdir / "checkpoints") == [str(stopped)]
    assert [r["step"] for r in runs.metrics(workdir)] == list(range(1, stopped + 1))

    outputs = runs.finish(_start_pair(workdir, *overrides))
    for output in outputs:
        assert f"resumed from checkpoint {stopped}" in output
    assert "process 1 of 2 joined" in outputs[1]
    assert [r["step"] for r in runs.metrics(workdir)] == list(range(1, steps + 1))
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(stopped), str(steps)]
    with open(workdir / "provenance.json", encoding="utf-8") as f:
        devices = json.load(f)["starts"][0]["devices"]
    assert devices["process_count"] == 2 and devices["count"] == 8

    # The two processes, stopped and resumed, trained what one 8-device process trains
    # uninterrupted (the batch split over hosts; the gradient's mean a collective over them).
    single = tmp_path / "single"
    result = runs.run(MODULE, single, CONFIG, *overrides, devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose([r["loss"] for r in runs.metrics(workdir)],
                               [r["loss"] for r in runs.metrics(single)], rtol=1e-5)
