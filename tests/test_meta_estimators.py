"""The meta-gradient estimators on a quadratic inner problem with a known exact meta-gradient.

Inner run: x_{t+1} = x_t - alpha a * (x_t - theta) (gradient descent on 0.5 a (x - theta)^2,
elementwise), from x_0. Meta-loss: 0.5 ||x - target||^2. After T steps
x_T = theta + m (x_0 - theta) with m = (1 - alpha a)^T, so dL/dtheta = (1 - m) (x_T - target).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_loss.core import sharding
from learned_loss.meta import base, es, pes, tbptt

A = jnp.array([1.0, 0.5, 0.2])
ALPHA = 0.1
X0 = jnp.array([2.0, -1.0, 0.5])
TARGET = jnp.array([0.5, 0.3, -0.4])


def quadratic(diverge_above: float | None = None) -> base.InnerProblem:
    def step(theta, x, key):
        del key
        x = x - ALPHA * A * (x - theta["t"])
        if diverge_above is not None:
            x = jnp.where(theta["t"][0] > diverge_above, jnp.nan, x)
        return x

    return base.InnerProblem(init=lambda key: X0, step=step,
                             meta_loss=lambda x, key: 0.5 * jnp.sum(jnp.square(x - TARGET)))


def exact_gradient(theta, horizon):
    m = (1.0 - ALPHA * A) ** horizon
    x_t = theta + m * (X0 - theta)
    return (1.0 - m) * (x_t - TARGET)


def cosine(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


THETA = {"t": jnp.array([0.3, 0.8, -0.2])}


def test_schedule_and_particles():
    schedule = base.TruncationSchedule(unroll_length=4, min_horizon=8, max_horizon=64)
    h = schedule.sample(jax.random.key(0), (1000,))
    assert int(h.min()) >= 8 and int(h.max()) <= 64 and np.all(np.asarray(h) % 4 == 0)
    # Log-uniform: about half of the horizons lie below the geometric mean (sqrt(8 * 64)).
    assert 0.4 < float(jnp.mean(h <= 23)) < 0.6
    particles = base.init_particles(quadratic(), schedule, jax.random.key(1), 64)
    first = np.asarray(particles.horizon)
    assert len(set(first.tolist())) > 4 and first.min() >= 4  # Desynchronised first horizons.
    particles = particles._replace(step=jnp.where(jnp.arange(64) < 10, particles.horizon, 0))
    reset, done = base.reset_finished(quadratic(), schedule, particles, jax.random.key(2))
    assert int(done.sum()) == 10 and int(reset.step.sum()) == 0
    with pytest.raises(ValueError, match="unroll_length <= min_horizon"):
        base.TruncationSchedule(unroll_length=8, min_horizon=4, max_horizon=16)


def test_shaping():
    np.testing.assert_allclose(base.centered_ranks(jnp.array([3.0, 1.0, jnp.nan, 2.0])),
                               [1 / 6, -0.5, 0.5, -1 / 6], rtol=1e-6)
    z = base.z_scores(jnp.array([1.0, 3.0, jnp.inf]))
    np.testing.assert_allclose(z, (np.array([1, 3, 3]) - 7 / 3) / np.std([1, 3, 3]), rtol=1e-5)
    d = base.antithetic_differences(jnp.array([5.0, 1.0]), jnp.array([1.0, 2.0]), "none", 1.0)
    np.testing.assert_allclose(d, [1.0, -0.5])
    with pytest.raises(ValueError, match="fitness shaping"):
        base.antithetic_differences(jnp.ones(2), jnp.ones(2), "bogus", 0.0)


@pytest.mark.parametrize("remat", [False, True])
def test_tbptt_matches_the_exact_meta_gradient(remat):
    horizon = 12
    schedule = base.TruncationSchedule(horizon, horizon, horizon)
    estimator = tbptt.tbptt(quadratic(), schedule, num_particles=3, remat=remat)
    state = estimator.init(THETA, jax.random.key(0))
    grad, state, metrics = jax.jit(estimator.estimate)(THETA, state, jax.random.key(1))
    np.testing.assert_allclose(grad["t"], exact_gradient(THETA["t"], horizon), atol=1e-5)
    assert float(metrics["diverged"]) == 0.0
    assert np.all(np.asarray(state.step) == horizon)
    # The next call restarts every run (they reached their horizon) and gives the same gradient.
    grad2, _, metrics2 = jax.jit(estimator.estimate)(THETA, state, jax.random.key(2))
    np.testing.assert_allclose(grad2["t"], grad["t"], atol=1e-6)
    assert float(metrics2["resets"]) == 1.0


def test_antithetic_es_aligns_with_the_exact_gradient():
    horizon = 12
    schedule = base.TruncationSchedule(horizon, horizon, horizon)
    exact = exact_gradient(THETA["t"], horizon)
    for shaping in ("none", "rank", "zscore"):
        estimator = es.antithetic_es(quadratic(), schedule, num_pairs=512, sigma=0.01,
                                     shaping=shaping)
        state = estimator.init(THETA, jax.random.key(0))
        grad, _, metrics = jax.jit(estimator.estimate)(THETA, state, jax.random.key(3))
        assert cosine(grad["t"], exact) >= 0.9, shaping
        if shaping == "none":  # Raw differences estimate the gradient itself, not a direction.
            np.testing.assert_allclose(grad["t"], exact, rtol=0.25, atol=0.02)
        assert float(metrics["diverged"]) == 0.0


def _total_loss_gradient(theta, horizon, k):
    """d/dtheta of sum_j L(x_{jk}), j = 1..horizon/k: the objective of a truncated run."""

    def total(t):
        problem = quadratic()
        x, loss = X0, 0.0
        for _ in range(horizon // k):
            x, l = base.unroll(problem, {"t": t}, x, jax.random.key(0), k)
            loss = loss + l
        return loss

    return jax.grad(total)(theta["t"])


def _sum_over_one_run(estimator, horizon, k, key):
    state = estimator.init(THETA, key)
    estimate = jax.jit(estimator.estimate)
    total = 0.0
    for j in range(horizon // k):
        grad, state, _ = estimate(THETA, state, jax.random.fold_in(key, j))
        total = total + grad["t"]
    return np.asarray(total)


def test_pes_is_unbiased_over_a_long_unroll_where_truncated_tbptt_is_not():
    horizon, k = 40, 5
    schedule = base.TruncationSchedule(k, horizon, horizon)
    exact = np.asarray(_total_loss_gradient(THETA, horizon, k))
    # Every particle starts its first run at step 0 with the full horizon.
    start = lambda est: est._replace(init=lambda theta, key: _aligned(est.init(theta, key)))

    truncated = _sum_over_one_run(start(tbptt.tbptt(quadratic(), schedule, num_particles=2)),
                                  horizon, k, jax.random.key(0))
    pes_sum = np.mean([_sum_over_one_run(
        start(pes.pes(quadratic(), schedule, num_pairs=2048, sigma=0.01)), horizon, k,
        jax.random.key(seed)) for seed in range(4)], axis=0)
    tbptt_error = np.linalg.norm(truncated - exact) / np.linalg.norm(exact)
    pes_error = np.linalg.norm(pes_sum - exact) / np.linalg.norm(exact)
    assert tbptt_error > 0.3  # Short-horizon bias: the state's history is ignored.
    assert pes_error < 0.1 and cosine(pes_sum, exact) >= 0.99


def _aligned(state):
    particles = state.plus if isinstance(state, pes.PESState) else state
    horizon = jnp.full_like(particles.horizon, 40)
    particles = particles._replace(horizon=horizon)
    return state._replace(plus=particles) if isinstance(state, pes.PESState) else particles


def test_pes_on_a_single_unroll_aligns_with_the_exact_gradient():
    horizon = 12
    schedule = base.TruncationSchedule(horizon, horizon, horizon)
    estimator = pes.pes(quadratic(), schedule, num_pairs=512, sigma=0.01)
    grad, _, _ = jax.jit(estimator.estimate)(THETA, estimator.init(THETA, jax.random.key(0)),
                                             jax.random.key(4))
    assert cosine(grad["t"], exact_gradient(THETA["t"], horizon)) >= 0.9


@pytest.mark.parametrize("make", [
    lambda p, s: tbptt.tbptt(p, s, num_particles=4),
    lambda p, s: es.antithetic_es(p, s, num_pairs=64, sigma=0.2),
    lambda p, s: pes.pes(p, s, num_pairs=64, sigma=0.2),
], ids=["tbptt", "es", "pes"])
def test_diverged_inner_runs_are_failures_not_poison(make):
    schedule = base.TruncationSchedule(4, 8, 8)
    estimator = make(quadratic(diverge_above=1.0), schedule)
    theta = {"t": jnp.array([1.0, 0.0, 0.0])}  # On the edge: about half the members diverge.
    state = estimator.init(theta, jax.random.key(0))
    grad, state, metrics = jax.jit(estimator.estimate)(theta, state, jax.random.key(1))
    assert np.all(np.isfinite(grad["t"]))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values())
    blown = {"t": jnp.array([5.0, 0.0, 0.0])}  # Every member diverges.
    grad, _, metrics = jax.jit(estimator.estimate)(blown, state, jax.random.key(2))
    assert float(metrics["diverged"]) == 1.0
    assert np.all(np.isfinite(grad["t"]))


def test_es_pushes_away_from_divergence():
    schedule = base.TruncationSchedule(4, 8, 8)
    estimator = es.antithetic_es(quadratic(diverge_above=1.0), schedule, num_pairs=128,
                                 sigma=0.2, shaping="rank")
    theta = {"t": jnp.array([1.0, 0.0, 0.0])}
    grad, _, metrics = jax.jit(estimator.estimate)(theta, estimator.init(theta, jax.random.key(0)),
                                                   jax.random.key(1))
    assert 0.2 < float(metrics["diverged"]) < 0.8
    assert float(grad["t"][0]) > 0  # Descent (theta - lr * grad) moves theta[0] down.


def test_outer_loop_with_each_estimator_reduces_the_meta_loss():
    schedule = base.TruncationSchedule(12, 12, 12)
    for estimator in (tbptt.tbptt(quadratic(), schedule, num_particles=1),
                      es.antithetic_es(quadratic(), schedule, num_pairs=32, sigma=0.05,
                                       shaping="none"),
                      pes.pes(quadratic(), schedule, num_pairs=32, sigma=0.05)):
        opt = optax.adam(0.05)
        theta, state = THETA, estimator.init(THETA, jax.random.key(0))
        opt_state = opt.init(theta)

        @jax.jit
        def outer(theta, opt_state, state, key):
            grad, state, metrics = estimator.estimate(theta, state, key)
            updates, opt_state = opt.update(grad, opt_state)
            return optax.apply_updates(theta, updates), opt_state, state, metrics

        first = None
        for i in range(150):
            theta, opt_state, state, metrics = outer(theta, opt_state, state, jax.random.key(i))
            first = float(metrics["meta_loss"]) if first is None else first
        assert float(metrics["meta_loss"]) < first / 10


def test_population_sharded_over_pop_matches_one_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = sharding.make_mesh({"pop": 4, "data": 2})
    schedule = base.TruncationSchedule(6, 6, 6)
    for make in (lambda m: es.antithetic_es(quadratic(), schedule, num_pairs=16, sigma=0.05,
                                            mesh=m),
                 lambda m: pes.pes(quadratic(), schedule, num_pairs=16, sigma=0.05, mesh=m),
                 lambda m: tbptt.tbptt(quadratic(), schedule, num_particles=8, mesh=m)):
        results = []
        for m in (None, mesh):
            est = make(m)
            state = est.init(THETA, jax.random.key(0))
            results.append(jax.jit(est.estimate)(THETA, state, jax.random.key(1))[0]["t"])
        np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-7)
