"""Persistent evolution strategies (PES; Vicol, Metz and Sohl-Dickstein 2021, "Unbiased gradient
estimation in unrolled computation graphs with persistent evolution strategies").

Each of P antithetic pairs keeps two inner states, s_i^+ unrolled only under perturbed thetas
theta + eps_{i,j} and s_i^- only under theta - eps_{i,j} (j = the unrolls of the current run),
and an accumulator xi_i = sum_j eps_{i,j} of every perturbation the pair's run has seen:

    eps_{i,j} = sigma z,  z ~ N(0, I);   xi_i <- xi_i + eps_{i,j}
    grad = 1 / (2 P sigma^2) sum_i xi_i (L_i^+ - L_i^-)

with L the meta-loss at the end of this unroll. Because the accumulated perturbation is the one
that actually shaped the state, the sum over a run's unrolls is an unbiased estimate of the
gradient of the Gaussian-smoothed *total* meta-loss sum_j E[L_j], however the run is
truncated (truncated TBPTT and ES are not: they ignore the history of the state). The price is
variance that grows with the number of unrolls in a run (xi's norm grows as sqrt(j)).
Unbiasedness needs the raw losses: shaping is off, only a `clip` of the differences is
offered (which biases large differences only).

Both members of a pair use the same data (common random numbers). Accumulators and states
restart with the run (`base.reset_finished`). A member that diverges restarts its pair; the pair
contributes nothing to that estimate (`metrics['diverged']` counts them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from learned_loss.meta import base


class PESState(NamedTuple):
    plus: base.Particles  # [P] runs under theta + eps
    minus: Any  # [P] inner states under theta - eps (step and horizon are plus's)
    xi: jax.Array  # [P, D] accumulated perturbations of the current runs


def pes(problem: base.InnerProblem, schedule: base.TruncationSchedule, *, num_pairs: int,
        sigma: float = 0.01, clip: float = 0.0, mesh=None) -> base.Estimator:
    """The PES estimator (see module docstring)."""
    if sigma <= 0 or num_pairs < 1:
        raise ValueError(f"need sigma > 0 and num_pairs >= 1, got {sigma}, {num_pairs}")
    k = schedule.unroll_length

    def init(theta, key):
        flat, _ = ravel_pytree(theta)
        plus = base.init_particles(problem, schedule, key, num_pairs)
        return PESState(plus, plus.inner, jnp.zeros((num_pairs,) + flat.shape, flat.dtype))

    def estimate(theta, state: PESState, key):
        reset_key, noise_key, unroll_key = jax.random.split(key, 3)
        plus, done = base.reset_finished(problem, schedule, state.plus, reset_key)
        minus = base.select(done, plus.inner, state.minus)  # A fresh run starts equal.
        xi = jnp.where(done[:, None], 0.0, state.xi)
        flat, unravel = ravel_pytree(theta)
        eps = sigma * jax.random.normal(noise_key, (num_pairs,) + flat.shape, flat.dtype)
        xi = xi + eps  # [P, D]
        keys = jax.random.split(unroll_key, num_pairs)

        def member(eps_i, inner_plus, inner_minus, key_i):
            inner_plus, l_plus = base.unroll(problem, unravel(flat + eps_i), inner_plus, key_i, k)
            inner_minus, l_minus = base.unroll(problem, unravel(flat - eps_i), inner_minus,
                                               key_i, k)
            return inner_plus, inner_minus, l_plus, l_minus

        eps, inner_plus, inner_minus = base.shard_population((eps, plus.inner, minus), mesh)
        inner_plus, inner_minus, l_plus, l_minus = base.population_vmap(member, mesh)(
            eps, inner_plus, inner_minus, keys)
        ok = jnp.isfinite(l_plus) & jnp.isfinite(l_minus)  # [P]
        diff = jnp.where(ok, l_plus - l_minus, 0.0)  # [P]
        if clip > 0:
            diff = jnp.clip(diff, -clip, clip)
        grad = unravel(diff @ xi / (2.0 * num_pairs * sigma ** 2))
        steps = jnp.where(ok, plus.step + k, plus.horizon)  # Diverged: restart next call.
        state = PESState(base.Particles(inner_plus, steps, plus.horizon), inner_minus, xi)
        both = jnp.concatenate([l_plus, l_minus])
        metrics = {"meta_loss": base.finite_mean(both),
                   "diverged": 1.0 - jnp.isfinite(both).mean(), "resets": done.mean()}
        return grad, state, metrics

    return base.Estimator(init, estimate)
