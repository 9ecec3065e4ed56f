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
import time

import jax
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from learned_loss import checkpoint as checkpoint_lib
from learned_loss import cli, distributed, loop, objectives, sharding, train
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

    # Model, optimizer, sharded state and steps.
    model = model_lib.build(model_cfg)
    optimizer = train.make_optimizer(config.optimizer, tc.num_steps)
    objective = objectives.get(config.objective)
    state, state_sh = train.create_sharded_state(
        model, optimizer, jax.random.key(config.seed), seq_len, config.sharding.rules, mesh)
    train_step, eval_step = train.compile_steps(model, optimizer, objective, state_sh, mesh)

    # Loop: resume, train, evaluate, checkpoint.
    return loop.run(loop.Run(
        config=config, workdir=workdir, mesh=mesh, model_config=model_cfg, state=state,
        state_shardings=state_sh, train_step=train_step,
        schedule=train.learning_rate_schedule(config.optimizer, tc.num_steps),
        train_iter=train_iter, seq_len=seq_len, global_batch_size=config.data.global_batch_size,
        evaluate=lambda s: loop.mean_eval_metrics(eval_step, s, eval_batches, mesh),
        provenance_extra={"corpus": corpus.provenance()}, data_hash=corpus.corpus_hash))


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
