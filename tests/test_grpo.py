"""Tests for learned_loss.objectives.grpo: group advantages and the token-level loss."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.objectives import grpo


def test_group_advantages_g2():
    rewards = jnp.array([[1.0, 3.0], [2.0, 2.0]])  # [P=2, G=2]
    advantages = jax.jit(grpo.group_advantages)(rewards)
    # Row 0: mean 2, deviations -1, +1; unbiased var (1 + 1) / (2 - 1) = 2, std sqrt(2);
    #   A = -+1 / (1.41421356 + 1e-4) = -+0.70705678.
    # Row 1: all equal, std 0: A = 0 / (0 + 1e-4) = 0.
    a = 1.0 / (math.sqrt(2.0) + 1e-4)
    np.testing.assert_allclose(advantages, [[-a, a], [0.0, 0.0]], rtol=1e-6)
    # Dr. GRPO (no std scaling): r - mean.
    np.testing.assert_allclose(grpo.group_advantages(rewards, scale=False),
                               [[-1.0, 1.0], [0.0, 0.0]])


def test_group_advantages_g3_uses_unbiased_std():
    # Mean 3, deviations -3, 0, 3: unbiased var 18 / 2 = 9, std 3 (the biased one would be
    # sqrt(6) = 2.449). A = [-3, 0, 3] / 3.0001 = [-0.99996667, 0, 0.99996667].
    advantages = grpo.group_advantages(jnp.array([[0.0, 3.0, 6.0]]))
    np.testing.assert_allclose(advantages, [[-3.0 / 3.0001, 0.0, 3.0 / 3.0001]], rtol=1e-6)


def test_group_advantages_need_two_completions():
    with pytest.raises(ValueError, match="G >= 2"):
        grpo.group_advantages(jnp.ones((4, 1)))


# Two completions, three tokens; row 1's last token is padding. Per-token -min(rho A, clip A):
#   row 0, A = +1: rho = [1, 1.5, 0.5] -> [-1, -min(1.5, 1.2), -min(0.5, 0.8)] = [-1, -1.2, -0.5]
#   row 1, A = -1: rho = [1.5, 0.5, (pad 7)] -> [-min(-1.5, -1.2), -min(-0.5, -0.8)] = [1.5, 0.8]
# Clipped (the clipped term is the minimum): row 0 token 1 and row 1 token 1.
OLD = jnp.full((2, 3), -1.0)  # [B=2, C=3]
LOGPROBS = OLD + jnp.log(jnp.array([[1.0, 1.5, 0.5], [1.5, 0.5, 7.0]]))
ADV = jnp.array([1.0, -1.0])  # [B]
MASK = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# Reference: r = ref - logp is +1 at row 0 token 0 (k3 = e - 2 = 0.71828183), -1 at row 1
# token 0 (k3 = e^-1 = 0.36787944), 0 elsewhere, and 3 on the padding (k3 = e^3 - 4, ignored).
REF = LOGPROBS + jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 3.0]])


def test_loss_without_reference_beta_zero():
    loss_fn = jax.jit(functools.partial(grpo.loss, beta=0.0))
    loss, metrics = loss_fn(LOGPROBS, OLD, None, ADV, MASK)
    # Token-normalised over the batch: (-1 - 1.2 - 0.5 + 1.5 + 0.8) / 5 = -0.4 / 5 = -0.08.
    # (The per-sequence mean of the original GRPO would be (-2.7/3 + 2.3/2) / 2 = 0.125.)
    np.testing.assert_allclose(loss, -0.08, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_fraction"], 2.0 / 5.0, rtol=1e-6)
    assert "kl" not in metrics  # the reference was never looked at


def test_loss_with_k3_penalty():
    loss_fn = jax.jit(functools.partial(grpo.loss, beta=0.04))
    loss, metrics = loss_fn(LOGPROBS, OLD, REF, ADV, MASK)
    # k3 on the five completion tokens sums to 0.71828183 + 0.36787944 = 1.08616127.
    # loss = (-0.4 + 0.04 * 1.08616127) / 5 = (-0.4 + 0.04344645) / 5 = -0.07131071.
    np.testing.assert_allclose(loss, -0.07131071, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], 1.08616127 / 5, rtol=1e-5)  # 0.21723225
    np.testing.assert_allclose(metrics["loss"], loss)


def test_gradient_is_zero_on_clipped_tokens():
    grad = jax.jit(jax.grad(lambda lp: grpo.loss(lp, OLD, None, ADV, MASK, beta=0.0)[0]))(LOGPROBS)
    # d/d logp of -rho A is -rho A, over 5 tokens:
    #   row 0 token 0: -1 * 1 / 5 = -0.2;  token 2: -0.5 * 1 / 5 = -0.1
    #   row 1 token 0: -1.5 * (-1) / 5 = 0.3
    # Clipped tokens (row 0 token 1, row 1 token 1) and padding: 0.
    np.testing.assert_allclose(grad, [[-0.2, 0.0, -0.1], [0.3, 0.0, 0.0]], rtol=1e-5, atol=1e-7)
