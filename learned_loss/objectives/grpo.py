"""GRPO: group-relative advantages and a token-level clipped surrogate with a k3 KL term.

Shapes: P prompts, G completions per prompt, B = P * G rows (each prompt's G completions
adjacent, prompt-major, as trl's GRPOTrainer orders them), C completion tokens. `mask` is [B, C]
float (1.0 on completion tokens, EOS included); log-probs are per token, [B, C] float32.

References: Shao et al. 2024 ("DeepSeekMath: pushing the limits of mathematical reasoning in open
language models"), section 4.1; trl's GRPOTrainer. Per completion i of a group and token t:

  A_i = (r_i - mean(r)) / (std(r) + eps)      unbiased std (torch.std), eps = 1e-4 as in trl
  rho_{i,t} = exp(logp_{i,t} - old_logp_{i,t})
  l_{i,t} = -min(rho A_i, clip(rho, 1 - eps_c, 1 + eps_c) A_i) + beta * k3_{i,t}
  loss = sum_{i,t} l_{i,t} mask_{i,t} / sum_{i,t} mask_{i,t}

The last line is token-level normalisation over the whole batch: trl's loss_type "bnpo" (and
"dapo", which divides by the token count of the global batch rather than the local one; on one
batch they agree), from DAPO (Yu et al. 2025). The original GRPO objective instead averages each
sequence over its own tokens and then averages the sequences (trl's loss_type "grpo"), which
gives each token of a short completion more weight than one of a long completion.

group_advantages(scale=False) leaves out the division by the std, the Dr. GRPO variant of Liu
et al. 2025 ("Understanding R1-Zero-like training: a critical perspective"), trl's
`scale_rewards=False`.

beta = 0.04 is the DeepSeekMath KL weight and trl's earlier default (later trl versions default
to 0.0). With beta == 0 the reference model is not needed at all: `loss` skips the k3 term in
Python, so `ref_logprobs` may be None and the metrics have no "kl".
"""

from typing import Dict, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from learned_loss.objectives import masked
from learned_loss.objectives import kl as kl_lib

BETA = 0.04
CLIP_EPS = 0.2
ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: jax.Array, eps: float = ADVANTAGE_EPS,
                     scale: bool = True) -> jax.Array:
    """Rewards relative to their group: (r - mean) / (std + eps), or r - mean if not `scale`.

    rewards: [P, G] -> [P, G]; std is the unbiased (n - 1) standard deviation within a group.

    Raises:
      ValueError: G < 2 (a group of one has no spread to compare against).
    """
    chex.assert_rank(rewards, 2)
    g = rewards.shape[1]
    if g < 2:
        raise ValueError(f"group advantages need G >= 2 completions per prompt, got G={g}")
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)  # [P, G]
    if not scale:
        return centred
    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)  # [P, 1]
    return centred / (std + eps)


def loss(logprobs: jax.Array, old_logprobs: jax.Array, ref_logprobs: Optional[jax.Array],
         advantages: jax.Array, mask: jax.Array, beta: float = BETA,
         clip_eps: float = CLIP_EPS) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """GRPO loss, token-normalised over the whole batch.

    Args:
      logprobs (being trained), old_logprobs (from sampling), ref_logprobs (frozen reference;
        unused and may be None when beta == 0), mask: [B, C]; advantages: [B], one per
        completion (the [P, G] advantages flattened prompt-major). beta: a Python float.
    Returns:
      (loss [], metrics {loss, clip_fraction, kl}); kl is the masked mean of k3 (absent when
      beta == 0); clip_fraction is the share of tokens where the clipped term is the minimum,
      i.e. trl's test (ratio > 1 + eps and A > 0) or (ratio < 1 - eps and A < 0).
    """
    chex.assert_rank([logprobs, advantages], [2, 1])
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    chex.assert_equal_shape_prefix([logprobs, advantages], 1)
    adv = advantages[:, None]  # [B, 1]
    ratio = jnp.exp(logprobs - old_logprobs)  # [B, C]
    unclipped = ratio * adv  # [B, C]
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv  # [B, C]
    per_token = -jnp.minimum(unclipped, clipped)  # [B, C]
    metrics = {}
    if beta != 0.0:
        chex.assert_equal_shape([logprobs, ref_logprobs])
        per_token_kl = kl_lib.k3(logprobs, ref_logprobs)  # [B, C]
        per_token = per_token + beta * per_token_kl
        metrics["kl"] = masked.masked_mean(per_token_kl, mask)
    total = masked.masked_mean(per_token, mask)
    metrics["loss"] = total
    metrics["clip_fraction"] = masked.masked_mean((clipped < unclipped).astype(jnp.float32), mask)
    return total, metrics
