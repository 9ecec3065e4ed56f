"""The outer shell of a training run, shared by pre-training and fine-tuning.

Given a sharded state, a data iterator and jitted steps, `run` trains to `num_steps` and owns
everything around the step: resuming from the workdir's newest good checkpoint (state and
data-iterator position), provenance, metrics (JSONL and TensorBoard) with progress and MFU,
periodic evaluation, periodic checkpoints, and a final checkpoint on SIGTERM (preemption).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from learned_loss.core import cli, metrics, perf, provenance, sharding
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import model as model_lib


# Process-wide: a job of several runs sees one signal. `checks` counts the multi-host checks.
_SIGTERM = {"received": False, "checks": 0}


def _on_sigterm(signum, frame):
    del signum, frame
    _SIGTERM["received"] = True


class StopSignal:
    """Turns SIGTERM (preemption) into a stop that every host takes at the same check.

    One process: a Python SIGTERM handler sets a flag, read between steps.

    Several (`jax.distributed`): orbax's preemption check, `ocp.multihost.reached_preemption`,
    over jax's preemption sync manager, which `jax.distributed.initialize` starts with a SIGTERM
    handler of its own (`distributed.initialize` keeps that service on). When any host receives
    SIGTERM, the coordination service tells the others; each host publishes the number of its
    latest check, and every host answers True at the check numbered one past the largest, so
    all stop after the same step. Until a notice arrives the hosts exchange nothing (the check
    used to gather every host's flag at every step). No Python handler is installed then: it
    would replace jax's, and no host would hear of the signal.

    The check number is this process's count of checks, not a run's step: every host runs the
    same program and counts alike, and the count never goes back when a job starts its next run
    (from step 0 or a resumed step), which the sync point needs (it fires on equality only).

    The flag is the process's: once a run has stopped on it, a job that runs several (a study,
    the compare run) stops too, at its next `raise_if_stopped`, instead of going on.
    """

    def __init__(self):
        self.shared = jax.distributed.is_initialized()  # jax's handler owns SIGTERM then.
        if not self.shared and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)  # Python's rule: main thread only.

    @property
    def received(self) -> bool:
        return _SIGTERM["received"]

    def should_stop(self) -> bool:
        """Whether to save and stop now; on several hosts, called at the same points on each
        (once per step, and between runs)."""
        if self.received or not self.shared:
            return self.received
        _SIGTERM["checks"] += 1
        _SIGTERM["received"] = bool(ocp.multihost.reached_preemption(_SIGTERM["checks"]))
        return self.received


def raise_if_stopped(before: str) -> None:
    """Between the runs of a job: cli.Preempted if SIGTERM has arrived (installs the handler the
    first time, so that a signal between runs is caught too)."""
    if StopSignal().should_stop():
        raise cli.Preempted(f"SIGTERM received: stopped before {before}; re-run to resume")


@dataclasses.dataclass
class Run:
    """What a training run is made of; built by an entry point, consumed by `run`."""

    config: Any  # The full ConfigDict (its `train` section drives the loop).
    workdir: str
    mesh: jax.sharding.Mesh
    model_config: model_lib.ModelConfig
    state: Any  # A sharded TrainState (fresh, or initialised from another run).
    state_shardings: Any
    train_step: Callable  # (state, batch, theta) -> (state, metrics)
    schedule: Callable[[int], float]
    train_iter: Any  # Yields process-local numpy batches; get_state/set_state.
    seq_len: int
    global_batch_size: int
    evaluate: Callable[[Any], Mapping[str, float]]  # state -> {"valid/...": value}
    provenance_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_hash: Optional[str] = None
    theta: Any = ()



def mesh_and_model(config) -> tuple[jax.sharding.Mesh, model_lib.ModelConfig]:
    """A training config's mesh (the global batch must divide over it) and model config (its
    max_len must hold data.seq_len); a mismatch is a UserError naming the fix."""
    mesh = sharding.make_mesh(config.mesh.shape)
    sharding.check_batch_divides(config.data.global_batch_size, mesh)
    model_cfg = model_lib.ModelConfig.from_config(config.model)
    if config.data.seq_len > model_cfg.max_len:
        raise cli.UserError(f"data.seq_len={config.data.seq_len} exceeds model.max_len="
                            f"{model_cfg.max_len}; raise --config.model.max_len")
    return mesh, model_cfg

def local_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous block of rows of a global batch."""
    n, p = jax.process_count(), jax.process_index()
    rows = next(iter(batch.values())).shape[0] // n
    return {k: v[p * rows:(p + 1) * rows] for k, v in batch.items()}


def mean_eval_metrics(eval_step, state, batches, mesh, theta=()) -> dict[str, float]:
    """The objective's metrics averaged over a fixed list of global eval batches."""
    values = [jax.device_get(eval_step(state.params, sharding.shard_batch(local_rows(b), mesh),
                                       theta)) for b in batches]
    return {f"valid/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


def run(r: Run) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from the workdir. Returns the last metrics."""
    tc = r.config.train
    ckpt = checkpoint_lib.Checkpointer(r.workdir, keep=tc.keep_checkpoints,
                                       async_save=tc.async_checkpoints)
    model_dict = r.config.model.to_dict()
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            r.state, r.state_shardings)
    state, start = r.state, 0
    restored = ckpt.restore_latest(abstract, model_config=model_dict)
    if restored is not None:
        state, start = restored.state, restored.step
        try:
            r.train_iter.set_state(restored.meta["data"])
        except ValueError as e:
            raise checkpoint_lib.CheckpointMismatchError(f"{r.workdir}: {e}") from None
        logging.info("resumed from checkpoint %d in %s", start, r.workdir)

    is_main = jax.process_index() == 0
    if is_main:
        provenance.write(r.workdir, provenance.collect(
            r.config, corpus_hash=r.data_hash, mesh=r.mesh,
            extra=dict(r.provenance_extra, resumed_from_step=start,
                       param_count=model_lib.param_count(state.params))))
    writer = metrics.MetricWriter(r.workdir, enabled=is_main, resume_step=start)
    progress = metrics.Progress(tc.num_steps, start_step=start, log=False)
    tokens_per_step = r.global_batch_size * r.seq_len
    flops_per_step = model_lib.flops_per_token(r.model_config, r.seq_len) * tokens_per_step
    peak = (tc.peak_flops_per_device or perf.peak_flops_per_device()) * r.mesh.devices.size

    stopper = StopSignal()
    last: dict[str, float] = {}
    step = start
    while step < tc.num_steps:
        batch = sharding.shard_batch(next(r.train_iter), r.mesh)
        state, step_metrics = r.train_step(state, batch, r.theta)
        step += 1
        if step % tc.log_every == 0 or step == tc.num_steps:
            last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            last["lr"] = float(r.schedule(step - 1))
            line = progress.update(step, tokens_seen=step * tokens_per_step)
            if progress.steps_per_sec:
                last["perf/tokens_per_s"] = progress.tokens_per_sec
                last["perf/mfu"] = progress.steps_per_sec * flops_per_step / peak
                last["perf/eta_s"] = progress.eta_seconds
            if step % tc.eval_every == 0 or step == tc.num_steps:
                last.update(r.evaluate(state))
            writer.write(step, last)
            if is_main:
                shown = " | ".join(f"{k} {last[k]:.4f}" for k in sorted(last)
                                   if k == "loss" or k.startswith("valid/"))
                logging.info("%s | %s", line, shown)
        stop = stopper.should_stop()
        if step % tc.checkpoint_every == 0 or step == tc.num_steps or stop:
            ckpt.save(step, state, {"data": r.train_iter.get_state(), "model": model_dict})
        if stop:
            logging.warning("SIGTERM received: saved checkpoint %d, stopping", step)
            break
    ckpt.wait()
    ckpt.close()
    writer.close()
    return last
