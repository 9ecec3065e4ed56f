"""Tests for learned_loss.objectives.reward_model: values_at and the Bradley-Terry loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.objectives import reward_model

LOG1P_E_MINUS_1 = math.log1p(math.exp(-1.0))  # -log sigmoid(1) = log(1 + e^-1) = 0.31326169
LOG1P_E = math.log1p(math.e)  # -log sigmoid(-1) = log(1 + e) = 1.31326169


def test_values_at_gathers_one_position_per_row():
    values = jnp.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])  # [B=2, T=3]
    np.testing.assert_allclose(reward_model.values_at(values, jnp.array([2, 0])), [0.3, 1.0])


def test_bradley_terry_hand_values():
    r_chosen = jnp.array([1.0, 0.0])
    r_rejected = jnp.array([0.0, 1.0])
    loss, metrics = jax.jit(reward_model.bradley_terry_loss)(r_chosen, r_rejected)
    # Differences 1 and -1: (log(1 + e^-1) + log(1 + e)) / 2 = (0.31326169 + 1.31326169) / 2
    # = 0.81326169.
    np.testing.assert_allclose(loss, (LOG1P_E_MINUS_1 + LOG1P_E) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss)
    np.testing.assert_allclose(metrics["accuracy"], 0.5)  # pair 0 right, pair 1 wrong
    np.testing.assert_allclose(metrics["margin"], 0.0)  # mean(1, -1)
    np.testing.assert_allclose(metrics["reward_chosen"], 0.5)
    np.testing.assert_allclose(metrics["reward_rejected"], 0.5)


def test_margin_and_centring():
    r_chosen = jnp.array([1.0, 0.0])
    r_rejected = jnp.array([0.0, 1.0])
    # Margins 1 and 0: logits 1 - 1 = 0 and -1: (log 2 + log(1 + e)) / 2 = 1.00320444.
    loss, _ = reward_model.bradley_terry_loss(r_chosen, r_rejected, margin=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(loss, (math.log(2.0) + LOG1P_E) / 2, rtol=1e-6)
    # Centring: (r_c + r_r)^2 = 1 for both pairs, mean 1; 0.81326169 + 0.01 * 1 = 0.82326169.
    loss, _ = reward_model.bradley_terry_loss(r_chosen, r_rejected, center_coef=0.01)
    np.testing.assert_allclose(loss, (LOG1P_E_MINUS_1 + LOG1P_E) / 2 + 0.01, rtol=1e-6)


def test_ties_count_as_wrong_and_large_gaps_are_stable():
    loss, metrics = reward_model.bradley_terry_loss(jnp.array([2.0]), jnp.array([2.0]))
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)  # -log sigmoid(0) = log 2
    np.testing.assert_allclose(metrics["accuracy"], 0.0)
    # A gap of -1000: -log sigmoid(-1000) = 1000 + log(1 + e^-1000) = 1000, no overflow.
    loss, _ = reward_model.bradley_terry_loss(jnp.array([0.0, 1000.0]), jnp.array([1000.0, 0.0]))
    np.testing.assert_allclose(loss, 500.0, rtol=1e-6)  # (1000 + 0) / 2


def test_gradient_raises_chosen_and_lowers_rejected():
    r_chosen = jnp.array([1.0, 0.0])
    r_rejected = jnp.array([0.0, 1.0])
    grad_fn = jax.grad(lambda c, r: reward_model.bradley_terry_loss(c, r)[0], argnums=(0, 1))
    g_chosen, g_rejected = jax.jit(grad_fn)(r_chosen, r_rejected)
    # d/d r_c of -log sigmoid(d) / B is -(1 - sigmoid(d)) / B; pair 0 (d = 1):
    # -(1 - 0.73105858) / 2 = -0.13447071. d/d r_r is the negative.
    np.testing.assert_allclose(g_chosen[0], -(1.0 - 1.0 / (1.0 + math.exp(-1.0))) / 2, rtol=1e-6)
    np.testing.assert_allclose(g_rejected, -g_chosen, rtol=1e-7)
    assert bool(jnp.all(g_chosen < 0.0))  # a descent step raises every chosen reward
