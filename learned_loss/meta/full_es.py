"""Full-horizon evolution strategies: whole inner runs, scored and updated by evosax strategies.

Each outer step sets the mean m of an evolution strategy to the current theta, asks it for P
candidates theta_i = theta + eps_i, trains each candidate by a *whole* fresh inner run
(`problem.init`, then `horizon` steps of `base.unroll`) and tells the strategy the P final
meta-losses L_i. The estimate is the step the strategy itself takes:

    grad = theta - m'        (m' the strategy's new mean)

so an outer `optax.sgd(1.0)` reproduces the strategy exactly and any other outer optimizer takes
the strategy's step as a descent direction. With u_i the shaped fitness of member i (evosax's
own shaping, from ranks of L_i; a higher loss is worse) the step is, per strategy:

  open_es  OpenAI-ES (Salimans et al. 2017, "Evolution strategies as a scalable alternative to
           reinforcement learning"), antithetic eps_i = sigma z_i, u_i centered ranks in
           [-0.5, 0.5] (the highest loss gets +0.5):
               g = 1 / (P sigma^2) sum_i u_i eps_i
           the rank-shaped estimate of the gradient of the Gaussian-smoothed meta-loss
           E_z[L(theta + sigma z)]. The strategy's optax optimizer is sgd(1.0) here (not evosax's
           sgd(1e-3)), so grad = g and the outer optimizer owns the learning rate; with
           `strategy_kwargs={'optimizer': opt}` grad is -opt's update of g (lr * g for sgd(lr)).
  snes     Separable NES (Wierstra et al. 2014, "Natural evolution strategies"), eps_i = sigma
           * z_i with a per-coordinate sigma, u_i rank utilities w_i (positive for about the best
           half, summing to zero):
               grad = -sum_i w_i eps_i
           the natural-gradient step of the mean (the Fisher metric of N(m, diag sigma^2)); sigma
           adapts by sigma_d <- sigma_d exp(eta_sigma / 2 sum_i w_i (z_id^2 - 1)).
  cma_es   CMA-ES (Hansen 2016, "The CMA evolution strategy: a tutorial"), eps_i = sigma y_i with
           y_i ~ N(0, C), positive recombination weights w_i on the best half:
               grad = -sum_{i: w_i > 0} w_i eps_i        (c_mean = 1)
           the weighted-recombination step of the mean, not the gradient of anything; the step
           size sigma (cumulative step-size adaptation) and the covariance C (rank-one and
           rank-mu updates) adapt from the evolution paths. Those paths assume the mean moved by
           the strategy's own step: exact with an outer sgd(1.0), approximate otherwise.

The strategies are evosax's (Lange 2023, "evosax: JAX-based evolution strategies"): `Open_ES`,
`SNES`, `CMA_ES`, built once per dimension of theta over a flat solution and closed over, so
`estimate` runs under `jax.jit`. The estimator's state is the strategy's state (its `mean`,
`std`, and for CMA-ES `C`, `p_std`, `p_c`).

Bias and variance: no truncation bias, since every member is scored by the meta-loss of a whole
inner run (as in LPO, Lu et al. 2022, "Discovered policy optimisation", and TaylorGLO, Gonzalez
and Miikkulainen 2021, "Optimizing loss functions through multivariate Taylor polynomial
parameterization"), and no backpropagation through the run (memory independent of the horizon,
non-differentiable meta-objectives allowed). The cost is a whole inner run per member per outer
step, and the variance of the search direction grows with the dimension of theta (roughly
dim / P for the Open-ES gradient), so it suits small thetas. All members of one call share the
init key and the data key (common random numbers): they differ only by theta.

A member whose meta-loss is not finite (a diverged inner run) gets the worst fitness, the largest
finite loss + 1, so it only ranks last and never reaches the update as a NaN;
`metrics['diverged']` counts members. When no member is finite the strategy's state is kept and
grad is zero. metrics: 'meta_loss' (mean finite meta-loss of the members), 'best_loss',
'diverged' (fraction non-finite), 'sigma' (the strategy's std after the update, averaged over
coordinates for SNES; the global step size for CMA-ES).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import CMA_ES, SNES, Open_ES
from jax.flatten_util import ravel_pytree

from learned_loss.meta import base

STRATEGIES = {"open_es": Open_ES, "snes": SNES, "cma_es": CMA_ES}


def make_strategy(strategy: str, population: int, num_dims: int, sigma: float,
                  strategy_kwargs: dict | None = None) -> tuple[Any, Any]:
    """(evosax strategy over a flat [num_dims] solution, its params with std sigma).

    Built eagerly (`ensure_compile_time_eval`) so that no tracer is stored on the strategy, which
    evosax's jitted methods take as a static argument.
    """
    kwargs = dict(strategy_kwargs or {})
    if strategy == "open_es":
        kwargs.setdefault("optimizer", optax.sgd(1.0))
        kwargs.setdefault("std_schedule", optax.constant_schedule(sigma))
    with jax.ensure_compile_time_eval():
        es = STRATEGIES[strategy](population_size=population, solution=jnp.zeros(num_dims),
                                  **kwargs)
        params = es.default_params
        if strategy != "open_es":  # Open-ES takes its std from std_schedule
            params = params.replace(std_init=jnp.asarray(sigma, jnp.float32))
    return es, params


def worst_filled(losses: jax.Array) -> jax.Array:
    """[P] losses with every non-finite one replaced by the largest finite loss + 1 (by 0 when
    none is finite)."""
    finite = jnp.isfinite(losses)
    worst = jnp.max(jnp.where(finite, losses, -jnp.inf))
    return jnp.where(finite, losses, jnp.where(jnp.isfinite(worst), worst + 1.0, 0.0))


def full_es(problem: base.InnerProblem, *, horizon: int, population: int,
            strategy: str = "open_es", sigma: float = 0.05, mesh=None,
            strategy_kwargs: dict | None = None) -> base.Estimator:
    """The full-horizon ES estimator with an evosax strategy (see module docstring).

    strategy: 'open_es', 'snes' or 'cma_es'. sigma: the initial std of the search distribution
    (constant for Open-ES). strategy_kwargs: extra arguments of the evosax constructor (e.g.
    `optimizer`, `use_antithetic_sampling`, `fitness_shaping_fn`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    if horizon < 1 or population < 2 or sigma <= 0:
        raise ValueError(f"need horizon >= 1, population >= 2 and sigma > 0, got {horizon}, "
                         f"{population}, {sigma}")
    antithetic = (strategy_kwargs or {}).get("use_antithetic_sampling", True)
    if strategy == "open_es" and antithetic and population % 2:
        raise ValueError(f"antithetic Open-ES needs an even population, got {population}")
    built = {}  # num_dims -> (strategy, params): one strategy object per shape of theta

    def strategy_for(num_dims: int):
        if num_dims not in built:
            built[num_dims] = make_strategy(strategy, population, num_dims, sigma,
                                            strategy_kwargs)
        return built[num_dims]

    def init(theta, key):
        flat, _ = ravel_pytree(theta)
        es, params = strategy_for(flat.size)
        state = es.init(key, flat.astype(jnp.float32), params)
        # evosax starts some fields weakly typed; `tell` returns them strong, and a jitted
        # `estimate` would then compile twice.
        return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state)

    def estimate(theta, state, key):
        flat, unravel = ravel_pytree(theta)
        mean = flat.astype(jnp.float32)  # [D]
        es, params = strategy_for(flat.size)
        ask_key, init_key, run_key, tell_key = jax.random.split(key, 4)
        # The outer optimizer may have moved theta otherwise than the strategy: search around it.
        state = state.replace(mean=mean)
        candidates, asked = es.ask(ask_key, state, params)  # [P, D]

        def run(theta_i):
            inner = problem.init(init_key)  # the same init and data for every member
            _, loss = base.unroll(problem, unravel(theta_i.astype(flat.dtype)), inner, run_key,
                                  horizon)
            return loss.astype(jnp.float32)

        losses = base.population_vmap(run, mesh)(base.shard_population(candidates, mesh))  # [P]
        finite = jnp.isfinite(losses)  # [P]
        told, _ = es.tell(tell_key, candidates, worst_filled(losses), asked, params)
        any_finite = finite.any()
        state = jax.tree.map(lambda new, old: jnp.where(any_finite, new, old), told, state)
        grad = unravel((mean - state.mean).astype(flat.dtype))  # the strategy's step, negated
        metrics = {"meta_loss": base.finite_mean(losses),
                   "best_loss": jnp.min(jnp.where(finite, losses, jnp.inf)),
                   "diverged": 1.0 - finite.mean(), "sigma": jnp.mean(state.std)}
        return grad, state, metrics

    return base.Estimator(init, estimate)
