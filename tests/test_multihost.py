"""Two local processes with 4 CPU devices each (gloo collectives) match one 8-device process."""

import json
import subprocess

import numpy as np

from tests import runs

MODULE = "experiments.pretrain"
CONFIG = "configs/pretrain.py:smoke"


def test_two_processes_match_one(tmp_path):
    overrides = ("--config.train.num_steps=5", "--config.train.log_every=1",
                 "--config.mesh.shape.data=8", f"--config.data.data_dir={tmp_path / 'tfds'}")
    port = runs.free_port()
    multi = tmp_path / "multi"
    processes = [
        runs.start(MODULE, multi, CONFIG, *overrides, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", devices=4)
        for i in range(2)
    ]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
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
