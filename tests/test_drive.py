"""`loop.drive`, the outer shell of every training loop, on a tiny pure step: a run stopped by
SIGTERM (or killed) and resumed ends bitwise where an uninterrupted one does (state, metrics,
data position), the stop saves a final checkpoint, and a workdir of another model or other data
is refused.

The training loops (pre-training, fine-tuning, the RLHF stages, the meta-training runs) are thin
callers of `drive`; their end-to-end tests check what is their own."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import loop, provenance
from learned_loss.core import metrics as metrics_lib

STEPS = 10
MODEL = {"d_model": 3}


class Stream:
    """Seeded [3] batches; the position is the state a checkpoint keeps."""

    def __init__(self, seed: int = 0):
        self.seed, self.position = seed, 0

    def __next__(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        return rng.normal(size=3).astype(np.float32)

    def get_state(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    def set_state(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"the stream of seed {state['seed']}, not {self.seed}")
        self.position = state["position"]


@jax.jit
def _update(state, batch, key):
    x = 0.9 * state["x"] + batch + 0.1 * jax.random.normal(key, (3,))  # [3]
    return {"x": x, "count": state["count"] + 1}, {"loss": jnp.sum(x * x), "x0": x[0]}


def _drive(workdir, stream, *, stop_after=None, crash_at=None, model=MODEL):
    """`drive` over `_update` to STEPS; SIGTERM arrives during step `stop_after`, and step
    `crash_at` raises (the process dies)."""

    def step_fn(state, step):
        if step + 1 == crash_at:
            raise RuntimeError("killed")
        state, metrics = _update(state, next(stream), jax.random.fold_in(jax.random.key(0), step))
        if step + 1 == stop_after:
            loop._SIGTERM["received"] = True  # pylint: disable=protected-access
        return state, metrics

    state = {"x": jnp.zeros(3, jnp.float32), "count": jnp.zeros((), jnp.int32)}
    return loop.drive(
        state, step_fn, workdir=str(workdir), num_steps=STEPS, model_config=model,
        checkpoint_every=4, log_every=2, eval_every=4, keep_checkpoints=3, data=stream,
        evaluate=lambda s: {"valid/norm": float(jnp.sum(jnp.abs(s["x"])))},
        provenance=lambda start: provenance.collect({}, extra={"resumed_from_step": start}),
        log_keys=("loss", "valid/"))


@pytest.fixture(autouse=True)
def no_sigterm(monkeypatch):
    monkeypatch.setitem(loop._SIGTERM, "received", False)  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (workdir, Result, stream)."""
    workdir = tmp_path_factory.mktemp("reference")
    stream = Stream()
    return workdir, _drive(workdir, stream), stream


def _steps(workdir) -> list[int]:
    ckpt = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
    steps = ckpt.steps()
    ckpt.close()
    return steps


def _saved(workdir, step):
    """Checkpoint `step`'s (state, meta)."""
    ckpt = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
    abstract = {"x": jax.ShapeDtypeStruct((3,), jnp.float32),
                "count": jax.ShapeDtypeStruct((), jnp.int32)}
    assert ckpt.steps()[-1] == step
    restored = ckpt.restore_latest(abstract, model_config=MODEL)
    ckpt.close()
    return restored.state, restored.meta


def _assert_same_run(workdir, done, reference):
    ref_workdir, ref_done, _ = reference
    for name in ("x", "count"):
        np.testing.assert_array_equal(done.state[name], ref_done.state[name])
    assert done.step == STEPS and done.last == ref_done.last
    assert metrics_lib.read_metrics(workdir) == metrics_lib.read_metrics(ref_workdir)
    state, _ = _saved(workdir, STEPS)
    np.testing.assert_array_equal(state["x"], ref_done.state["x"])


def test_an_uninterrupted_run_logs_evaluates_and_checkpoints(reference):
    workdir, done, stream = reference
    assert (done.start, done.step, int(done.state["count"])) == (0, STEPS, STEPS)
    records = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10]
    assert [r["step"] for r in records if "valid/norm" in r] == [4, 8, 10]
    assert done.last == {k: v for k, v in records[-1].items() if k != "step"}
    assert metrics_lib.read_tensorboard_scalars(workdir / metrics_lib.TENSORBOARD_DIR)
    assert _steps(workdir) == [4, 8, 10]
    _, meta = _saved(workdir, STEPS)
    assert meta["data"] == {"seed": 0, "position": STEPS} == stream.get_state()
    assert meta["model"] == MODEL
    assert [s["extra"]["resumed_from_step"] for s in provenance.read(workdir)] == [0]


def test_sigterm_saves_a_final_checkpoint_and_the_resumed_run_is_bitwise(reference, tmp_path):
    stream = Stream()
    stopped = _drive(tmp_path, stream, stop_after=7)
    assert (stopped.step, int(stopped.state["count"])) == (7, 7)
    # The signal's step (neither a checkpoint nor a logged step) is saved, with the data's
    # position; the log has the steps before it.
    assert _steps(tmp_path) == [4, 7]
    state, meta = _saved(tmp_path, 7)
    np.testing.assert_array_equal(state["x"], stopped.state["x"])
    assert meta["data"] == {"seed": 0, "position": 7}
    assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [2, 4, 6]

    loop._SIGTERM["received"] = False  # pylint: disable=protected-access
    stream = Stream()  # A new process: the stream starts at 0 until the checkpoint moves it.
    resumed = _drive(tmp_path, stream)
    assert resumed.start == 7 and stream.position == STEPS
    _assert_same_run(tmp_path, resumed, reference)
    assert [s["extra"]["resumed_from_step"] for s in provenance.read(tmp_path)] == [0, 7]


def test_a_killed_run_resumes_from_its_last_checkpoint_bitwise(reference, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        _drive(tmp_path, Stream(), crash_at=7)
    assert _steps(tmp_path) == [4]
    assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [2, 4, 6]
    resumed = _drive(tmp_path, Stream())
    assert resumed.start == 4  # Step 6's record is dropped and written again, once.
    _assert_same_run(tmp_path, resumed, reference)


def test_a_finished_run_started_again_does_nothing(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    done = reference[1]
    again = _drive(workdir, Stream())
    assert (again.start, again.step, again.last) == (STEPS, STEPS, {})
    np.testing.assert_array_equal(again.state["x"], done.state["x"])
    assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == [2, 4, 6, 8, 10]


def test_a_workdir_of_another_model_or_data_is_refused(reference):
    workdir, _, _ = reference
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="different model"):
        _drive(workdir, Stream(), model={"d_model": 4})
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match=f"{workdir}: the stream of seed 0, not 1"):
        _drive(workdir, Stream(seed=1))
    assert _steps(workdir) == [4, 8, 10]
