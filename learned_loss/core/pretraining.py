"""MLE pre-training of the Transformer LM on a local text corpus (experiments/pretrain.py runs
it from the command line; the studies reach it through its cache, `cached`).

`run(config, workdir)` trains a configs/pretrain.py config to `train.num_steps`, resuming from
the workdir's newest good checkpoint. The sections follow the run: mesh, data, model, state,
checkpoint, loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from learned_loss import objectives
from learned_loss.core import checkpoint, hosts, loop, policy, provenance, sharding, store
from learned_loss.core import files, train
from learned_loss.core import model as model_lib
from learned_loss.data import paths, pipeline, tasks, text_corpus, tokenizer
from learned_loss.objectives import mle

# The modules whose code decides a pre-trained checkpoint: what keys a cached one
# (`cache_key`), so that a checkpoint built by other code is never reused.
SOURCES = (sys.modules[__name__], model_lib, train, loop, sharding, mle, pipeline, text_corpus,
           tokenizer, tasks.base, tasks.partition)


def prepare_corpus(config, valid_fraction: float | None = None) -> text_corpus.CorpusInfo:
    """Builds the corpus of `config.data` (text_dir, pattern, data_dir and, unless given,
    valid_fraction) on process 0 first, so that hosts sharing a data_dir never race."""
    text_dir = config.data.text_dir or text_corpus.default_text_dir()
    if valid_fraction is None:
        valid_fraction = config.data.valid_fraction

    def build():
        return text_corpus.build_text_corpus(text_dir, paths.data_dir(config.data.data_dir),
                                             pattern=config.data.pattern,
                                             valid_fraction=valid_fraction)

    return hosts.first_on_process_zero(build, "text corpus built")


def mix_families(config) -> tuple[str, ...]:
    """The families whose text the corpus mixes in (none when data.task_mix_per_family is 0)."""
    if not config.data.task_mix_per_family:
        return ()
    return tasks.roles.resolve(config.tasks, "pretrain_mix")


def task_documents(config) -> list[dict]:
    """`data.task_mix_per_family` task examples of each training family, as corpus documents:
    train inputs only (`tasks.partition`), so no validation or test input reaches pre-training.

    Families come from `tasks.roles.resolve` (role 'pretrain_mix'), which refuses held-out
    ones.
    """
    t = config.tasks
    families = mix_families(config)
    docs = []
    for index, family in enumerate(families):
        rng = np.random.default_rng([t.seed, index, 104729])
        for i in range(config.data.task_mix_per_family):
            example = tasks.partition.draw(family, rng, t.difficulty, "train")
            docs.append({"path": f"tasks/{family}/{i:07d}", "text": tasks.task_text(example),
                         "input_id": example.input_id})
    return docs


def count_verbatim(config, texts) -> int:
    """How many of `texts` occur verbatim in the pre-training text of `config`: the corpus's
    train split and the task mix."""
    d = config.data
    docs = text_corpus.split_texts(d.text_dir or None, d.pattern, d.valid_fraction, "train")
    docs += [doc["text"] for doc in task_documents(config)]
    blob = "\n\x00\n".join(docs)
    return sum(text in blob for text in set(texts))


def run(config, workdir: str) -> dict:
    """Trains to `config.train.num_steps`, resuming from the workdir. Returns the last metrics."""
    tc = config.train
    # Mesh.
    mesh, model_cfg = loop.mesh_and_model(config)
    seq_len = config.data.seq_len

    # Data.
    corpus = prepare_corpus(config)
    train_source = text_corpus.load_split(corpus, "train")
    mix = task_documents(config)
    if mix:
        train_source = [train_source[i] for i in range(len(train_source))] + mix
    train_iter = pipeline.make_lm_iterator(
        train_source, seq_len=seq_len,
        global_batch_size=config.data.global_batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    eval_batches = pipeline.make_eval_batches(
        text_corpus.load_split(corpus, "validation"), seq_len=seq_len,
        batch_size=config.data.global_batch_size, max_batches=tc.eval_batches)

    # Model, optimizer, sharded state and steps.
    model = model_lib.build(model_cfg)
    optimizer = train.make_optimizer(config.optimizer, tc.num_steps)
    objective = objectives.build(config.objective)
    state, state_sh = train.create_sharded_state(
        model, optimizer, jax.random.key(config.seed), seq_len, config.sharding.rules, mesh)
    # The reference of an objective that reads one is the initial model.
    theta = train.step_theta(objective, state.params)
    train_step, eval_step = train.compile_steps(model, optimizer, objective, state_sh, mesh)

    # Loop: resume, train, evaluate, checkpoint.
    return loop.run(loop.Run(
        config=config, workdir=workdir, mesh=mesh, model_config=model_cfg, state=state,
        train_step=train_step,
        schedule=train.learning_rate_schedule(config.optimizer, tc.num_steps),
        train_iter=train_iter, seq_len=seq_len, global_batch_size=config.data.global_batch_size,
        evaluate=lambda s: loop.mean_eval_metrics(eval_step, s, eval_batches, mesh, theta),
        theta=theta,
        provenance_extra={"corpus": corpus.provenance(), "task_mix_documents": len(mix),
                          tasks.roles.RECORD_KEY: tasks.roles.record(
                              {"pretrain_mix": mix_families(config)})},
        data_hash=corpus.corpus_hash))


# ---- the cache of pre-trained checkpoints ---------------------------------------------------


def cache_root(configured: str = "") -> str:
    """The cache folder: `configured`, else $LEARNED_LOSS_CACHE, else ~/.cache/learned_loss.
    It must be local (cli.UserError for a bucket): parallel runs share an entry through an
    fcntl lock file, which an object store cannot hold."""
    root = configured or os.environ.get("LEARNED_LOSS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "learned_loss")
    return files.local_only(root, "the pre-training cache (config.cache_dir or "
                                  "$LEARNED_LOSS_CACHE; parallel runs share it through a file "
                                  "lock, which a bucket cannot hold)")


def cache_key(config) -> str:
    """The key of a pre-training config's cached checkpoint: the hash of the config, of the code
    that trains it (`SOURCES`), of the corpus's content and of the data versions (the corpus
    builder's, the task partition's), so that a checkpoint built by other code or data is never
    reused."""
    corpus = text_corpus.corpus_hash(config.data.text_dir or text_corpus.default_text_dir(),
                                     config.data.pattern)
    return provenance.config_hash({
        "config": config.to_dict(), "code": provenance.source_hash(*SOURCES),
        "corpus": corpus, "data_versions": {"text_corpus": str(text_corpus.TextCorpus.VERSION),
                                            "task_partition": tasks.partition.VERSION}})


def cache_dir(config, cache: str = "") -> str:
    """CACHE/pretrain-KEY, where the checkpoint of `config` is kept (CACHE: `cache_root`)."""
    return os.path.join(cache_root(cache), f"pretrain-{cache_key(config)}")


def cached(config, train_run: Optional[Callable[[Any, str], Any]] = None,
           cache: str = "") -> policy.Policy:
    """The pre-trained policy of `config`: trained into the cache by `train_run` (default:
    `run`) unless a finished run is there. A lock file beside the cache entry lets parallel
    runs (a sweep's points) share it: one trains, the others wait and reuse it. In a multi-host
    job process 0 holds the lock for all its hosts, which train together."""
    path = cache_dir(config, cache)
    steps = config.train.num_steps
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _lock(path + ".lock", hosts.is_writer()):
        if not store.ensure("pre-training", lambda: checkpoint.finished(path, steps),
                            lambda: (train_run or run)(config, path), path):
            logging.info("reusing the pre-trained checkpoint in %s", path)
    return policy.load(path)


@contextlib.contextmanager
def _lock(path: str, take: bool):
    """An exclusive `fcntl` lock on the file `path` while the block runs (when `take`)."""
    if not take:
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
