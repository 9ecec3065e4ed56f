"""DPO and IPO: preference losses on policy and reference log-probs, with no reward model.

Shapes: B preference pairs. Every input is [B] float: the log-probability of the chosen or the
rejected completion under the policy (being trained) or the frozen reference. With
pc, pr, rc, rr = policy chosen/rejected, reference chosen/rejected,

  delta = (pc - rc) - (pr - rr)      (how much more the policy prefers chosen than the reference)

  sigmoid (DPO, Rafailov et al. 2023, "Direct preference optimization: your language model is
    secretly a reward model"):
      l = -(1 - ls) * log sigmoid(beta * delta) - ls * log sigmoid(-beta * delta)
    with label smoothing ls (conservative DPO, "cDPO": the label is taken to be flipped with
    probability ls); ls = 0 is plain DPO.
  ipo (Azar et al. 2023, "A general theoretical paradigm to understand learning from human
    preferences"):
      l = (delta - 1 / (2 beta))^2
    trl computes IPO's log-probs as per-token *averages* over each completion, not sums, so for
    loss_type="ipo" pass average log-probs to match trl (and its choice of beta).

loss = mean over pairs. These are trl DPOTrainer's "sigmoid" and "ipo" loss types; BETA = 0.1 is
trl's default. The implicit rewards beta * (p - r) in the metrics are held out of the gradient,
as in trl.
"""

from typing import Dict, Tuple

import chex
import jax
import jax.numpy as jnp

from learned_loss.core import errors

BETA = 0.1
LOSS_TYPES = ("sigmoid", "ipo")


def loss(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
         ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, beta: float = BETA,
         loss_type: str = "sigmoid",
         label_smoothing: float = 0.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """DPO ("sigmoid") or IPO ("ipo") loss, mean over the B pairs. Every array: [B].

    Returns:
      (loss [], metrics {loss, reward_chosen, reward_rejected, reward_margin, accuracy}):
      reward_chosen = mean beta * (pc - rc), reward_rejected likewise, reward_margin their
      difference, accuracy the share of pairs with reward_chosen > reward_rejected (strictly).
    Raises:
      ValueError: an unknown loss_type.
    """
    if loss_type not in LOSS_TYPES:
        raise errors.UserError(f"unknown DPO loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    chex.assert_rank(policy_chosen_logps, 1)
    chex.assert_equal_shape([policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                             ref_rejected_logps])
    chosen_logratio = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected_logratio = policy_rejected_logps - ref_rejected_logps  # [B]
    delta = chosen_logratio - rejected_logratio  # [B]
    if loss_type == "sigmoid":
        per_pair = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * delta)
                    - label_smoothing * jax.nn.log_sigmoid(-beta * delta))  # [B]
    else:  # "ipo"
        per_pair = jnp.square(delta - 1.0 / (2.0 * beta))  # [B]
    total = jnp.mean(per_pair)
    reward_chosen = beta * jax.lax.stop_gradient(chosen_logratio)  # [B]
    reward_rejected = beta * jax.lax.stop_gradient(rejected_logratio)  # [B]
    metrics = {
        "loss": total,
        "reward_chosen": jnp.mean(reward_chosen),
        "reward_rejected": jnp.mean(reward_rejected),
        "reward_margin": jnp.mean(reward_chosen - reward_rejected),
        "accuracy": jnp.mean((reward_chosen > reward_rejected).astype(jnp.float32)),
    }
    return total, metrics
