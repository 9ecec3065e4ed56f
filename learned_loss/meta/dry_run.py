"""Meta-training's half of a dry run (`learned_loss.core.dry_run`): the outer step of a
configs/meta_train.py config for a TPU topology, without data.

What is compiled is `outer.outer_step` of the configured estimator over
`meta.run.make_problem`'s inner problem, jitted as `meta.run.run_offline` jits it, on the outer
state placed by `base.population_shardings` (as `run.init_outer_state` places it). The inner
runs' demonstrations, closed over in a run, are arguments here: rows [N, T] (N from the config,
`meta_rows`).

Shapes: N rows, T sequence length.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from learned_loss import objectives
from learned_loss.core import dry_run, sharding
from learned_loss.core import model as model_lib
from learned_loss.data import training_rows
from learned_loss.meta import base, outer
from learned_loss.meta import run as meta_run


def meta_rows(config) -> tuple[int, int]:
    """(train rows, validation rows) of a meta-training config's inner problem, from its
    settings: data.windows and data.valid_windows on text; on tasks, examples_per_family x
    families x the split's fraction (the splits' sizes to within rounding)."""
    d = config.data
    if d.get("source", "tasks") == "text":
        return int(d.windows), int(d.valid_windows)
    n = config.tasks.examples_per_family * len(config.tasks.families)
    valid = max(int(round(n * d.valid_fraction)), 1)
    return max(int(round(n * (1.0 - d.valid_fraction - d.test_fraction))), 1), valid


def meta_program(config, devices: Sequence) -> dry_run.Program:
    """The outer step of a configs/meta_train.py config over `devices`: its estimator over
    inner runs of its model, as `meta.run.run_offline` jits it."""
    mesh = sharding.config_mesh(config.mesh, devices)
    pop_mesh, data_mesh = meta_run.submeshes(mesh)
    model_cfg = model_lib.ModelConfig.from_config(config.model)
    model = model_lib.build(model_cfg)
    objective = objectives.build(config.objective)
    optimizer = meta_run.inner_optimizer(config)
    outer_optimizer = outer.make_optimizer(config.outer)
    seq_len = config.data.seq_len
    n_train, n_valid = meta_rows(config)

    def rows(n):
        return training_rows.Demonstrations(
            inputs=jax.ShapeDtypeStruct((n, seq_len), jnp.int32),
            targets=jax.ShapeDtypeStruct((n, seq_len), jnp.int32),
            mask=jax.ShapeDtypeStruct((n, seq_len), jnp.float32),
            corrupted=jax.ShapeDtypeStruct((n,), jnp.bool_))

    init_params = None
    if config.inner.init_from:  # A checkpoint of this model: its shapes, not its values.
        init_params = jax.eval_shape(model.init, jax.random.key(0),
                                     jnp.zeros((1, seq_len), jnp.int32))

    def estimator_of(train_rows, valid_rows, params):
        problem = meta_run.make_problem(config, model, optimizer, objective, train_rows,
                                        valid_rows, params, data_mesh)
        return outer.make_estimator(config.estimator, problem, pop_mesh)

    def init(key, train_rows, valid_rows, params):
        return outer.init(estimator_of(train_rows, valid_rows, params), outer_optimizer,
                          objective.theta, key)

    def step(state, train_rows, valid_rows, params):
        estimator = estimator_of(train_rows, valid_rows, params)
        return outer.outer_step(estimator, outer_optimizer)(state)

    data = (dry_run.replicated(rows(n_train), mesh), dry_run.replicated(rows(n_valid), mesh),
            None if init_params is None else dry_run.replicated(init_params, mesh))
    abstract = jax.eval_shape(init, jax.random.key(config.seed), *data)
    state = dry_run.abstract(abstract, base.population_shardings(abstract, mesh))
    est = config.estimator
    # Inner runs per outer step, each `unroll_length` steps (full_es: a whole run).
    runs = est.population * (2 if est.name in ("es", "pes") else 1)
    steps = est.max_horizon if est.name == "full_es" else est.unroll_length
    pop = mesh.shape.get("pop", 1)
    fix = (f"a topology with more chips, fewer inner runs per chip (--config.estimator.population="
           f"{max(est.population // 2, pop)}, or a larger mesh.shape.pop), or a smaller inner "
           f"batch (--config.inner.batch_size={max(config.inner.batch_size // 2, 1)})")
    return dry_run.Program(
        f"meta-training outer step ({est.name}: {runs} inner runs, {steps} steps each)",
        jax.jit(step), (state,) + data, ("state", "train_rows", "valid_rows", "init_params"),
        tokens=runs * steps * config.inner.batch_size * seq_len,
        forward_tokens=runs * config.inner.valid_batch_size * seq_len, model_config=model_cfg,
        seq_len=seq_len, fix=fix)


def program_of(config, devices: Sequence) -> dry_run.Program:
    """The step a config trains with: meta-training's outer step for a config with an
    estimator, else the pre-training step (`dry_run.program_of`)."""
    if "estimator" in config and "outer" in config:
        return meta_program(config, devices)
    return dry_run.program_of(config, devices)
