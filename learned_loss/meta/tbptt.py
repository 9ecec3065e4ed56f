"""Truncated backpropagation through time (TBPTT) over K inner steps.

grad = mean over N particles of d L(unroll_K(theta, s_i)) / d theta, with the inner state s_i
held fixed (no gradient flows into the steps before this unroll) and the meta-loss L read after
the K steps. `jax.grad` runs through a `lax.scan` of the inner steps, each under
`jax.checkpoint` (rematerialised in the backward pass) when `remat` is set. Inner optimizers must
be differentiable: adam with `eps_root > 0` (train.make_optimizer's configs set it).

Bias and variance (Wu et al. 2018, "Understanding short-horizon bias in stochastic
meta-optimization"; Werbos 1990): exact when K covers the whole inner run; with truncation the
estimate ignores how theta shaped the state at the start of the unroll, so it is biased towards
objectives that help within K steps (short-horizon bias), but it has the lowest variance of the
estimators here. Long unrolls through chaotic inner dynamics can have exploding gradients
(Metz et al. 2019, "Understanding and correcting pathologies in the training of learned
optimizers"); the outer optimizer's gradient clipping guards against them.

Diverged particles (a non-finite meta-loss or gradient) are left out of the mean and restart on
the next call; `metrics['diverged']` is their fraction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_loss.meta import base


def tbptt(problem: base.InnerProblem, schedule: base.TruncationSchedule, *, num_particles: int,
          remat: bool = True, mesh=None) -> base.Estimator:
    """The TBPTT estimator over `num_particles` truncated inner runs (see module docstring)."""
    k = schedule.unroll_length

    def init(theta, key):
        del theta
        return base.init_particles(problem, schedule, key, num_particles)

    def member(theta, inner, key):
        inner, loss = base.unroll(problem, theta, inner, key, k, remat=remat)
        return loss, inner

    grad_member = jax.value_and_grad(member, has_aux=True)

    def estimate(theta, state: base.Particles, key):
        reset_key, unroll_key = jax.random.split(key)
        state, reset = base.reset_finished(problem, schedule, state, reset_key)
        keys = jax.random.split(unroll_key, num_particles)
        inner = base.shard_population(state.inner, mesh)
        (losses, inner), grads = base.population_vmap(
            grad_member, mesh, in_axes=(None, 0, 0))(theta, inner, keys)
        finite = jnp.isfinite(losses) & jax.vmap(base.all_finite)(grads)  # [N]
        count = finite.sum()
        weights = finite / jnp.maximum(count, 1)  # [N]
        grad = jax.tree.map(
            lambda g: jnp.tensordot(weights, jnp.where(_expand(finite, g), g, 0.0), axes=1),
            grads)
        steps = jnp.where(finite, state.step + k, state.horizon)  # Diverged: restart next call.
        state = base.Particles(inner, steps, state.horizon)
        metrics = {"meta_loss": jnp.sum(jnp.where(finite, losses, 0.0) * weights),
                   "diverged": (num_particles - count) / num_particles,
                   "resets": reset.mean()}
        return grad, state, metrics

    return base.Estimator(init, estimate)


def _expand(mask, x):
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))

