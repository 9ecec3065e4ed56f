"""The outer loop: optax on theta with whichever estimator the config names.

One outer step (`outer_step`, jitted):

    grad, estimator_state, metrics = estimator.estimate(theta, estimator_state, key)
    theta <- optax update of theta with grad          (skipped when grad is not finite)

A candidate theta can then be screened (`sanity_check`): a short inner run from scratch on clean
demonstrations must lower their loss; a candidate that fails is rejected (theta and the optimizer
state stay as they were). The outer state (theta, optimizer and estimator state, step, rng) is one
pytree, checkpointed whole, so a resumed run repeats the same numbers bit for bit.

Online meta-weighting (`online_step`; Shu et al. 2019, "Meta-Weight-Net"): the inner run is the
model being trained. Each step first takes a TBPTT meta-gradient over K look-ahead inner steps
from the current model (scored on a clean validation batch) and updates theta, then takes one real
inner step under the new theta.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_loss.core import errors
from learned_loss.meta import base, es, fit, pes, tbptt

ESTIMATORS = ("tbptt", "es", "pes", "full_es")


class OuterState(NamedTuple):
    theta: Any
    opt_state: Any
    estimator: Any
    step: jax.Array  # [] int32: outer steps taken
    rng: jax.Array  # [2] uint32 raw key data


def schedule_of(cfg: Mapping[str, Any]) -> base.TruncationSchedule:
    return base.TruncationSchedule(int(cfg["unroll_length"]), int(cfg["min_horizon"]),
                                   int(cfg["max_horizon"]))


def make_estimator(cfg: Mapping[str, Any], problem: base.InnerProblem,
                   mesh=None) -> base.Estimator:
    """The estimator named by cfg['name'] with its settings (configs/meta_train.py)."""
    name = cfg["name"]
    if name == "tbptt":
        return tbptt.tbptt(problem, schedule_of(cfg), num_particles=int(cfg["population"]),
                           remat=bool(cfg["remat"]), mesh=mesh)
    if name == "es":
        return es.antithetic_es(problem, schedule_of(cfg), num_pairs=int(cfg["population"]),
                                sigma=float(cfg["sigma"]), shaping=cfg["shaping"],
                                clip=float(cfg["clip"]), mesh=mesh)
    if name == "pes":
        return pes.pes(problem, schedule_of(cfg), num_pairs=int(cfg["population"]),
                       sigma=float(cfg["sigma"]), clip=float(cfg["clip"]), mesh=mesh)
    if name == "full_es":
        from learned_loss.meta import full_es  # Imports evosax.
        return full_es.full_es(problem, horizon=int(cfg["max_horizon"]),
                               population=int(cfg["population"]), strategy=cfg["strategy"],
                               sigma=float(cfg["sigma"]), mesh=mesh)
    raise errors.UserError(f"unknown estimator {name!r}; choose one of {ESTIMATORS}")


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformation:
    """Adam on theta after clipping the meta-gradient's global norm."""
    return optax.chain(optax.clip_by_global_norm(float(cfg["grad_clip"])),
                       optax.adam(float(cfg["lr"])))


def init(estimator: base.Estimator, optimizer: optax.GradientTransformation, theta: Any,
         key: jax.Array) -> OuterState:
    est_key, state_key = jax.random.split(key)
    theta = jax.tree.map(jnp.asarray, theta)
    return OuterState(theta, optimizer.init(theta), estimator.init(theta, est_key),
                      jnp.zeros((), jnp.int32), jax.random.key_data(state_key))


def outer_step(estimator: base.Estimator, optimizer: optax.GradientTransformation):
    """state -> (state, metrics): one estimate and one optimizer update of theta."""

    def step(state: OuterState):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad, est_state, metrics = estimator.estimate(state.theta, state.estimator, key)
        finite = base.all_finite(grad)
        grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grad),
                       skipped=1.0 - finite.astype(jnp.float32))
        return OuterState(keep(theta, state.theta), keep(opt_state, state.opt_state), est_state,
                          state.step + 1, state.rng), metrics

    return step


def sanity_check(problem: base.InnerProblem, num_steps: int):
    """(theta, key) -> (passed [] bool, loss before [], loss after []): a fresh inner run of
    `num_steps` must lower the meta-loss of the same clean batch (one key for both reads)."""

    def check(theta, key):
        init_key, run_key, loss_key = jax.random.split(key, 3)
        inner = problem.init(init_key)
        before = problem.meta_loss(inner, loss_key)
        inner, _ = base.unroll(problem, theta, inner, run_key, num_steps)
        after = problem.meta_loss(inner, loss_key)
        return jnp.isfinite(after) & (after < before), before, after

    return check


def online_step(problem: base.InnerProblem, optimizer: optax.GradientTransformation, *,
                lookahead: int, remat: bool = True):
    """(theta, opt_state, inner, key) -> (theta, opt_state, inner, metrics): one Meta-Weight-Net
    iteration (module docstring). A non-finite meta-gradient leaves theta unchanged."""

    def meta_loss(theta, inner, key):
        return base.unroll(problem, theta, inner, key, lookahead, remat=remat)[1]

    def step(theta, opt_state, inner, key):
        look_key, step_key = jax.random.split(key)
        loss, grad = jax.value_and_grad(meta_loss)(theta, inner, look_key)
        finite = base.all_finite(grad) & jnp.isfinite(loss)
        grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
        updates, new_opt_state = optimizer.update(grad, opt_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        theta, opt_state = keep(new_theta, theta), keep(new_opt_state, opt_state)
        inner = problem.step(theta, inner, step_key)
        return theta, opt_state, inner, {"meta_loss": loss, "grad_norm": optax.tree.norm(grad),
                                         "skipped": 1.0 - finite.astype(jnp.float32)}

    return step


def online_runner(problem_of: fit.ProblemOf, optimizer: optax.GradientTransformation, *,
                  lookahead: int) -> fit.Runner:
    """`fit`'s runner of online meta-weighting: each step one `online_step`. The carry is
    (theta, its optimizer state, the inner state, the count of skipped meta-updates [])."""

    def init(theta, init_key, data):
        return theta, optimizer.init(theta), problem_of(data).init(init_key), jnp.zeros(())

    def advance(carry, run_key, data, num_steps):
        step = online_step(problem_of(data), optimizer, lookahead=lookahead)

        def body(carry, key):
            theta, opt_state, inner = carry
            theta, opt_state, inner, metrics = step(theta, opt_state, inner, key)
            return (theta, opt_state, inner), metrics["skipped"]

        theta, opt_state, inner, skipped = carry
        (theta, opt_state, inner), s = jax.lax.scan(
            body, (theta, opt_state, inner), jax.random.split(run_key, num_steps))
        return theta, opt_state, inner, skipped + s.sum()

    return fit.Runner(init=init, advance=advance, inner=lambda carry: carry[2])
