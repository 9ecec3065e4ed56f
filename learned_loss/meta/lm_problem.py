"""The inner problem of meta-training: fine-tuning a language model with an objective theta.

An inner run trains a model on (possibly noisy) demonstrations with the objective's loss under
theta, by a differentiable optimizer (adam with eps_root > 0); its meta-loss is the answer-token
negative log-likelihood (MLE) of the current model on clean held-out examples. Everything is a
pure function of arrays, so the estimators can differentiate through it (TBPTT) and vmap it over
a population (ES, PES).

Demonstrations live on device as stacked arrays (`training_rows.Demonstrations`, rows [N, T]);
each inner step draws a batch of rows uniformly with replacement from its key
(`training_rows.draw`). The meta-validation batch is drawn the same way from the clean rows.

Inner state: {'params', 'opt_state', 'step' [] int32, 'metrics' (the objective's metrics of the
last step), and 'reference' (the run's initial params) when the objective reads a reference
model}.

Shapes: N rows, B batch, T sequence length.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from learned_loss import objectives as objectives_lib
from learned_loss.core import model as model_lib
from learned_loss.core import train as train_lib
from learned_loss.data import training_rows
from learned_loss.meta import base
from learned_loss.objectives import mle

def answer_nll(model: model_lib.Model, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """[] mean negative log-likelihood of the answer tokens (MLE's loss)."""
    logits = model.apply(params, batch["inputs"]).logits
    return mle.loss((), logits, batch)[0]


def history_of(history: Mapping[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
    """The batch entries the history features read (objectives/learned.py) for rows `index`
    [B]: {'history_visits' [B], 'history_log_prob' [B] (the mean over the visits, 0 with
    none)} from an inner state's history {'sum' [N], 'visits' [N]}."""
    visits = history["visits"][index]
    return {"history_visits": visits,
            "history_log_prob": history["sum"][index] / jnp.maximum(visits, 1.0)}


def lm_problem(model: model_lib.Model, optimizer: optax.GradientTransformation,
               objective: objectives_lib.Objective, train_rows: training_rows.Demonstrations,
               valid_rows: training_rows.Demonstrations, *, batch_size: int, valid_batch_size: int,
               seq_len: int, init_params: Any = None, mesh=None,
               num_train_rows: Any = None) -> base.InnerProblem:
    """Fine-tuning on `train_rows` with `objective` (theta), scored on clean `valid_rows`.

    init_params: the parameters every inner run starts from (e.g. a pre-trained checkpoint);
    None: a fresh random initialisation from each run's key.
    num_train_rows: how many of the leading train rows batches are drawn from ([] int, may be a
    traced value), the others being padding that is never drawn, so that runs on row sets of
    different sizes padded to one size share a program (the same draws as unpadded rows);
    None: all of them.
    mesh: when it has a `data` axis, each inner batch is split over it (under a population
    vmap with `spmd_axis_name='pop'` the rows then shard over `pop` x `data`).
    """
    train = {k: jnp.asarray(v) for k, v in train_rows.batch().items()}
    valid = {k: jnp.asarray(v) for k, v in valid_rows.batch().items()}
    loss = train_lib.objective_loss(model, objective)

    def shard(batch):
        if mesh is None or mesh.shape.get("data", 1) == 1:
            return batch
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, rows), batch)

    def init(key):
        if init_params is None:
            params = model.init(key, jnp.zeros((1, seq_len), jnp.int32))
        else:
            params = jax.tree.map(jnp.asarray, init_params)
        inner = {"params": params, "opt_state": optimizer.init(params),
                 "step": jnp.zeros((), jnp.int32)}
        if objective.needs_reference:
            inner["reference"] = params
        if objective.needs_history:  # Per training row: its answer_log_prob summed, visits.
            n = train["inputs"].shape[0]
            inner["history"] = {"sum": jnp.zeros((n,), jnp.float32),
                                "visits": jnp.zeros((n,), jnp.float32)}
        # The last step's metrics, zero before the first: kept as train.train_step returns
        # them, so that an inner run's arithmetic is the sharded step's (tests/test_one_engine.py).
        metrics = jax.eval_shape(lambda: step(objective.theta, inner, key)["metrics"])
        inner["metrics"] = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)
        return inner

    def step(theta, inner, key):
        rows = train["inputs"].shape[0] if num_train_rows is None else num_train_rows
        index = training_rows.draw_index(key, rows, batch_size)  # [B]
        batch = training_rows.take(train, index)
        if objective.needs_history:
            batch.update(history_of(inner["history"], index))
        batch = shard(batch)
        if objective.needs_reference:  # train.objective_loss's theta for such objectives.
            theta = {"objective": theta, "reference": inner["reference"]}
        grads, metrics = train_lib.gradients(loss, inner["params"], batch, theta, inner["step"])
        updates, opt_state = optimizer.update(grads, inner["opt_state"], inner["params"])
        out = dict(inner, params=optax.apply_updates(inner["params"], updates),
                   opt_state=opt_state, step=inner["step"] + 1, metrics=metrics)
        if objective.needs_history:  # A row drawn twice in a batch counts both visits.
            seen = jax.lax.stop_gradient(metrics["row_answer_log_prob"])  # [B]
            out["history"] = {"sum": inner["history"]["sum"].at[index].add(seen),
                              "visits": inner["history"]["visits"].at[index].add(1.0)}
        return out

    def meta_loss(inner, key):
        return answer_nll(model, inner["params"], shard(training_rows.draw(valid, key, valid_batch_size)))

    return base.InnerProblem(init=init, step=step, meta_loss=meta_loss)
