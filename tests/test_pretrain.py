"""The pre-training entry point as a real process: determinism, kill/resume, SIGTERM, a bad
flag; the refusals of bad settings, in process."""

import os
import shutil
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import pretrain as pretrain_config
from learned_loss.core import cli, pretraining
from tests import runs

MODULE = "experiments.pretrain"
CONFIG = "configs/pretrain.py:smoke"
STEPS = 60


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """The file's config fields ('section.key': value) on top of CONFIG."""
    return {"data.data_dir": str(tmp_path_factory.mktemp("tfds")), "train.num_steps": STEPS,
            "train.log_every": 1, "train.checkpoint_every": 10}


@pytest.fixture(scope="module")
def overrides(settings):
    return tuple(f"--config.{name}={value}" for name, value in settings.items())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, overrides):
    """An uninterrupted run: its workdir."""
    workdir = tmp_path_factory.mktemp("reference")
    result = runs.run(MODULE, workdir, CONFIG, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _params(workdir, step):
    state = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                          "state"))
    return state


def _assert_same_params(a, b, step=STEPS):
    pa, pb = _params(a, step), _params(b, step)
    leaves_a = _flatten(pa)
    leaves_b = _flatten(pb)
    assert leaves_a.keys() == leaves_b.keys()
    for key in leaves_a:
        np.testing.assert_array_equal(leaves_a[key], leaves_b[key], err_msg=key)


def _flatten(tree, prefix=""):
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}/{i}"))
    elif tree is not None:
        out[prefix] = np.asarray(tree)
    return out


def _wait_for_step(workdir, step, process, timeout=120):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                lines = [line for line in f if line.endswith("\n")]
            if len(lines) >= step:
                return
        time.sleep(0.005)
    raise AssertionError(f"step {step} never logged")


def test_reference_run_learns_and_records(reference):
    records = runs.metrics(reference)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert "valid/loss" in records[9] and np.isfinite(records[-1]["valid/loss"])
    assert records[-1]["perf/tokens_per_s"] > 0
    assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["40", "50", "60"]
    assert os.listdir(os.path.join(reference, "tensorboard"))
    import json
    with open(os.path.join(reference, "provenance.json"), encoding="utf-8") as f:
        record = json.load(f)["starts"][0]
    assert record["mesh"]["shape"] == {"data": 1, "model": 1}
    assert len(record["corpus_hash"]) == 64
    assert record["config"]["model"]["variant"] == "nano"


def test_same_seed_same_metrics(reference, overrides, tmp_path):
    result = runs.run(MODULE, tmp_path, CONFIG, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert runs.deterministic(runs.metrics(tmp_path)) == runs.deterministic(
        runs.metrics(reference))
    _assert_same_params(reference, tmp_path)


def test_sigkill_and_resume_is_bitwise_identical(reference, overrides, tmp_path):
    process = runs.start(MODULE, tmp_path, CONFIG, *overrides)
    _wait_for_step(tmp_path, 25, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(runs.metrics(tmp_path)) < STEPS
    result = runs.run(MODULE, tmp_path, CONFIG, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint" in result.stderr
    records = runs.metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # None missing or doubled.
    assert runs.deterministic(records) == runs.deterministic(runs.metrics(reference))
    _assert_same_params(reference, tmp_path)


def test_sigterm_saves_a_final_checkpoint_and_exits_resumable(reference, overrides, tmp_path):
    process = runs.start(MODULE, tmp_path, CONFIG, *overrides)
    _wait_for_step(tmp_path, 13, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == cli.EXIT_PREEMPTED, output[-3000:]  # Saved, not finished.
    assert "SIGTERM received" in output
    saved = sorted(int(s) for s in os.listdir(os.path.join(tmp_path, "checkpoints")))
    assert saved[-1] % 10 != 0 and 13 <= saved[-1] < STEPS  # A checkpoint at the signal's step.
    result = runs.run(MODULE, tmp_path, CONFIG, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert runs.deterministic(runs.metrics(tmp_path)) == runs.deterministic(
        runs.metrics(reference))
    _assert_same_params(reference, tmp_path)


def test_corrupt_latest_checkpoint_falls_back_to_previous(reference, overrides, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    data = workdir / "checkpoints" / "60" / "state" / "ocdbt.process_0" / "d"
    for chunk in data.iterdir():  # Flip bytes in every array file of the newest checkpoint.
        raw = bytearray(chunk.read_bytes())
        for i in range(0, len(raw), 97):
            raw[i] ^= 0xFF
        chunk.write_bytes(bytes(raw))
    result = runs.run(MODULE, workdir, CONFIG, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint 60" in result.stderr and "falling back" in result.stderr
    assert "resumed from checkpoint 50" in result.stderr
    assert (workdir / "checkpoints_corrupt" / "60").is_dir()  # Kept aside, not deleted.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["40", "50", "60"]
    assert runs.deterministic(runs.metrics(workdir)) == runs.deterministic(
        runs.metrics(reference))
    _assert_same_params(reference, workdir)


def _assert_one_line_error(result, *words):
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_unknown_config_key(overrides, tmp_path):
    result = runs.run(MODULE, tmp_path, CONFIG, *overrides, "--config.optimizer.lrr=0.1")
    _assert_one_line_error(result, "unknown config key 'lrr'", "--config.optimizer.lrr", "'lr'")


def _config(settings, **fields):
    """CONFIG with the file's settings and `fields` ('section.key': value), for refusals checked
    in process (a UserError is one line and exit 2 at every entry point: tests/test_errors.py;
    the bad flag above is the command line's own)."""
    config = pretrain_config.get_config("smoke")
    config.update_from_flattened_dict({**settings, **fields})
    return config


def test_mesh_that_does_not_divide_the_devices(settings, tmp_path):
    assert jax.device_count() == 8  # tests/conftest.py
    config = _config(settings, **{"mesh.shape.data": 3})
    with pytest.raises(cli.UserError, match="mesh.shape.*8 are available"):
        pretraining.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_missing_corpus_directory(settings, tmp_path):
    config = _config(settings, **{"data.text_dir": f"{tmp_path}/nowhere"})
    with pytest.raises(cli.UserError, match="nowhere.*does not exist"):
        pretraining.run(config, str(tmp_path / "w"))


def test_workdir_of_another_model_is_refused(reference, settings, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    with pytest.raises(cli.UserError, match="different model.*d_ff"):
        pretraining.run(_config(settings, **{"model.d_ff": 128}), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["40", "50", "60"]
