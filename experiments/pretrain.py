"""MLE pre-training of the Transformer LM on a local text corpus.

  python -m experiments.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/pretrain

Any config field can be overridden (`--config.optimizer.lr=3e-4`); re-running with the same
workdir resumes from its newest good checkpoint. Multi-host: add `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` on every host (or the LEARNED_LOSS_* environment variables).

Writes into the workdir: metrics.jsonl, tensorboard/, provenance.json, checkpoints/.
The sections below follow the run: mesh, data, model, state, checkpoint, loop.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from learned_loss import checkpoint as checkpoint_lib
from learned_loss import cli, distributed, metrics, objectives, perf, provenance, sharding, train
from learned_loss import model as model_lib
from learned_loss.data import pipeline, text_corpus

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/pretrain.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")


def data_dir(config) -> str:
    """The TFDS data_dir: the config's, else $LEARNED_LOSS_DATA_DIR, else ~/.cache."""
    return (config.data.data_dir or os.environ.get("LEARNED_LOSS_DATA_DIR")
            or os.path.expanduser("~/.cache/learned_loss/tfds"))


def prepare_corpus(config) -> text_corpus.CorpusInfo:
    """Builds the corpus on process 0 first, so that hosts sharing a data_dir never race."""
    text_dir = config.data.text_dir or text_corpus.default_text_dir()

    def build():
        return text_corpus.build_text_corpus(text_dir, data_dir(config),
                                             pattern=config.data.pattern,
                                             valid_fraction=config.data.valid_fraction)

    if jax.process_count() == 1:
        return build()
    info = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("text corpus built")
    return info or build()


class StopSignal:
    """Turns SIGTERM (preemption) into a flag checked between steps; all hosts agree on it."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.received
        flags_all = multihost_utils.process_allgather(np.int32(self.received))
        return bool(np.any(flags_all))


def run(config, workdir: str) -> dict:
    """Trains to `config.train.num_steps`, resuming from the workdir. Returns the last metrics."""
    tc = config.train
    # Mesh.
    mesh = sharding.make_mesh(config.mesh.shape)
    sharding.check_batch_divides(config.data.global_batch_size, mesh)
    model_cfg = model_lib.ModelConfig.from_config(config.model)
    seq_len = config.data.seq_len
    if seq_len > model_cfg.max_len:
        raise cli.UserError(f"data.seq_len={seq_len} exceeds model.max_len={model_cfg.max_len}; "
                            f"raise --config.model.max_len")

    # Data.
    corpus = prepare_corpus(config)
    train_iter = pipeline.make_lm_iterator(
        text_corpus.load_split(corpus, "train"), seq_len=seq_len,
        global_batch_size=config.data.global_batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    eval_batches = pipeline.make_eval_batches(
        text_corpus.load_split(corpus, "validation"), seq_len=seq_len,
        batch_size=config.data.global_batch_size, max_batches=tc.eval_batches)

    # Model, optimizer and sharded state.
    model = model_lib.build(model_cfg)
    optimizer = train.make_optimizer(config.optimizer, tc.num_steps)
    schedule = train.learning_rate_schedule(config.optimizer, tc.num_steps)
    objective = objectives.get(config.objective)
    state, state_sh = train.create_sharded_state(
        model, optimizer, jax.random.key(config.seed), seq_len, config.sharding.rules, mesh)
    train_step, eval_step = train.compile_steps(model, optimizer, objective, state_sh, mesh)
    theta = ()  # MLE has no objective parameters.

    # Checkpoint: resume from the newest good one.
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=tc.keep_checkpoints,
                                       async_save=tc.async_checkpoints)
    model_dict = config.model.to_dict()
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, state_sh)
    restored = ckpt.restore_latest(abstract, model_config=model_dict)
    start = 0
    if restored is not None:
        state, start = restored.state, restored.step
        train_iter.set_state(restored.meta["data"])
        logging.info("resumed from checkpoint %d in %s", start, workdir)

    is_main = jax.process_index() == 0
    if is_main:
        provenance.write(workdir, provenance.collect(
            config, corpus_hash=corpus.corpus_hash, mesh=mesh,
            extra={"corpus": corpus.provenance(), "resumed_from_step": start,
                   "param_count": model_lib.param_count(state.params)}))
    writer = metrics.MetricWriter(workdir, enabled=is_main, resume_step=start)
    progress = metrics.Progress(tc.num_steps, start_step=start, log=False)
    tokens_per_step = config.data.global_batch_size * seq_len
    flops_per_step = model_lib.flops_per_token(model_cfg, seq_len) * tokens_per_step
    peak = (tc.peak_flops_per_device or perf.peak_flops_per_device()) * mesh.devices.size

    def save(step):
        ckpt.save(step, state, {"data": train_iter.get_state(), "model": model_dict})

    def evaluate() -> float:
        losses = [float(eval_step(state.params, sharding.shard_batch(_local_rows(b), mesh), theta)
                        ["loss"]) for b in eval_batches]
        return float(np.mean(losses))

    # Loop.
    stopper = StopSignal()
    last = {}
    step = start
    while step < tc.num_steps:
        batch = sharding.shard_batch(next(train_iter), mesh)
        state, step_metrics = train_step(state, batch, theta)
        step += 1
        if step % tc.log_every == 0 or step == tc.num_steps:
            last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            last["lr"] = float(schedule(step - 1))
            line = progress.update(step, tokens_seen=step * tokens_per_step)
            if progress.steps_per_sec:
                last["perf/tokens_per_s"] = progress.tokens_per_sec
                last["perf/mfu"] = progress.steps_per_sec * flops_per_step / peak
                last["perf/eta_s"] = progress.eta_seconds
            if step % tc.eval_every == 0 or step == tc.num_steps:
                last["valid/loss"] = evaluate()
            writer.write(step, last)
            if is_main:
                valid = f" | valid loss {last['valid/loss']:.4f}" if "valid/loss" in last else ""
                logging.info("%s | loss %.4f%s", line, last["loss"], valid)
        stop = stopper.should_stop()
        if step % tc.checkpoint_every == 0 or step == tc.num_steps or stop:
            save(step)
        if stop:
            logging.warning("SIGTERM received: saved checkpoint %d, stopping", step)
            break
    ckpt.wait()
    ckpt.close()
    writer.close()
    return last


def _local_rows(batch: dict) -> dict:
    """This process's contiguous block of rows of a global (eval) batch."""
    n, p = jax.process_count(), jax.process_index()
    rows = next(iter(batch.values())).shape[0] // n
    return {k: v[p * rows:(p + 1) * rows] for k, v in batch.items()}


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}; pass settings as --config.FIELD")
    if _WORKDIR.value is None:
        raise cli.UserError("--workdir is required: the folder for checkpoints and metrics")
    config = _CONFIG.value
    if config is None:
        raise cli.UserError("--config is required, e.g. --config=configs/pretrain.py:tiny")
    distributed.initialize()
    start = time.time()
    last = run(config, _WORKDIR.value)
    logging.info("done in %.1fs: %s", time.time() - start, last)


if __name__ == "__main__":
    cli.run(main, user_errors=(text_corpus.CorpusError, sharding.ShardingError,
                               checkpoint_lib.CheckpointMismatchError))
