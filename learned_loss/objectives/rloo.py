"""RLOO: REINFORCE with a leave-one-out baseline over K samples per prompt, no value network.

Shapes: P prompts, K samples per prompt, B = P * K rows, C completion tokens. `mask` is [B, C]
float (1.0 on completion tokens, EOS included); log-probs are per token, [B, C] float32.

References: Ahmadian et al. 2024 ("Back to basics: revisiting REINFORCE style optimization for
learning from human feedback in LLMs"); the leave-one-out baseline from Kool et al. 2019 ("Buy 4
REINFORCE samples, get a baseline for free!"). Formulas match trl's RLOOTrainer (its defaults:
kl_coef 0.05, cliprange 0.2, rloo_k 2):

  R_i = score_i - kl_coef * sum_t k1_t                (the KL penalty folded into one reward)
  A_i = R_i - (sum_j R_j - R_i) / (K - 1)             (mean of the *other* K - 1 samples)
  loss = mean_i max(-A_i * rho_i, -A_i * clip(rho_i, 1 - eps, 1 + eps)),
  rho_i = exp(sum_t logp - sum_t old_logp)            (one ratio per sequence, as in trl)

Row order: here rewards are [P, K], one prompt per row, so a [B] vector whose rows hold each
prompt's K samples next to each other becomes `r.reshape(P, K)`. trl orders its batch sample-major
instead (all prompts once, then again, K times): such a vector becomes `r.reshape(K, P).T`.
"""

from typing import Dict, Tuple

import chex
import jax
import jax.numpy as jnp

from learned_loss.objectives import masked
from learned_loss.objectives import kl as kl_lib

KL_COEF = 0.05
CLIP_RANGE = 0.2


def sequence_logprobs(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """log p(completion) = sum of the masked per-token log-probs. [B, C], [B, C] -> [B]."""
    return masked.masked_sum(logprobs, mask, axis=1)


def sequence_rewards(scores: jax.Array, logprobs: jax.Array, ref_logprobs: jax.Array,
                     mask: jax.Array, kl_coef: float = KL_COEF) -> jax.Array:
    """score - kl_coef * sum_t k1_t * mask_t. scores: [B]; the others [B, C] -> [B]."""
    chex.assert_rank([scores, logprobs], [1, 2])
    chex.assert_equal_shape([logprobs, ref_logprobs, mask])
    kl = masked.masked_sum(kl_lib.k1(logprobs, ref_logprobs), mask, axis=1)  # [B]
    return scores - kl_coef * kl


def leave_one_out_advantages(rewards: jax.Array) -> jax.Array:
    """r_i minus the mean reward of the prompt's other samples. rewards: [P, K] -> [P, K].

    Raises:
      ValueError: K < 2 (no other sample to form a baseline from).
    """
    chex.assert_rank(rewards, 2)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"leave-one-out needs K >= 2 samples per prompt, got K={k}")
    others_sum = jnp.sum(rewards, axis=1, keepdims=True) - rewards  # [P, K]
    return rewards - others_sum / (k - 1)


def policy_loss(seq_logprobs: jax.Array, old_seq_logprobs: jax.Array, advantages: jax.Array,
                clip_range: float = CLIP_RANGE) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Clipped surrogate with one importance ratio per sequence, mean over rows.

    Args:
      seq_logprobs (being trained), old_seq_logprobs (from sampling): [B] summed log-probs
        (see `sequence_logprobs`); advantages: [B] (the [P, K] advantages, flattened in the
        same row order).
    Returns:
      (loss [], metrics {policy_loss, clip_fraction, approx_kl, ratio}), plain means over B.
    """
    chex.assert_rank(seq_logprobs, 1)
    chex.assert_equal_shape([seq_logprobs, old_seq_logprobs, advantages])
    log_ratio = seq_logprobs - old_seq_logprobs  # [B]
    ratio = jnp.exp(log_ratio)  # [B]
    unclipped = -advantages * ratio  # [B]
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)  # [B]
    loss = jnp.mean(jnp.maximum(unclipped, clipped))
    metrics = {
        "policy_loss": loss,
        "clip_fraction": jnp.mean((clipped > unclipped).astype(jnp.float32)),
        "approx_kl": 0.5 * jnp.mean(jnp.square(log_ratio)),
        "ratio": jnp.mean(ratio),
    }
    return loss, metrics
