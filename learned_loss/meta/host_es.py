"""Full-horizon evolution strategies whose meta-loss is computed on the host.

`full_es` traces the whole inner run and its meta-loss into one jitted program. Some
meta-objectives cannot be traced: the gold score of a policy's samples comes from the task
suite's Python scorers, which read decoded text. Here the strategy stays under `jax.jit` (evosax
`ask` and `tell`, with the same strategies, worst-filled failures and `grad = theta - m'` as
`full_es`) and the members are scored in between by any Python function:

    candidates = ask(theta, state, key)                  jitted; [P, D] flat thetas around theta
    losses = population_loss(members(candidates), key)   host: [P], a whole inner run per member
    grad, state, metrics = tell(theta, state, candidates, losses, key)       jitted

`population_loss` gets the members as one pytree with a leading population axis, so an inner
problem can run them side by side in one vmapped program (reward_problem's `run_population`);
`one_at_a_time(meta_loss)` makes one from a per-member function.

With Open-ES (OpenAI-ES, Salimans et al. 2017, "Evolution strategies as a scalable alternative to
reinforcement learning"): antithetic pairs eps_i, -eps_i (member i and i + P / 2), centered-rank
fitness shaping u_i in [-0.5, 0.5] (the highest loss gets +0.5) and

    grad = 1 / (P sigma^2) sum_i u_i eps_i,

the rank-shaped gradient of the Gaussian-smoothed meta-loss E_z[L(theta + sigma z)]; the outer
optax optimizer owns the learning rate (the strategy's own optimizer is sgd(1.0)).

Bias and variance are `full_es`'s: no truncation bias (every member is scored after its whole
inner run) and no backpropagation, at the price of variance that grows with dim(theta) / P. A
member whose meta-loss is not finite (a diverged inner run) ranks last (the largest finite loss
+ 1) and is counted in metrics['diverged']; when none is finite theta stays where it is. The
meta-loss can be any Python function of the members (`full_es` instead traces one program that
holds the meta-loss too).

The outer state is `outer.OuterState` (theta, optimizer state, strategy state, step, rng): one
pytree, checkpointed whole, so a resumed run repeats the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from learned_loss.meta import base, full_es, outer


class HostES(NamedTuple):
    """Jitted halves of an evosax strategy over theta's flat vector (module docstring)."""

    init: Callable[[Any, jax.Array], Any]  # (theta, key) -> strategy state
    ask: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]  # -> (candidates [P, D], asked)
    tell: Callable[..., tuple[Any, Any, dict]]  # (theta, asked, candidates, losses, key)
    unravel: Callable[[jax.Array], Any]  # [D] -> a theta pytree
    population: int

    def members(self, candidates: jax.Array) -> Any:
        """[P, D] flat candidates -> one theta pytree whose leaves lead with the axis P."""
        return jax.vmap(self.unravel)(candidates)


def host_es(theta: Any, *, population: int, strategy: str = "open_es", sigma: float = 0.05,
            strategy_kwargs: dict | None = None) -> HostES:
    """The ask/tell pair of `strategy` ('open_es', 'snes' or 'cma_es') for thetas shaped like
    `theta`, with population P and initial std sigma."""
    if strategy not in full_es.STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(full_es.STRATEGIES)}, got "
                         f"{strategy!r}")
    if population < 2 or sigma <= 0:
        raise ValueError(f"need population >= 2 and sigma > 0, got {population}, {sigma}")
    antithetic = (strategy_kwargs or {}).get("use_antithetic_sampling", True)
    if strategy == "open_es" and antithetic and population % 2:
        raise ValueError(f"antithetic Open-ES needs an even population, got {population}")
    flat, unravel = ravel_pytree(theta)
    es, params = full_es.make_strategy(strategy, population, flat.size, sigma, strategy_kwargs)

    def init(theta_, key):
        mean, _ = ravel_pytree(theta_)
        state = es.init(key, mean.astype(jnp.float32), params)
        return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state)  # strong types

    def ask(theta_, state, key):
        mean, _ = ravel_pytree(theta_)
        # The outer optimizer may have moved theta otherwise than the strategy: search there.
        return es.ask(key, state.replace(mean=mean.astype(jnp.float32)), params)  # [P, D]

    def tell(theta_, asked, candidates, losses, key):
        mean, _ = ravel_pytree(theta_)
        mean = mean.astype(jnp.float32)  # [D]
        finite = jnp.isfinite(losses)  # [P]
        told, _ = es.tell(key, candidates, full_es.worst_filled(losses), asked, params)
        state = jax.tree.map(lambda new, old: jnp.where(finite.any(), new, old), told, asked)
        grad = unravel(mean - state.mean)  # the strategy's step, negated
        metrics = {"meta_loss": base.finite_mean(losses),
                   "best_loss": jnp.min(jnp.where(finite, losses, jnp.inf)),
                   "diverged": 1.0 - finite.mean(), "sigma": jnp.mean(state.std)}
        return grad, state, metrics

    return HostES(jax.jit(init), jax.jit(ask), jax.jit(tell), unravel, population)


def init_state(es: HostES, optimizer: optax.GradientTransformation, theta: Any,
               key: jax.Array) -> outer.OuterState:
    """The outer state at theta (step 0)."""
    es_key, state_key = jax.random.split(key)
    theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)
    return outer.OuterState(theta, optimizer.init(theta), es.init(theta, es_key),
                            jnp.zeros((), jnp.int32), jax.random.key_data(state_key))


def _apply(optimizer: optax.GradientTransformation):
    """(state, grad, strategy state) -> state: the optax step on theta (skipped, keeping theta
    and the optimizer state, when grad is not finite)."""

    def apply(state: outer.OuterState, grad, strategy_state):
        finite = base.all_finite(grad)
        grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        return outer.OuterState(keep(theta, state.theta), keep(opt_state, state.opt_state),
                                strategy_state, state.step + 1, state.rng), \
            {"grad_norm": optax.tree.norm(grad), "skipped": 1.0 - finite.astype(jnp.float32)}

    return jax.jit(apply)


def one_at_a_time(meta_loss: Callable[[Any, jax.Array], float]
                  ) -> Callable[[Any, jax.Array], np.ndarray]:
    """A population loss (`outer_step_fn`) that calls meta_loss(theta_i, key) -> float on each
    member in turn."""

    def population_loss(members: Any, key: jax.Array) -> np.ndarray:
        size = jax.tree.leaves(members)[0].shape[0]
        return np.array([meta_loss(jax.tree.map(lambda x: x[i], members), key)
                         for i in range(size)], np.float32)

    return population_loss


def outer_step_fn(es: HostES, optimizer: optax.GradientTransformation):
    """A function (state, population_loss) -> (state, metrics, losses [P] np.ndarray): one outer
    step.

    population_loss(members, key) -> [P] gets every member as one pytree with a leading axis P
    (`HostES.members`) and one key for all of them (common random numbers: antithetic pairs
    share prompts and sampling keys, so they differ only by theta); NaN/inf marks a failed
    run. `one_at_a_time` adapts a per-member meta-loss.
    """
    apply = _apply(optimizer)

    def step(state: outer.OuterState, population_loss: Callable[[Any, jax.Array], np.ndarray]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        ask_key, run_key, tell_key = jax.random.split(key, 3)
        candidates, asked = es.ask(state.theta, state.estimator, ask_key)  # [P, D]
        losses = np.asarray(population_loss(es.members(candidates), run_key),
                            np.float32)  # [P]
        if losses.shape != (es.population,):
            raise ValueError(f"population_loss returned shape {losses.shape}; expected "
                             f"({es.population},), one loss per member")
        grad, strategy_state, metrics = es.tell(state.theta, asked, candidates,
                                                jnp.asarray(losses), tell_key)
        state, update_metrics = apply(state, grad, strategy_state)
        return state, dict(metrics, **update_metrics), losses

    return step
