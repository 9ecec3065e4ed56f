"""Reward-model training on preference pairs: the Bradley-Terry pairwise loss.

Shapes: B preference pairs, T sequence positions. A reward model emits a scalar per position,
values [B, T]; the reward of a sequence is the value at one position (usually its EOS token),
picked with `values_at`.

Bradley & Terry (1952) model P(chosen > rejected) = sigmoid(r_chosen - r_rejected); the loss is
its negative log-likelihood, as used for the RLHF reward models of Stiennon et al. 2020
("Learning to summarize from human feedback") and Ouyang et al. 2022 (InstructGPT):

  loss = mean_b[ -log sigmoid(r_chosen - r_rejected - margin) ]
         + center_coef * mean_b[ (r_chosen + r_rejected)^2 ].

This matches trl's RewardTrainer: the optional per-pair `margin` (Llama 2's graded preferences)
is subtracted inside the sigmoid, and `center_coef` is trl's `center_rewards_coefficient`
(Eisenstein et al. 2023, "Helping or herding?"), which pulls the rewards towards mean zero
since the pairwise term only sees differences. trl applies the centring term only when the
coefficient is set; center_coef=0.0 here is the same as unset.
"""

from typing import Dict, Optional, Tuple

import chex
import jax
import jax.numpy as jnp


def values_at(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[b, index[b]] for each row. values: [B, T] float; index: [B] int -> [B]."""
    chex.assert_rank(values, 2)
    chex.assert_rank(index, 1)
    return jnp.take_along_axis(values, index[:, None].astype(jnp.int32), axis=1)[:, 0]  # [B]


def bradley_terry_loss(r_chosen: jax.Array, r_rejected: jax.Array,
                       margin: Optional[jax.Array] = None,
                       center_coef: float = 0.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Pairwise reward-model loss. r_chosen, r_rejected, margin: [B] float.

    Returns:
      (loss [], metrics {loss, accuracy, margin, reward_chosen, reward_rejected}); accuracy
      counts the pairs with r_chosen strictly above r_rejected (ties are wrong), margin is the
      mean of r_chosen - r_rejected (the reward gap, not the `margin` argument).
    """
    chex.assert_rank([r_chosen, r_rejected], 1)
    chex.assert_equal_shape([r_chosen, r_rejected])
    diff = r_chosen - r_rejected  # [B]
    logits = diff if margin is None else diff - margin  # [B]
    # log_sigmoid is computed stably: no overflow for large |logits|.
    loss = -jnp.mean(jax.nn.log_sigmoid(logits))
    # Always added (0.0 adds nothing), so center_coef may also be a traced value.
    loss = loss + center_coef * jnp.mean(jnp.square(r_chosen + r_rejected))
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean((r_chosen > r_rejected).astype(jnp.float32)),
        "margin": jnp.mean(diff),
        "reward_chosen": jnp.mean(r_chosen),
        "reward_rejected": jnp.mean(r_rejected),
    }
    return loss, metrics
