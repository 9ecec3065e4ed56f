"""The outer shell of a training run, one for every training loop.

`drive(state, step_fn, ...)` takes steps to `num_steps` and owns everything around the step:
resuming from the workdir's newest good checkpoint (the state, and what else a caller restores,
such as the data iterator's position), provenance, metrics (JSONL and TensorBoard) with a
progress line, periodic evaluation, periodic checkpoints, a final checkpoint on SIGTERM
(preemption), and closing it all. Its callers: `run` here (pre-training, fine-tuning and the
RLHF stages: a sharded language model, a data iterator and jitted steps, with throughput and
MFU), and the meta-training runs (`meta/run.py`, `meta/reward_run.py`).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from learned_loss.core import cli, metrics, perf, sharding
from learned_loss.core import provenance as provenance_lib
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import model as model_lib


# Process-wide: a job of several runs sees one signal. `checks` counts the multi-host checks.
_SIGTERM = {"received": False, "checks": 0}


def _on_sigterm(signum, frame):
    del signum, frame
    _SIGTERM["received"] = True


def sigterm_received() -> bool:
    """Whether this process has taken the SIGTERM stop (on several hosts: once they agreed)."""
    return _SIGTERM["received"]


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
    train_step: Callable  # (state, batch, theta) -> (state, metrics)
    schedule: Callable[[int], float] | float  # train.learning_rate_schedule: a rate or a float
    train_iter: Any  # Yields process-local numpy batches; get_state/set_state.
    seq_len: int
    global_batch_size: int
    evaluate: Callable[[Any], Mapping[str, float]]  # state -> {"valid/...": value}
    provenance_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_hash: Optional[str] = None
    theta: Any = ()



def mesh_and_model(config, devices=None) -> tuple[jax.sharding.Mesh, model_lib.ModelConfig]:
    """A training config's mesh over `devices` (default: all; the global batch must divide over
    it) and model config (its max_len must hold data.seq_len); a mismatch is a UserError naming
    the fix."""
    mesh = sharding.config_mesh(config.mesh, devices)
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


class Result(NamedTuple):
    """How `drive` ended."""

    state: Any
    start: int  # The step it resumed from (0: a fresh start).
    step: int  # The step it reached: num_steps, or earlier when SIGTERM stopped it.
    last: dict[str, float]  # The record of the last logged step ({} when none was logged).


def drive(state: Any, step_fn: Callable[[Any, int], tuple[Any, Mapping[str, Any]]], *,
          workdir: str, num_steps: int, model_config: Mapping[str, Any],
          checkpoint_every: int, log_every: int = 1, eval_every: int = 0,
          evaluate: Optional[Callable[[Any], Mapping[str, float]]] = None,
          keep_checkpoints: int = 1, async_checkpoints: bool = False, data: Any = None,
          provenance: Optional[Callable[[int], Mapping[str, Any]]] = None,
          log_keys: Sequence[str] = (),
          log_extra: Optional[Callable[[int, metrics.Progress], Mapping[str, float]]] = None,
          ) -> Result:
    """Takes steps from the workdir's newest good checkpoint (or from `state` at step 0) to
    `num_steps`.

    Args:
      state: the state at step 0, a pytree of arrays placed as `step_fn` wants them (a
        restored checkpoint is placed the same way).
      step_fn: (state, i) -> (state, metrics): takes step i + 1 (i steps are done). The
        metrics, a mapping of scalars on device or host, are read only at logged steps.
      workdir: where checkpoints/, metrics.jsonl, tensorboard/ and provenance.json go.
      num_steps: the step to stop at.
      model_config: what the state's shapes depend on; saved in every checkpoint, and a
        checkpoint of another is refused (checkpoint.CheckpointMismatchError).
      checkpoint_every: steps between checkpoints; the last step and a SIGTERM save one too.
      log_every: steps between records of metrics.jsonl (and the last step).
      eval_every: evaluate at the logged steps that are multiples of it (0: none) and at the
        last step.
      evaluate: state -> {name: value}, added to those records.
      keep_checkpoints: how many of the newest checkpoints to keep.
      async_checkpoints: write checkpoints in a background thread.
      data: what a checkpoint holds beside the state (the data iterator's position): an
        object with get_state() -> JSON and set_state(JSON), which raises ValueError for a
        position of other data.
      provenance: start step -> the provenance record of this start (process 0 writes it).
      log_keys: the names (a trailing '/': all names under it) on the progress line.
      log_extra: (step, progress) -> scalars added to each record (learning rate, throughput).
    Returns:
      The state, start, step reached and last record.
    """
    stopper = StopSignal()
    is_main = jax.process_index() == 0
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=keep_checkpoints,
                                       async_save=async_checkpoints)
    writer = None
    try:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        start = 0
        restored = ckpt.restore_latest(abstract, model_config=dict(model_config))
        if restored is not None:
            state, start = restored.state, restored.step
            if data is not None:
                try:
                    data.set_state(restored.meta["data"])
                except ValueError as e:
                    raise checkpoint_lib.CheckpointMismatchError(f"{workdir}: {e}") from None
            logging.info("resumed from checkpoint %d in %s", start, workdir)
        if is_main and provenance is not None:
            provenance_lib.write(workdir, provenance(start))
        writer = metrics.MetricWriter(workdir, enabled=is_main, resume_step=start)
        progress = metrics.Progress(num_steps, start_step=start, log=False)

        last: dict[str, float] = {}
        step = start
        while step < num_steps:
            state, step_metrics = step_fn(state, step)
            step += 1
            if step % log_every == 0 or step == num_steps:
                last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                line = progress.update(step)
                if log_extra is not None:
                    last.update(log_extra(step, progress))
                if evaluate is not None and (
                        (eval_every and step % eval_every == 0) or step == num_steps):
                    last.update(evaluate(state))
                writer.write(step, last)
                if is_main:
                    logging.info("%s%s", line, "".join(
                        f" | {k} {last[k]:.4f}" for k in sorted(last) if _shown(k, log_keys)))
            stop = stopper.should_stop()
            if step % checkpoint_every == 0 or step == num_steps or stop:
                meta = {} if data is None else {"data": data.get_state()}
                writer.flush()  # The log holds every step the checkpoint holds (a bucket's).
                ckpt.save(step, state, dict(meta, model=dict(model_config)))
            if stop:
                logging.warning("SIGTERM received: saved checkpoint %d, stopping", step)
                break
        ckpt.wait()
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()
    return Result(state, start, step, last)


def _shown(name: str, keys: Sequence[str]) -> bool:
    return any(name == k or (k.endswith("/") and name.startswith(k)) for k in keys)


def run(r: Run) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from the workdir. Returns the last metrics."""
    tc = r.config.train
    tokens_per_step = r.global_batch_size * r.seq_len
    flops_per_step = model_lib.flops_per_token(r.model_config, r.seq_len) * tokens_per_step
    peak = (tc.peak_flops_per_device or perf.peak_flops_per_device()) * r.mesh.devices.size

    def step_fn(state, step):
        del step
        return r.train_step(state, sharding.shard_batch(next(r.train_iter), r.mesh), r.theta)

    def log_extra(step, progress) -> dict[str, float]:
        rate = r.schedule(step - 1) if callable(r.schedule) else r.schedule
        out = {"lr": float(rate)}
        if progress.steps_per_sec:
            out["perf/tokens_per_s"] = progress.steps_per_sec * tokens_per_step
            out["perf/mfu"] = progress.steps_per_sec * flops_per_step / peak
            out["perf/eta_s"] = progress.eta_seconds
        return out

    def provenance(start):
        return provenance_lib.collect(
            r.config, corpus_hash=r.data_hash, mesh=r.mesh,
            extra=dict(r.provenance_extra, resumed_from_step=start,
                       param_count=model_lib.param_count(r.state.params)))

    return drive(r.state, step_fn, workdir=r.workdir, num_steps=tc.num_steps,
                 model_config=r.config.model.to_dict(), checkpoint_every=tc.checkpoint_every,
                 log_every=tc.log_every, eval_every=tc.eval_every, evaluate=r.evaluate,
                 keep_checkpoints=tc.keep_checkpoints, async_checkpoints=tc.async_checkpoints,
                 data=r.train_iter, provenance=provenance,
                 log_keys=("loss", "valid/", "perf/tokens_per_s"), log_extra=log_extra).last
