"""Dry runs: the real pre-training and meta-training steps compiled for a small TPU topology
(v5e:2x2, four chips) on this CPU, a hybrid mesh over two slices, and the one-line error of a
config that does not fit a chip."""

import math
import subprocess
import sys

import pytest

from configs import meta_train, pretrain
from learned_loss.core import cli, dry_run, sharding
from learned_loss.core import model as model_lib
from learned_loss.meta import dry_run as meta_dry_run
from tests import runs

TOPOLOGY = "v5e:2x2"
CHIP = dry_run.CHIPS["v5e"]


def _check(report, chips, mesh):
    """Figures that a broken dry run gets wrong."""
    assert report.devices == chips == math.prod(report.mesh.values())
    assert report.mesh == mesh
    assert 0 < report.argument_bytes and 0 < report.total_bytes < CHIP.hbm_bytes
    assert report.total_bytes == (report.argument_bytes + report.output_bytes
                                  + report.temp_bytes - report.alias_bytes)
    assert report.largest and all(b.bytes > 0 for b in report.largest)
    assert list(report.largest) == sorted(report.largest, key=lambda b: -b.bytes)
    assert 0 < report.mfu_bound <= 1
    assert report.step_seconds == pytest.approx(
        max(report.xla_flops, report.model_flops) / chips / CHIP.peak_flops)
    text = dry_run.format_report(report, "the config")
    assert f"{chips} chips of TPU v5e" in text and "MFU <=" in text


def test_pretraining_step_compiles_for_four_chips_and_counts_its_flops():
    config = pretrain.get_config("smoke")
    config.mesh.shape = {"data": 2, "model": 2}
    report = dry_run.dry_run(config, TOPOLOGY, config_name="smoke")
    _check(report, 4, {"data": 2, "model": 2})
    assert report.program == "pre-training train step"
    # The donated state comes back in place, and the parameters' shards are half their size.
    assert report.alias_bytes > 0
    cfg = model_lib.ModelConfig.from_config(config.model)
    tokens = config.data.global_batch_size * config.data.seq_len
    assert report.tokens == tokens
    assert report.model_flops == 6 * model_lib.matmul_param_count(cfg) * tokens
    # One step without loops: XLA's count is the model's 6 N tokens plus attention, norms and
    # the optimizer, within a factor of two.
    assert report.model_flops < report.xla_flops < 2 * report.model_flops


def test_meta_training_outer_step_splits_its_population_over_pop():
    config = meta_train.get_config("smoke")
    config.estimator.name = "pes"  # Compiles faster than TBPTT's gradient through the unroll.
    config.estimator.update(population=2, unroll_length=1, min_horizon=1, max_horizon=2)
    config.mesh.shape = {"pop": 2, "data": 2}
    program = meta_dry_run.program_of(config, dry_run.topology_devices(TOPOLOGY))
    # Each chip holds one pair's runs: the population axis of the inner states is split.
    state = program.args[0]
    params = state.estimator.plus.inner["params"]["transformer/embed"]["embeddings"]
    assert params.shape[0] == 2 and params.sharding.shard_shape(params.shape)[0] == 1
    report = dry_run.compile_report(program, TOPOLOGY, dry_run.topology_devices(TOPOLOGY))
    _check(report, 4, {"pop": 2, "data": 2})
    assert report.program.startswith("meta-training outer step (pes: 4 inner runs")
    cfg = model_lib.ModelConfig.from_config(config.model)
    n = model_lib.matmul_param_count(cfg)
    trained, scored = 4 * config.inner.batch_size * 64, 4 * config.inner.valid_batch_size * 64
    assert report.model_flops == 6 * n * trained + 2 * n * scored
    assert report.model_flops / 3 < report.xla_flops < 3 * report.model_flops


def test_a_hybrid_mesh_keeps_model_inside_a_slice_and_splits_data_over_slices():
    devices = dry_run.topology_devices(TOPOLOGY, num_slices=2)
    assert len(devices) == 8 and sharding.slice_count(devices) == 2
    mesh = sharding.make_mesh({"data": -1, "model": 2}, devices, dcn={"data": 2})
    grid = mesh.devices  # [data=4, model=2]
    assert grid.shape == (4, 2)
    slices = [[d.slice_index for d in row] for row in grid]
    assert slices == [[0, 0], [0, 0], [1, 1], [1, 1]]
    with pytest.raises(sharding.ShardingError, match="form 2"):
        sharding.make_mesh({"data": -1, "model": 2}, devices)


def test_an_oversized_config_fails_with_one_line_naming_its_largest_buffer():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.dry_run", "--config=configs/pretrain.py:smoke",
         f"--topology={TOPOLOGY}", "--config.data.global_batch_size=131072"],
        cwd=runs.ROOT, env=runs.env(1), capture_output=True, text=True, timeout=120)
    assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr[-2000:]
    line = errors[0]
    # The logits of 32768 rows per chip: [rows, T, V] float32, 2 GiB each.
    assert "does not fit v5e:2x2" in line and "f32[32768,64,260] 2.06 GiB" in line, line
    assert "--config.data.global_batch_size=65536" in line and "more chips" in line, line
    assert proc.stdout == ""


def test_topology_names_are_checked():
    assert dry_run.parse_topology("v5e:16x16") == (CHIP, 256)
    assert dry_run.parse_topology("v4:4x4x8")[1] == 128
    with pytest.raises(cli.UserError, match="KIND one of"):
        dry_run.parse_topology("v9:2x2")
    with pytest.raises(cli.UserError, match="KIND one of"):
        dry_run.parse_topology("v5e")
