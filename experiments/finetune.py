"""Supervised fine-tuning on instruction tasks, from a pre-training checkpoint.

  python -m experiments.finetune --config=configs/finetune.py:easy --workdir=/tmp/sft \
      [--config.init_from=/tmp/pretrain]

The loss counts answer tokens only (prompt tokens are masked). Same configs, metrics,
checkpoints, resume and multi-host flags as pre-training; at each evaluation the policy also
answers validation prompts greedily and the gold scorers grade it (`valid/exact_match`,
`valid/graded`).

The sections below follow the run: mesh, data, model, state (and its initialisation), loop.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from learned_loss import objectives
from learned_loss.core import cli, distributed, evaluation, hosts, loop, train
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import model as model_lib
from learned_loss.data import instruction_tasks, paths, pipeline, tasks, training_rows
from learned_loss.meta import base, fit

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/finetune.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")


def prepare_tasks(config, families: Sequence[str]) -> instruction_tasks.TasksInfo:
    """Builds the demonstrations on process 0 first, so hosts sharing a data_dir never race."""

    def build():
        return instruction_tasks.build_instruction_tasks(
            paths.data_dir(config.data.data_dir), **instruction_tasks.sft_args(config, families))

    return hosts.first_on_process_zero(build, "instruction tasks built")


def encoded_demonstrations(source, seq_len: int) -> pipeline.EncodedSource:
    """Random access to encoded demonstrations: {'inputs', 'targets', 'mask'}: [T] each
    (12 T bytes a record, kept after the first read)."""

    def encode(record) -> dict[str, np.ndarray]:
        encoded = tasks.encode_example(instruction_tasks.to_example(record), seq_len)
        return {k: encoded[k] for k in ("inputs", "targets", "mask")}

    return pipeline.EncodedSource(source, encode)


def train_batches(config, records):
    """The iterator of training batches of `config.data.sampler` over the train split."""
    d = config.data
    placement = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if d.sampler == "epochs":
        return pipeline.make_example_iterator(encoded_demonstrations(records, d.seq_len),
                                              global_batch_size=d.global_batch_size,
                                              seed=config.seed, **placement)
    if d.sampler == "uniform":
        # The run key of seed `config.seed` (init_state's state rng), as in a token-level cell.
        run_key = fit.seed_keys([config.seed])[0, 1]
        return training_rows.UniformBatches(
            training_rows.encode_records(records, d.seq_len),
            base.step_keys(run_key, config.train.num_steps), d.global_batch_size, **placement)
    raise cli.UserError(f"data.sampler={d.sampler!r} is not supported; use 'epochs' or "
                        f"'uniform'")


def initial_params(config, abstract_state) -> Any:
    """Parameters from the newest good checkpoint of `config.init_from` (read-only)."""
    source = checkpoint_lib.Checkpointer(config.init_from, read_only=True)
    if not source.steps():
        raise cli.UserError(f"init_from={config.init_from!r} holds no checkpoint; point "
                            f"--config.init_from at a finished pre-training workdir")
    restored = source.restore_latest(abstract_state, model_config=config.model.to_dict())
    if restored is None:
        raise cli.UserError(f"no readable checkpoint in {config.init_from}")
    logging.info("initialised from checkpoint %d of %s", restored.step, config.init_from)
    return restored.state.params, restored.step


def run(config, workdir: str) -> dict:
    """Fine-tunes to `config.train.num_steps`, resuming from the workdir."""
    tc = config.train
    # Mesh.
    mesh, model_cfg = loop.mesh_and_model(config)
    seq_len = config.data.seq_len

    # Data: demonstrations of the training families only.
    families = tasks.roles.resolve(config.tasks, "finetune")
    info = prepare_tasks(config, families)
    train_iter = train_batches(config, instruction_tasks.load_split(info, "train"))
    valid = instruction_tasks.load_split(info, "validation")
    valid_encoded = encoded_demonstrations(valid, seq_len)
    batch_size = config.data.global_batch_size
    eval_batches = [
        {k: np.stack([valid_encoded[i][k] for i in range(s, s + batch_size)])
         for k in ("inputs", "targets", "mask")}
        for s in range(0, min(len(valid), tc.eval_batches * batch_size) - batch_size + 1,
                       batch_size)]
    if not eval_batches:
        raise cli.UserError(f"the validation split has {len(valid)} examples, fewer than one "
                            f"batch of {batch_size}; raise tasks.examples_per_family or "
                            f"the validation fraction in data.splits")
    eval_examples = _eval_examples(valid, tc.eval_prompts_per_family)

    # Model, optimizer, sharded state and steps.
    model = model_lib.build(model_cfg)
    optimizer = train.make_optimizer(config.optimizer, tc.num_steps)
    objective = objectives.build(config.objective)
    state, state_sh = train.create_sharded_state(
        model, optimizer, jax.random.key(config.seed), seq_len, config.sharding.rules, mesh)
    init_step = None
    if config.init_from:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, state_sh)
        params, init_step = initial_params(config, abstract)
        state = state._replace(params=params, opt_state=jax.jit(
            optimizer.init, out_shardings=state_sh.opt_state)(params))
    # The reference of an objective that reads one is the initial model.
    theta = train.step_theta(objective, state.params)
    train_step, eval_step = train.compile_steps(model, optimizer, objective, state_sh, mesh)

    def evaluate(s) -> dict:
        out = loop.mean_eval_metrics(eval_step, s, eval_batches, mesh, theta)
        scores = evaluation.evaluate(model, s.params, eval_examples, batch_size=batch_size,
                                     max_new_tokens=tc.max_new_tokens)["overall"]
        out.update({f"valid/{k}": v for k, v in scores.items()})
        return out

    # Loop: resume, train, evaluate, checkpoint.
    return loop.run(loop.Run(
        config=config, workdir=workdir, mesh=mesh, model_config=model_cfg, state=state,
        train_step=train_step,
        schedule=train.learning_rate_schedule(config.optimizer, tc.num_steps),
        train_iter=train_iter, seq_len=seq_len, global_batch_size=batch_size,
        evaluate=evaluate, data_hash=info.config_hash, theta=theta,
        provenance_extra={"tasks": info.provenance(), "families": list(families),
                          tasks.roles.RECORD_KEY: tasks.roles.record({"finetune": families}),
                          "init_from": config.init_from, "init_step": init_step}))


def _eval_examples(valid, per_family: int) -> list[tasks.Example]:
    """Up to `per_family` validation examples of each family, with their gold answers."""
    chosen: dict[str, list[tasks.Example]] = {}
    for i in range(len(valid)):
        example = instruction_tasks.to_example(valid[i], gold=True)
        bucket = chosen.setdefault(example.family, [])
        if len(bucket) < per_family:
            bucket.append(example)
    return [e for name in sorted(chosen) for e in chosen[name]]


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/finetune.py:tiny")
    distributed.initialize()
    start = time.time()
    last = run(config, _WORKDIR.value)
    logging.info("done in %.1fs: %s", time.time() - start, last)


if __name__ == "__main__":
    cli.run(main)
