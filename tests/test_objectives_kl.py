"""Tests for learned_loss.objectives.kl: the k1/k2/k3 estimators and the adaptive controller."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.objectives import kl


def test_estimators_hand_values():
    logp = jnp.array([[-1.0, -2.0]])  # [B=1, C=2]
    ref = jnp.array([[-2.0, -1.0]])
    # k1 = logp - ref: -1 - (-2) = 1 and -2 - (-1) = -1.
    np.testing.assert_allclose(kl.k1(logp, ref), [[1.0, -1.0]], rtol=1e-7)
    # k2 = (logp - ref)^2 / 2: 1/2 both times.
    np.testing.assert_allclose(kl.k2(logp, ref), [[0.5, 0.5]], rtol=1e-7)
    # k3 with r = ref - logp: r = -1 -> e^-1 + 1 - 1 = e^-1 = 0.36787944;
    #                         r = +1 -> e - 1 - 1 = e - 2 = 0.71828183.
    np.testing.assert_allclose(kl.k3(logp, ref), [[math.exp(-1.0), math.e - 2.0]], rtol=1e-6)


def test_k3_nonnegative_and_zero_iff_equal():
    rng = np.random.default_rng(0)
    logp = rng.normal(0.0, 3.0, (8, 16)).astype(np.float32)  # [B, C]
    ref = rng.normal(0.0, 3.0, (8, 16)).astype(np.float32)
    assert bool(jnp.all(kl.k3(logp, ref) > 0.0))
    np.testing.assert_array_equal(kl.k3(logp, logp), np.zeros((8, 16), np.float32))
    # A tiny gap: k3 ~ r^2 / 2 = (1e-4)^2 / 2 = 5e-9. expm1 keeps it positive and right to
    # about one float32 ulp of 1e-4 (7e-12); exp(r) - 1 would be off by ~1e-8, its own size.
    np.testing.assert_allclose(kl.k3(jnp.array([0.0]), jnp.array([1e-4])), [5e-9], rtol=1e-2)


def test_k1_and_k3_are_unbiased_on_a_two_outcome_example():
    # pi = (1/2, 1/2), ref = (1/4, 3/4). KL(pi || ref) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    # = 0.14384104. Expectations under pi are the pi-weighted sums over the two outcomes.
    pi = jnp.array([0.5, 0.5])
    ref = jnp.array([0.25, 0.75])
    exact = 0.5 * math.log(4.0 / 3.0)
    for estimator in (kl.k1, kl.k3):
        np.testing.assert_allclose(
            jnp.sum(pi * estimator(jnp.log(pi), jnp.log(ref))), exact, rtol=1e-6)
    # k2 is biased: 1/2 * (1/2 ln(2)^2 + 1/2 ln(2/3)^2) = 0.16121374 != 0.14384104.
    assert abs(float(jnp.sum(pi * kl.k2(jnp.log(pi), jnp.log(ref)))) - exact) > 0.01


def test_adaptive_update_hand_values_and_clipping():
    # trl defaults: beta 0.2, target 6, horizon 10000; a batch of 256 samples.
    update = jax.jit(lambda c, k: kl.adaptive_kl_update(c, k, 256, target=6.0, horizon=10000.0))
    coef = jnp.float32(0.2)
    # KL 6.6: err = 6.6/6 - 1 = 0.1 -> 0.2 * (1 + 0.1 * 256 / 10000) = 0.2 * 1.00256 = 0.200512.
    np.testing.assert_allclose(update(coef, 6.6), 0.200512, rtol=1e-6)
    # KL 12: err = 1, clipped to 0.2 -> 0.2 * (1 + 0.2 * 0.0256) = 0.2 * 1.00512 = 0.201024.
    np.testing.assert_allclose(update(coef, 12.0), 0.201024, rtol=1e-6)
    # KL 0: err = -1, clipped to -0.2 -> 0.2 * (1 - 0.00512) = 0.198976.
    np.testing.assert_allclose(update(coef, 0.0), 0.198976, rtol=1e-6)
    # KL on target: unchanged.
    np.testing.assert_allclose(update(coef, 6.0), 0.2, rtol=1e-7)


def test_adaptive_state_round_trip_under_jit():
    state = kl.adaptive_kl_init()
    np.testing.assert_allclose(state.coef, kl.INIT_KL_COEF)

    @jax.jit
    def step(state, current_kl):
        return kl.AdaptiveKLState(kl.adaptive_kl_update(state.coef, current_kl, 10000))

    # n_steps == horizon and KL far above target: each step multiplies by 1.2.
    state = step(step(state, 100.0), 100.0)
    np.testing.assert_allclose(state.coef, 0.2 * 1.2 * 1.2, rtol=1e-6)
