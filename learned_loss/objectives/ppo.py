"""PPO for RLHF: KL-penalised per-token rewards, GAE, and the clipped policy and value losses.

Shapes: B rows (one sampled completion each), C completion tokens. `mask` is [B, C] float, 1.0
on completion tokens (EOS included) and 0.0 on the padding after it. Log-probs and values are
per token, [B, C] float32; `scores` (the reward model's output per completion) are [B].

References: PPO's clipped surrogate (Schulman et al. 2017, "Proximal policy optimization
algorithms"); GAE (Schulman et al. 2016, "High-dimensional continuous control using generalized
advantage estimation"); the RLHF set-up with a per-token KL penalty to a frozen reference
(Ziegler et al. 2019, "Fine-tuning language models from human preferences"); the details below
follow Huang et al. 2024 ("The N+ implementation details of RLHF with PPO") and trl's
PPOTrainer, whose defaults are the module constants (KL_COEF ... VF_COEF).

One step, as trl runs it (advantage whitening is the caller's job, as it is in trl):

  scores = apply_missing_eos_penalty(scores, finished, penalty)        # optional
  rewards, kl = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, KL_COEF)
  advantages, returns = gae(rewards, old_values, mask, GAMMA, LAM)
  advantages = masked.masked_whiten(advantages, mask) * mask           # [B, C]
  # ... then, for each minibatch and PPO epoch, with fresh logprobs / values:
  loss, metrics = ppo_loss(logprobs, old_logprobs, advantages, values, old_values, returns, mask)

Differences from trl worth knowing when comparing numbers token by token: trl adds the score one
position *after* the last completion token when the row has room (its `sequence_lengths_p1`)
and keeps the value head's output at that extra position (`padding_mask_p1`); here the score,
the values and the value loss all live on the last masked token and before. trl's approx_kl is
a plain mean over the minibatch's tokens; here it is a masked mean.
"""

from typing import Dict, Tuple

import chex
import jax
import jax.numpy as jnp

from learned_loss.objectives import masked
from learned_loss.objectives import kl as kl_lib

# trl PPOConfig defaults.
KL_COEF = 0.05
GAMMA = 1.0
LAM = 0.95
CLIP_RANGE = 0.2
CLIP_RANGE_VALUE = 0.2
VF_COEF = 0.1

Metrics = Dict[str, jax.Array]


def apply_missing_eos_penalty(scores: jax.Array, finished: jax.Array, penalty: float) -> jax.Array:
    """scores - penalty on the rows that never emitted EOS (trl's `missing_eos_penalty`).

    scores: [B] float; finished: [B] bool (True where the completion contains EOS) -> [B].
    """
    chex.assert_equal_shape([scores, finished])
    return jnp.where(finished, scores, scores - penalty)


def kl_penalized_rewards(scores: jax.Array, logprobs: jax.Array, ref_logprobs: jax.Array,
                         mask: jax.Array, kl_coef: float = KL_COEF
                         ) -> Tuple[jax.Array, jax.Array]:
    """Per-token rewards: -kl_coef * k1 on every completion token, plus the score on the last one.

    The last token of row b is index sum(mask[b]) - 1 (the mask is a prefix of ones); a row with
    no completion token gets no score. Padding gets 0.

    Args:
      scores: [B] sequence rewards; logprobs, ref_logprobs, mask: [B, C].
    Returns:
      (rewards [B, C], kl [B, C]) with kl = k1 * mask.
    """
    chex.assert_rank([scores, logprobs], [1, 2])
    chex.assert_equal_shape([logprobs, ref_logprobs, mask])
    kl = kl_lib.k1(logprobs, ref_logprobs) * mask  # [B, C]
    lengths = jnp.sum(mask, axis=1)  # [B]
    last = lengths.astype(jnp.int32) - 1  # [B]; -1 for an empty row
    # one_hot(-1) is all zeros already; the explicit `lengths > 0` says so on purpose.
    at_last = jax.nn.one_hot(last, mask.shape[1], dtype=logprobs.dtype)  # [B, C]
    at_last = at_last * (lengths > 0)[:, None]  # [B, C]
    rewards = -kl_coef * kl + scores[:, None] * at_last  # [B, C]
    return rewards, kl


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = GAMMA,
        lam: float = LAM) -> Tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016), run backwards over the tokens.

    Rewards and values are zeroed on padding first, so V after a row's last token is 0 (and so
    is V after position C - 1). Then
      delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
    and returns R_t = A_t + V_t (the value target).

    Args:
      rewards, values, mask: [B, C].
    Returns:
      (advantages [B, C], returns [B, C]), both 0 on padding. Not whitened.
    """
    chex.assert_rank(rewards, 2)
    chex.assert_equal_shape([rewards, values, mask])
    rewards = rewards * mask  # [B, C]
    values = values * mask  # [B, C]
    values_tp1 = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)  # [B, C]
    deltas = rewards + gamma * values_tp1 - values  # [B, C]

    def step(adv_tp1, delta_t):  # [B], [B]
        adv_t = delta_t + gamma * lam * adv_tp1  # [B]
        return adv_t, adv_t

    # Scan over the time axis (time-major: [C, B]), last token first.
    _, adv_time_major = jax.lax.scan(step, jnp.zeros_like(deltas[:, 0]), deltas.T, reverse=True)
    advantages = adv_time_major.T * mask  # [B, C]
    returns = (advantages + values) * mask  # [B, C]
    return advantages, returns


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                mask: jax.Array, clip_range: float = CLIP_RANGE) -> Tuple[jax.Array, Metrics]:
    """PPO's clipped surrogate, per token, masked mean over the batch.

    ratio = exp(logprobs - old_logprobs);
    loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).
    Where the clipped term wins the token's gradient is zero.

    Args:
      logprobs (being trained), old_logprobs (from sampling), advantages, mask: [B, C].
    Returns:
      (loss [], metrics {policy_loss, clip_fraction, approx_kl, ratio}); approx_kl is
      0.5 * masked_mean((logprobs - old_logprobs)^2) (the k2 estimator).
    """
    chex.assert_rank(logprobs, 2)
    chex.assert_equal_shape([logprobs, old_logprobs, advantages, mask])
    log_ratio = logprobs - old_logprobs  # [B, C]
    ratio = jnp.exp(log_ratio)  # [B, C]
    unclipped = -advantages * ratio  # [B, C]
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)  # [B, C]
    loss = masked.masked_mean(jnp.maximum(unclipped, clipped), mask)
    metrics = {
        "policy_loss": loss,
        "clip_fraction": masked.masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "approx_kl": 0.5 * masked.masked_mean(jnp.square(log_ratio), mask),
        "ratio": masked.masked_mean(ratio, mask),
    }
    return loss, metrics


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip_range_value: float = CLIP_RANGE_VALUE) -> Tuple[jax.Array, Metrics]:
    """Clipped value loss: 0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2)).

    V_clip = old_values + clip(values - old_values, -c, c): the value head may not move more
    than c from where it was at sampling time without the loss noticing.

    Args:
      values (being trained), old_values (from sampling), returns, mask: [B, C].
    Returns:
      (loss [], metrics {value_loss, value_clip_fraction}).
    """
    chex.assert_rank(values, 2)
    chex.assert_equal_shape([values, old_values, returns, mask])
    values_clipped = old_values + jnp.clip(values - old_values, -clip_range_value,
                                           clip_range_value)  # [B, C]
    err_unclipped = jnp.square(values - returns)  # [B, C]
    err_clipped = jnp.square(values_clipped - returns)  # [B, C]
    loss = 0.5 * masked.masked_mean(jnp.maximum(err_unclipped, err_clipped), mask)
    metrics = {
        "value_loss": loss,
        "value_clip_fraction": masked.masked_mean(
            (err_clipped > err_unclipped).astype(jnp.float32), mask),
    }
    return loss, metrics


def ppo_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
             values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
             clip_range: float = CLIP_RANGE, clip_range_value: float = CLIP_RANGE_VALUE,
             vf_coef: float = VF_COEF) -> Tuple[jax.Array, Metrics]:
    """policy_loss + vf_coef * value_loss (trl's PPO loss). All array inputs: [B, C].

    `advantages` should already be whitened (see the module docstring).

    Returns:
      (loss [], metrics {loss, policy_loss, clip_fraction, approx_kl, ratio, value_loss,
      value_clip_fraction}).
    """
    pg_loss, pg_metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)
    vf_loss, vf_metrics = value_loss(values, old_values, returns, mask, clip_range_value)
    loss = pg_loss + vf_coef * vf_loss
    return loss, {"loss": loss, **pg_metrics, **vf_metrics}
