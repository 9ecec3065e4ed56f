"""Tests for learned_loss.objectives.rloo: sequence rewards, leave-one-out baselines, loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.objectives import rloo


def test_sequence_logprobs_sum_the_masked_tokens():
    logprobs = jnp.array([[-1.0, -2.0, -5.0]])  # [B=1, C=3]; -5 is padding
    # -1 + -2 = -3.
    np.testing.assert_allclose(rloo.sequence_logprobs(logprobs, jnp.array([[1.0, 1.0, 0.0]])),
                               [-3.0])


def test_sequence_rewards():
    scores = jnp.array([1.0, 2.0])
    logprobs = jnp.array([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0]])  # [B=2, C=3]
    ref_logprobs = jnp.array([[-1.5, -1.0, -9.0], [-2.0, -2.0, -2.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # Row 0: k1 = [0.5, -1, (pad 4)] sums to -0.5 -> 1 - 0.1 * (-0.5) = 1.05.
    # Row 1: k1 = [1, 1, 1] sums to 3 -> 2 - 0.1 * 3 = 1.7.
    np.testing.assert_allclose(
        jax.jit(rloo.sequence_rewards)(scores, logprobs, ref_logprobs, mask, 0.1), [1.05, 1.7],
        rtol=1e-6)


def test_leave_one_out_with_k3():
    rewards = jnp.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])  # [P=2, K=3]
    # Row 0, sum 9: 1 - (9 - 1)/2 = -3;  2 - (9 - 2)/2 = -1.5;  6 - (9 - 6)/2 = 4.5.
    # Row 1, sum 3: 0 - 3/2 = -1.5 (twice);  3 - 0/2 = 3.
    advantages = jax.jit(rloo.leave_one_out_advantages)(rewards)
    np.testing.assert_allclose(advantages, [[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]], rtol=1e-6)
    # The leave-one-out advantage is K/(K-1) times r - mean, so each row sums to 0.
    np.testing.assert_allclose(advantages.sum(axis=1), [0.0, 0.0], atol=1e-6)


def test_leave_one_out_needs_two_samples():
    with pytest.raises(ValueError, match="K >= 2"):
        rloo.leave_one_out_advantages(jnp.ones((3, 1)))


# One ratio per sequence (clip 0.2):
#   row 0: rho = 1.5, A = +1 -> max(-1.5, -1.2) = -1.2  clipped
#   row 1: rho = 0.5, A = -1 -> max( 0.5,  0.8) =  0.8  clipped
#   row 2: rho = 1,   A = +2 -> max(-2,   -2)   = -2    inside the clip range
OLD = jnp.array([-10.0, -10.0, -10.0])  # [B=3]
NEW = OLD + jnp.log(jnp.array([1.5, 0.5, 1.0]))
ADV = jnp.array([1.0, -1.0, 2.0])


def test_policy_loss_hand_values():
    loss, metrics = jax.jit(rloo.policy_loss)(NEW, OLD, ADV)
    # (-1.2 + 0.8 - 2) / 3 = -2.4 / 3 = -0.8.
    np.testing.assert_allclose(loss, -0.8, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_fraction"], 2.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["ratio"], 1.0, rtol=1e-5)  # (1.5 + 0.5 + 1) / 3
    # 0.5 * (ln(1.5)^2 + ln(0.5)^2 + 0) / 3 = 0.5 * 0.64485496 / 3 = 0.10747583.
    np.testing.assert_allclose(metrics["approx_kl"],
                               0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3, rtol=1e-4)


def test_policy_gradient_only_on_the_unclipped_sequence():
    grad = jax.jit(jax.grad(lambda s: rloo.policy_loss(s, OLD, ADV)[0]))(NEW)
    # Row 2: d/ds of -A rho / 3 = -A rho / 3 = -2 / 3; rows 0 and 1 are clipped.
    np.testing.assert_allclose(grad, [0.0, 0.0, -2.0 / 3.0], rtol=1e-5, atol=1e-7)


def test_ratio_is_per_sequence_not_per_token():
    # Token ratios 2 and 0.5 multiply to a sequence ratio of 1: nothing is clipped, even though
    # each token alone would be outside [0.8, 1.2].
    old_tokens = jnp.array([[-1.0, -1.0]])  # [B=1, C=2]
    new_tokens = old_tokens + jnp.log(jnp.array([[2.0, 0.5]]))
    mask = jnp.ones((1, 2))
    _, metrics = rloo.policy_loss(rloo.sequence_logprobs(new_tokens, mask),
                                  rloo.sequence_logprobs(old_tokens, mask), jnp.array([1.0]))
    np.testing.assert_allclose(metrics["ratio"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 0.0)
