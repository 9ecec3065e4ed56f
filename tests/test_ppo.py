"""Tests for learned_loss.objectives.ppo: rewards, GAE, clipped policy and value losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.objectives import masked, ppo


def test_missing_eos_penalty():
    scores = jnp.array([1.0, 2.0])
    finished = jnp.array([True, False])
    # Only the unfinished row pays: [1, 2 - 1] = [1, 1].
    np.testing.assert_allclose(ppo.apply_missing_eos_penalty(scores, finished, 1.0), [1.0, 1.0])


def test_kl_penalized_rewards():
    logprobs = jnp.array([[-1.0, -1.0, -1.0],
                          [-1.0, -2.0, -9.0],
                          [-1.0, -1.0, -1.0]])  # [B=3, C=3]
    ref_logprobs = jnp.array([[-2.0, -1.0, -0.5],
                              [-1.0, -1.0, -3.0],
                              [-4.0, -4.0, -4.0]])
    mask = jnp.array([[1.0, 1.0, 1.0],
                      [1.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0]])  # row 2 has no completion token at all
    scores = jnp.array([2.0, 3.0, 5.0])
    rewards, kl = jax.jit(ppo.kl_penalized_rewards)(scores, logprobs, ref_logprobs, mask, 0.1)
    # k1 row 0: [-1 + 2, -1 + 1, -1 + 0.5] = [1, 0, -0.5]; row 1: [0, -1, (pad) 0]; row 2: pad.
    np.testing.assert_allclose(kl, [[1.0, 0.0, -0.5], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    # -0.1 * k1: row 0 [-0.1, 0, 0.05], score 2 at index 3 - 1 = 2 -> [-0.1, 0, 2.05];
    # row 1 [0, 0.1, 0], score 3 at index 2 - 1 = 1 -> [0, 3.1, 0]; row 2 gets nothing.
    np.testing.assert_allclose(rewards, [[-0.1, 0.0, 2.05], [0.0, 3.1, 0.0], [0.0, 0.0, 0.0]],
                               rtol=1e-6)


def test_gae_hand_values_with_padding():
    rewards = jnp.array([[0.0, 0.0, 1.0],
                         [0.0, 1.0, 99.0]])  # [B=2, C=3]; 99 sits on padding
    values = jnp.array([[0.5, 0.5, 0.5],
                        [0.5, 0.2, 77.0]])  # 77 sits on padding
    mask = jnp.array([[1.0, 1.0, 1.0],
                      [1.0, 1.0, 0.0]])
    advantages, returns = jax.jit(ppo.gae, static_argnums=(3, 4))(rewards, values, mask, 1.0, 0.5)
    # gamma = 1, lam = 0.5, so A_t = delta_t + 0.5 * A_{t+1}.
    # Row 0 (V after the end = 0):
    #   delta_2 = 1 + 0 - 0.5 = 0.5;  delta_1 = 0 + 0.5 - 0.5 = 0;  delta_0 = 0 + 0.5 - 0.5 = 0
    #   A_2 = 0.5;  A_1 = 0 + 0.5 * 0.5 = 0.25;  A_0 = 0 + 0.5 * 0.25 = 0.125
    #   returns = A + V = [0.625, 0.75, 1.0]
    # Row 1 (padding zeroed: r = [0, 1, 0], V = [0.5, 0.2, 0]):
    #   delta_1 = 1 + 0 - 0.2 = 0.8;  delta_0 = 0 + 0.2 - 0.5 = -0.3
    #   A_1 = 0.8;  A_0 = -0.3 + 0.5 * 0.8 = 0.1;  A_2 = 0 (padding)
    #   returns = [0.6, 1.0, 0]
    np.testing.assert_allclose(advantages, [[0.125, 0.25, 0.5], [0.1, 0.8, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(returns, [[0.625, 0.75, 1.0], [0.6, 1.0, 0.0]], rtol=1e-6)


def test_gae_with_discount_and_lam_one_is_the_monte_carlo_return():
    # gamma = 0.5, lam = 1: r = [1, 2], V = [1, 0.5].
    #   delta_1 = 2 + 0 - 0.5 = 1.5;  delta_0 = 1 + 0.5 * 0.5 - 1 = 0.25
    #   A_1 = 1.5;  A_0 = 0.25 + 0.5 * 1 * 1.5 = 1.0;  returns = [2.0, 2.0]
    # = the discounted returns 1 + 0.5 * 2 = 2 and 2.
    advantages, returns = ppo.gae(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 0.5]]),
                                  jnp.ones((1, 2)), gamma=0.5, lam=1.0)
    np.testing.assert_allclose(advantages, [[1.0, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(returns, [[2.0, 2.0]], rtol=1e-6)


def test_gae_matches_a_python_loop():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 7)).astype(np.float32)  # [B, C]
    values = rng.normal(size=(3, 7)).astype(np.float32)
    lengths = [7, 4, 1]
    mask = (np.arange(7)[None, :] < np.array(lengths)[:, None]).astype(np.float32)
    gamma, lam = 0.9, 0.8
    expected = np.zeros((3, 7), np.float32)
    for b, n in enumerate(lengths):
        next_adv, next_value = 0.0, 0.0
        for t in reversed(range(n)):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, t]
            expected[b, t] = next_adv
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns, (expected + values) * mask, rtol=1e-5, atol=1e-6)


# Four completion tokens and one padding token, one row. Ratios r and advantages A per token:
#   t0: r = 1.5, A = +1 -> max(-1.5, -1.2) = -1.2   clipped (no gradient)
#   t1: r = 1.5, A = -1 -> max( 1.5,  1.2) =  1.5   unclipped
#   t2: r = 0.5, A = +1 -> max(-0.5, -0.8) = -0.5   unclipped
#   t3: r = 0.5, A = -1 -> max( 0.5,  0.8) =  0.8   clipped (no gradient)
#   t4: padding (ratio 3, A = 10: would dominate if it leaked)
OLD_LOGPROBS = jnp.full((1, 5), -2.0)  # [B=1, C=5]
RATIOS = np.array([1.5, 1.5, 0.5, 0.5, 3.0], np.float32)
LOGPROBS = OLD_LOGPROBS + jnp.log(RATIOS)[None, :]
ADVANTAGES = jnp.array([[1.0, -1.0, 1.0, -1.0, 10.0]])
MASK = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
# Value tokens (c = 0.2): V_clip = old + clip(V - old, -0.2, 0.2).
#   t0: old 0, V 0.5, R 1    -> V_clip 0.2:  (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.64 clipped
#   t1: old 0, V 0.5, R 0    -> V_clip 0.2:  0.25, 0.04 -> 0.25 unclipped
#   t2: old 1, V 1,   R 2    -> V_clip 1:    1, 1 (a tie: not counted as clipped) -> 1
#   t3: old 0, V -0.5, R -1  -> V_clip -0.2: 0.25, 0.64 -> 0.64 clipped
#   t4: padding
OLD_VALUES = jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0]])
VALUES = jnp.array([[0.5, 0.5, 1.0, -0.5, 50.0]])
RETURNS = jnp.array([[1.0, 0.0, 2.0, -1.0, -50.0]])


def test_policy_loss_clipping_hand_values():
    loss, metrics = ppo.policy_loss(LOGPROBS, OLD_LOGPROBS, ADVANTAGES, MASK, clip_range=0.2)
    # (-1.2 + 1.5 - 0.5 + 0.8) / 4 = 0.6 / 4 = 0.15.
    np.testing.assert_allclose(loss, 0.15, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_fraction"], 0.5)  # t0 and t3
    np.testing.assert_allclose(metrics["ratio"], 1.0, rtol=1e-6)  # (1.5 + 1.5 + 0.5 + 0.5) / 4
    # 0.5 * (2 ln(1.5)^2 + 2 ln(0.5)^2) / 4 = 0.25 * (0.16440195 + 0.48045301) = 0.16121374.
    np.testing.assert_allclose(metrics["approx_kl"],
                               0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2), rtol=1e-5)


def test_policy_gradient_is_zero_on_clipped_tokens():
    grad = jax.jit(jax.grad(lambda lp: ppo.policy_loss(lp, OLD_LOGPROBS, ADVANTAGES, MASK)[0]))(
        LOGPROBS)
    # d/d logp of -A * r is -A * r, over 4 tokens: t1 1.5 / 4 = 0.375, t2 -0.5 / 4 = -0.125;
    # t0 and t3 are clipped and t4 is padding: 0.
    np.testing.assert_allclose(grad, [[0.0, 0.375, -0.125, 0.0, 0.0]], rtol=1e-5, atol=1e-7)


def test_value_loss_clipping_hand_values_and_gradient():
    loss, metrics = ppo.value_loss(VALUES, OLD_VALUES, RETURNS, MASK, clip_range_value=0.2)
    # 0.5 * (0.64 + 0.25 + 1 + 0.64) / 4 = 0.5 * 2.53 / 4 = 0.31625.
    np.testing.assert_allclose(loss, 0.31625, rtol=1e-5)
    np.testing.assert_allclose(metrics["value_clip_fraction"], 0.5)  # t0 and t3
    grad = jax.jit(jax.grad(lambda v: ppo.value_loss(v, OLD_VALUES, RETURNS, MASK)[0]))(VALUES)
    # d/dV of 0.5 (V - R)^2 / 4 = (V - R) / 4: t1 0.5 / 4 = 0.125, t2 (1 - 2) / 4 = -0.25;
    # t0 and t3 take the clipped (constant in V) branch, t4 is padding.
    np.testing.assert_allclose(grad, [[0.0, 0.125, -0.25, 0.0, 0.0]], rtol=1e-5, atol=1e-7)


def test_ppo_loss_combines_under_jit():
    loss, metrics = jax.jit(ppo.ppo_loss)(LOGPROBS, OLD_LOGPROBS, ADVANTAGES, VALUES, OLD_VALUES,
                                          RETURNS, MASK)
    # Defaults eps = 0.2, c = 0.2, vf_coef = 0.1: 0.15 + 0.1 * 0.31625 = 0.181625.
    np.testing.assert_allclose(loss, 0.181625, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], loss)
    np.testing.assert_allclose(metrics["policy_loss"], 0.15, rtol=1e-5)
    np.testing.assert_allclose(metrics["value_loss"], 0.31625, rtol=1e-5)


def test_docstring_pipeline_runs_end_to_end():
    # The sequence in the module docstring, on a padded batch: finite, padding untouched.
    rng = np.random.default_rng(1)
    logprobs = -np.abs(rng.normal(size=(2, 4))).astype(np.float32)  # [B, C]
    ref_logprobs = -np.abs(rng.normal(size=(2, 4))).astype(np.float32)
    values = rng.normal(size=(2, 4)).astype(np.float32)
    mask = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])

    @jax.jit
    def step(logprobs, values):
        scores = ppo.apply_missing_eos_penalty(jnp.array([1.0, -1.0]), jnp.array([True, False]),
                                               1.0)
        rewards, _ = ppo.kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, ppo.KL_COEF)
        advantages, returns = ppo.gae(rewards, values, mask, ppo.GAMMA, ppo.LAM)
        advantages = masked.masked_whiten(advantages, mask) * mask
        return ppo.ppo_loss(logprobs, logprobs, advantages, values, values, returns, mask)

    loss, metrics = step(logprobs, values)
    assert np.isfinite(float(loss))
    # At the sampling point ratio = 1, nothing is clipped, and the whitened advantages have
    # masked mean 0, so the policy loss is -masked_mean(A) = 0.
    np.testing.assert_allclose(metrics["policy_loss"], 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 0.0)
