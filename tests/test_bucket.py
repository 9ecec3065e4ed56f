"""Workdirs in a bucket: each component that reads or writes a workdir, pointed at gs:// on a
local GCS emulator (tests/storage_emulator.py). The comparison end to end is in
tests/test_compare.py (test_a_comparison_runs_end_to_end_in_a_bucket)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.core import checkpoint, cli, files, metrics, pretraining, provenance, store
from learned_loss.data import paths
from learned_loss.objectives import artifact
from learned_loss.report import render
from learned_loss.studies import launchers, sweep
from tests import storage_emulator


@pytest.fixture
def root():
    return storage_emulator.new_folder("unit")


def test_the_path_layer_in_a_bucket(root):
    assert files.is_remote(root) and not files.is_remote("/tmp/x") and files.absolute(root) == root
    cell = os.path.join(root, "cells", "a.json")
    assert not files.exists(cell) and files.glob(os.path.join(root, "cells"), "*.json") == []
    files.write_json(cell, {"b": 1})
    files.write_atomic(os.path.join(root, "cells", ".hidden.json"), "{}")
    assert files.read_json(cell) == {"b": 1} and files.isfile(cell)
    assert files.isdir(os.path.join(root, "cells")) and not files.isfile(os.path.join(root, "cells"))
    assert files.glob(os.path.join(root, "cells"), "*.json") == [cell]  # as glob.glob: no '.x'
    assert sorted(files.listdir(os.path.join(root, "cells"))) == [".hidden.json", "a.json"]
    files.write_atomic(os.path.join(root, "new", "deep", "x.bin"), b"\x00\x01")
    files.write_atomic(os.path.join(root, "old", "stale.txt"), "stale")
    files.replace_dir(os.path.join(root, "new"), os.path.join(root, "old"))
    assert files.listdir(os.path.join(root, "old")) == ["deep"]
    assert files.read_bytes(os.path.join(root, "old", "deep", "x.bin")) == b"\x00\x01"
    assert not files.exists(os.path.join(root, "new"))
    files.remove(cell)
    files.rmtree(os.path.join(root, "old"))
    files.rmtree(os.path.join(root, "nowhere"))  # nothing to do
    assert sorted(files.listdir(root)) == ["cells"]
    with pytest.raises(cli.UserError, match=r"^the cache must be a local folder, got gs://"):
        files.local_only(root, "the cache")
    # A mistyped bucket is an error, not a new bucket.
    files.makedirs("gs://no-such-bucket/run")
    with pytest.raises(FileNotFoundError):
        files.write_json("gs://no-such-bucket/run/x.json", {})
    assert not files.exists("gs://no-such-bucket")


def test_metrics_tensorboard_provenance_and_cells_in_a_bucket(root):
    with metrics.MetricWriter(root) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": 1.0 / step, "nan": float("nan")})
    got = metrics.read_metrics(root)
    assert [r["step"] for r in got] == [1, 2, 3] and np.isnan(got[0]["nan"])
    scalars = metrics.read_tensorboard_scalars(os.path.join(root, metrics.TENSORBOARD_DIR))
    assert [(s, t) for s, t, _ in scalars if t == "loss"] == [(1, "loss"), (2, "loss"),
                                                              (3, "loss")]
    # A resume from step 2 drops step 3; the new records go after it.
    with metrics.MetricWriter(root, resume_step=2) as writer:
        writer.write(3, {"loss": 0.25})
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(root)][1:] == [(2, 0.5),
                                                                               (3, 0.25)]
    assert len(files.listdir(os.path.join(root, metrics.TENSORBOARD_DIR))) == 2
    provenance.write(root, {"config": {"a": 1}})
    provenance.write(root, {"config": {"a": 2}})
    assert [s["config"]["a"] for s in provenance.read(root)] == [1, 2]
    cells = store.Store(os.path.join(root, "cells"))
    cells.write("k", "hash", {"x": 1})
    assert cells.read("k", "hash") == {"x": 1, "config_hash": "hash"}
    with pytest.raises(cli.UserError, match="other settings"):
        cells.read("k", "other")


def test_a_checkpoint_and_an_artifact_round_trip_through_a_bucket(root):
    """orbax's arrays go through tensorstore's own GCS driver (TENSORSTORE_GCS_HTTP_URL)."""
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3, jnp.int32)}
    ckpt = checkpoint.Checkpointer(root, async_save=False)
    ckpt.save(3, state, {"model": {"d": 2}})
    ckpt.close()
    assert checkpoint.finished(root, 3) and checkpoint.reached(root, 2)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    restored = checkpoint.Checkpointer(root, read_only=True).restore_latest(
        abstract, model_config={"d": 2})
    assert restored.step == 3
    np.testing.assert_array_equal(restored.state["w"], state["w"])
    # A newer checkpoint whose metadata does not read is moved aside in the bucket; 3 is
    # restored.
    ckpt = checkpoint.Checkpointer(root, keep=2, async_save=False)
    ckpt.save(4, jax.tree.map(lambda x: x + 1, state), {"model": {"d": 2}})
    files.write_atomic(os.path.join(root, "checkpoints", "4", "meta", "metadata"), b"{not json")
    assert ckpt.restore_latest(abstract, model_config={"d": 2}).step == 3
    ckpt.close()
    assert files.listdir(os.path.join(root, checkpoint.CORRUPT_DIR)) == ["4"]
    assert sorted(files.listdir(os.path.join(root, "checkpoints"))) == ["3"]
    path = os.path.join(root, "artifact")
    artifact.save(path, "token_loss", {"a": np.ones(3, np.float32)}, {"s": 1}, {"c": 2})
    loaded = artifact.load(path, expected_name="token_loss")
    np.testing.assert_array_equal(loaded.theta["a"], np.ones(3, np.float32))
    assert loaded.settings == {"s": 1}


def test_what_must_stay_local_is_refused_in_one_line(root):
    """The pre-training cache (an fcntl lock), the dataset folder (ArrayRecord's POSIX files)
    and a SLURM sweep's root (submitit's job files)."""
    slurm = launchers.Slurm(cluster="local")
    for refused, what in ((lambda: pretraining.cache_root(root), "the pre-training cache"),
                          (lambda: paths.data_dir(root), "the dataset folder"),
                          (lambda: launchers.run_slurm([], root, slurm), "--workdir with")):
        with pytest.raises(cli.UserError, match=rf"^{what} .*must be a local folder, got gs://"):
            refused()


def test_a_sweep_runs_its_points_into_a_bucket_and_reports_them(root, tmp_path):
    """The local launcher with a gs:// root: each point's workdir, log (uploaded when the point
    ends), DONE, ROOT/sweep.json and the sweep's report are in the bucket."""
    config = tmp_path / "sweepcfg.py"
    config.write_text("from learned_loss.studies import sweep\n"
                      "def get_sweep(arg):\n"
                      "    return sweep.product(lr=[1.0, 'fail'], seeds=[1])\n")
    pts = sweep.points(f"{config}:tiny", root, "tests.sweep_entry")
    records = sweep.run(pts, root, log=lambda line: None)
    assert [records[p.name]["status"] for p in pts] == ["done", "failed"]
    assert sweep.read_records(root) == records
    done, failed = (os.path.join(root, "points", p.name) for p in pts)
    assert files.exists(os.path.join(done, "DONE")) and not files.exists(
        os.path.join(failed, "DONE"))
    assert sorted(files.listdir(os.path.join(done, "cells"))) == [
        "learned_token_loss-0.json", "mle-0.json"]
    assert "lr must be a number" in files.read_text(os.path.join(failed, "log.txt"))
    assert "lr must be a number" in records[pts[1].name]["log_tail"]
    report = render.write_sweep(root)
    assert "Unfinished points" in files.read_text(report["markdown"])
    logs = []  # A re-run finds the DONE in the bucket and runs the failed point alone.
    sweep.run(pts, root, log=logs.append)
    assert sum("skipped" in line for line in logs) == 1
