"""Antithetic evolution strategies over truncated unrolls, with fitness shaping.

For P antithetic pairs with noise z_i ~ N(0, I) and scale sigma, both members of pair i unroll K
steps from the same inner state s_i with the same data (common random numbers), under theta +
sigma z_i and theta - sigma z_i:

    grad = 1 / (P sigma) sum_i d_i z_i,     d_i = (f(L_i^+) - f(L_i^-)) / 2

with f the fitness shaping of `base.antithetic_differences` (centered ranks, z-scores, or the
raw losses; differences clipped). With f the identity this is an unbiased estimate of the
gradient of the Gaussian-smoothed meta-loss E_z[L(theta + sigma z)] (Salimans et al. 2017,
"Evolution strategies as a scalable alternative to reinforcement learning"); the antithetic pair
cancels the even terms of the Taylor expansion. Ranks trade that unbiasedness for robustness to
outliers and divergence. After the estimate each pair's state advances K steps under the
unperturbed theta.

Bias and variance: no backpropagation (works through sampling, argmax and non-differentiable
meta-objectives such as exact match), memory independent of K; variance grows with theta's
dimension and shrinks as 1 / P. On truncated unrolls it has the same short-horizon bias as TBPTT
(the state's dependence on theta before the unroll is ignored); `pes` removes it.

The P pairs are vmapped over a `pop` mesh axis (`base.population_vmap`). A member whose inner run
diverges gets the worst fitness and its pair restarts; `metrics['diverged']` counts members.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from learned_loss.meta import base


def antithetic_es(problem: base.InnerProblem, schedule: base.TruncationSchedule, *,
                  num_pairs: int, sigma: float = 0.01, shaping: str = "rank", clip: float = 0.0,
                  mesh=None) -> base.Estimator:
    """The truncated antithetic ES estimator (see module docstring)."""
    if sigma <= 0 or num_pairs < 1:
        raise ValueError(f"need sigma > 0 and num_pairs >= 1, got {sigma}, {num_pairs}")
    k = schedule.unroll_length

    def init(theta, key):
        del theta
        return base.init_particles(problem, schedule, key, num_pairs)

    def estimate(theta, state: base.Particles, key):
        reset_key, noise_key, unroll_key = jax.random.split(key, 3)
        state, reset = base.reset_finished(problem, schedule, state, reset_key)
        flat, unravel = ravel_pytree(theta)
        z = jax.random.normal(noise_key, (num_pairs,) + flat.shape, flat.dtype)  # [P, D]
        keys = jax.random.split(unroll_key, num_pairs)

        def member(z_i, inner, key_i):
            _, l_plus = base.unroll(problem, unravel(flat + sigma * z_i), inner, key_i, k)
            _, l_minus = base.unroll(problem, unravel(flat - sigma * z_i), inner, key_i, k)
            mean_inner, l_mean = base.unroll(problem, theta, inner, key_i, k)
            return l_plus, l_minus, mean_inner, l_mean

        z, inner = base.shard_population((z, state.inner), mesh)
        l_plus, l_minus, inner, l_mean = base.population_vmap(member, mesh)(z, inner, keys)
        diff = base.antithetic_differences(l_plus, l_minus, shaping, clip)  # [P]
        grad = unravel(diff @ z / (num_pairs * sigma))
        failed = ~(jnp.isfinite(l_plus) & jnp.isfinite(l_minus) & jnp.isfinite(l_mean))  # [P]
        steps = jnp.where(failed, state.horizon, state.step + k)
        state = base.Particles(inner, steps, state.horizon)
        both = jnp.concatenate([l_plus, l_minus])
        metrics = {"meta_loss": base.finite_mean(l_mean), "perturbed_loss": base.finite_mean(both),
                   "diverged": 1.0 - jnp.isfinite(both).mean(), "resets": reset.mean()}
        return grad, state, metrics

    return base.Estimator(init, estimate)

