"""Tests for learned_loss.meta.full_es on a quadratic inner problem with a closed-form gradient.

Inner run: x_0 = X0, x_{t+1} = x_t - A (x_t - theta), so after T steps

    x_T = theta + (1 - A)^T (X0 - theta),    L(theta) = 0.5 ||x_T - TARGET||^2,
    dL/dtheta = (1 - (1 - A)^T) (x_T - TARGET).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_loss.core import sharding
from learned_loss.meta import base, full_es

A, T = 0.1, 10
TARGET = jnp.array([1.0, -2.0, 3.0, 0.5])  # [4]
X0 = jnp.array([0.5, 0.5, -0.5, 1.0])  # [4]


def quadratic(x0=X0, noise=0.0, threshold=jnp.inf) -> base.InnerProblem:
    """The inner problem of the module docstring. `noise` adds noise * N(0, 1) drawn from the
    meta-loss key (common to all members of one call); a theta with theta[0] > threshold makes
    the run NaN."""

    def init(key):
        del key
        return x0

    def step(theta, x, key):
        del key
        x = x - A * (x - theta)
        return jnp.where(theta[0] > threshold, jnp.nan, x)

    def meta_loss(x, key):
        return 0.5 * jnp.sum((x - TARGET) ** 2) + noise * jax.random.normal(key)

    return base.InnerProblem(init, step, meta_loss)


def exact(theta, x0=X0):
    """(L(theta), dL/dtheta) in closed form."""
    x_t = theta + (1 - A) ** T * (x0 - theta)
    return 0.5 * jnp.sum((x_t - TARGET) ** 2), (1 - (1 - A) ** T) * (x_t - TARGET)


def cosine(a, b):
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def outer_loop(estimator, optimizer, theta, steps):
    """`steps` outer updates of theta; returns (theta, estimator state, last metrics)."""

    @jax.jit
    def update(theta, state, opt_state, key):
        grad, state, metrics = estimator.estimate(theta, state, key)
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), state, opt_state, metrics

    state, opt_state = estimator.init(theta, jax.random.key(0)), optimizer.init(theta)
    for key in jax.random.split(jax.random.key(1), steps):
        theta, state, opt_state, metrics = update(theta, state, opt_state, key)
    return theta, state, metrics


def test_open_es_points_along_the_exact_meta_gradient():
    # The meta-loss noise (std 10, far above the spread of the members' losses) is shared by
    # every member of a call: common random numbers leave the ranks, and the estimate, unchanged.
    estimator = full_es.full_es(quadratic(noise=10.0), horizon=T, population=256, sigma=0.01)
    theta = jnp.zeros(4)
    grad, _, metrics = jax.jit(estimator.estimate)(
        theta, estimator.init(theta, jax.random.key(0)), jax.random.key(1))
    assert cosine(grad, exact(theta)[1]) >= 0.9
    assert float(metrics["diverged"]) == 0.0
    assert float(metrics["best_loss"]) <= float(metrics["meta_loss"])


@pytest.mark.parametrize("strategy, optimizer, population, sigma", [
    # Open-ES's step is a rank-shaped gradient whose size does not shrink near the optimum:
    # Adam's per-coordinate scale makes the outer step size the same at every distance.
    ("open_es", optax.adam(0.1), 32, 0.05),
    # SNES and CMA-ES adapt their own step size: sgd(1.0) runs the strategy exactly.
    ("snes", optax.sgd(1.0), 16, 0.1),
    ("cma_es", optax.sgd(1.0), 16, 0.1),
])
def test_outer_loop_reduces_the_meta_loss(strategy, optimizer, population, sigma):
    estimator = full_es.full_es(quadratic(), horizon=T, population=population,
                                strategy=strategy, sigma=sigma)
    theta0 = jnp.zeros(4)
    theta, _, metrics = outer_loop(estimator, optimizer, theta0, steps=100)
    assert float(exact(theta)[0]) <= 0.01 * float(exact(theta0)[0])
    assert float(metrics["meta_loss"]) <= 0.01 * float(exact(theta0)[0])


def test_grad_is_the_strategy_step_from_the_current_theta():
    population, sigma = 16, 0.1
    estimator = full_es.full_es(quadratic(), horizon=T, population=population, strategy="snes",
                                sigma=sigma)
    start = estimator.init(jnp.zeros(4), jax.random.key(0))
    # The outer optimizer moved theta far from the strategy's mean: the search restarts there.
    theta = jnp.full((4,), 5.0)
    key = jax.random.key(1)
    grad, state, metrics = jax.jit(estimator.estimate)(theta, start, key)
    np.testing.assert_allclose(state.mean, theta - grad, rtol=1e-6)
    assert float(jnp.max(jnp.abs(grad))) < 1.0  # a step of a few sigma, not of |theta - 0|
    assert grad @ exact(theta)[1] > 0  # a descent direction
    # SNES's step worked out by hand (Wierstra et al. 2014, eq. as in evosax) from the members
    # the estimate asked for around theta (its first key), eps_i = sigma z_i, ranked by their
    # closed-form losses: utilities u_(r) = max(0, log(P/2 + 1) - log r) / sum - 1/P for rank
    # r = 1 (the lowest loss) .. P; grad = -sum_i u_i eps_i and, with eta = (3 + log d) /
    # (5 sqrt d), sigma_d <- sigma exp(eta / 2 sum_i u_i (z_id^2 - 1)).
    strategy, params = full_es.make_strategy("snes", population, 4, sigma)
    members, _ = strategy.ask(jax.random.split(key, 4)[0], start.replace(mean=theta), params)
    members = np.asarray(members, np.float64)  # [P, 4]
    losses = np.array([float(exact(jnp.asarray(m))[0]) for m in members])  # [P]
    assert np.diff(np.sort(losses)).min() > 1e-3  # Ranks that float32 rounding cannot swap.
    utility = np.maximum(0.0, np.log(population / 2 + 1) - np.log(np.arange(1, population + 1)))
    utility = utility / utility.sum() - 1.0 / population  # [P] by rank
    u = utility[np.argsort(np.argsort(losses))]  # [P] by member
    eps = members - np.asarray(theta, np.float64)  # [P, 4]
    np.testing.assert_allclose(grad, -(u @ eps), rtol=1e-4, atol=1e-6)
    eta = (3 + np.log(4)) / (5 * np.sqrt(4))
    std = sigma * np.exp(eta / 2 * (u @ ((eps / sigma) ** 2 - 1)))  # [4]
    np.testing.assert_allclose(state.std, std, rtol=1e-5)
    np.testing.assert_allclose(metrics["sigma"], std.mean(), rtol=1e-5)


@pytest.mark.parametrize("strategy", ["open_es", "snes", "cma_es"])
def test_diverged_members_rank_last_and_never_reach_the_update(strategy):
    # theta = TARGET sits on the divergence threshold theta[0] > TARGET[0]: about half the
    # members blow up. With x0 = TARGET the finite members' loss is flat in theta[0] there, so
    # grad[0] comes from the failures alone and must push theta[0] down, away from them.
    problem = quadratic(x0=TARGET, threshold=float(TARGET[0]))
    estimator = full_es.full_es(problem, horizon=T, population=32, strategy=strategy,
                                sigma=0.05)
    theta = TARGET
    grad, state, metrics = jax.jit(estimator.estimate)(
        theta, estimator.init(theta, jax.random.key(0)), jax.random.key(1))
    assert 0.25 <= float(metrics["diverged"]) <= 0.75
    assert base.all_finite((grad, state.mean, state.std, metrics["meta_loss"]))
    assert float(grad[0]) > 0


def test_all_members_diverged_keeps_the_state():
    estimator = full_es.full_es(quadratic(threshold=0.5), horizon=T, population=16,
                                strategy="cma_es", sigma=0.05)
    theta = jnp.array([10.0, 0.0, 0.0, 0.0])
    state = estimator.init(theta, jax.random.key(0))
    grad, new_state, metrics = jax.jit(estimator.estimate)(theta, state, jax.random.key(1))
    assert float(metrics["diverged"]) == 1.0
    np.testing.assert_array_equal(grad, jnp.zeros(4))
    np.testing.assert_array_equal(new_state.C, state.C)
    np.testing.assert_array_equal(new_state.std, state.std)


def test_jit_is_deterministic_on_a_pytree_theta():
    # theta a dict of two leaves; the inner problem reads it back as one [4] vector.
    inner = quadratic()
    problem = base.InnerProblem(
        inner.init, lambda th, x, k: inner.step(jnp.concatenate([th["a"], th["b"]]), x, k),
        inner.meta_loss)
    estimator = full_es.full_es(problem, horizon=T, population=16, strategy="open_es")
    theta = {"a": jnp.zeros(2), "b": jnp.ones(2)}
    state = estimator.init(theta, jax.random.key(0))
    estimate = jax.jit(estimator.estimate)
    grad, _, metrics = estimate(theta, state, jax.random.key(1))
    again, _, metrics_again = estimate(theta, state, jax.random.key(1))
    other, _, _ = estimate(theta, state, jax.random.key(2))
    assert jax.tree.structure(grad) == jax.tree.structure(theta)
    jax.tree.map(np.testing.assert_array_equal, grad, again)
    assert float(metrics["meta_loss"]) == float(metrics_again["meta_loss"])
    assert not np.allclose(grad["a"], other["a"])


def test_population_sharded_over_a_pop_axis():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = sharding.make_mesh({"pop": 8})
    theta = jnp.zeros(4)
    grads = []
    for m in (None, mesh):
        estimator = full_es.full_es(quadratic(), horizon=T, population=32, mesh=m)
        grad, _, _ = jax.jit(estimator.estimate)(
            theta, estimator.init(theta, jax.random.key(0)), jax.random.key(1))
        grads.append(grad)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        full_es.full_es(quadratic(), horizon=T, population=16, strategy="xnes")
    with pytest.raises(ValueError, match="even population"):
        full_es.full_es(quadratic(), horizon=T, population=15)
    with pytest.raises(ValueError, match="horizon"):
        full_es.full_es(quadratic(), horizon=0, population=16)
