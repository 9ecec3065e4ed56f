"""Maximum likelihood: the token-level cross-entropy every other objective is compared with.

loss = -(1 / |M|) sum_{(b, t) in M} log p_params(y_{b,t} | y_{b,<t}), with M the target tokens
that count (all non-PAD targets by default, or the batch's `mask`: e.g. answer tokens only).
Matches `optax.softmax_cross_entropy_with_integer_labels` averaged over the mask.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from learned_loss.data import tokenizer


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position. logits: [B, T, V] float; targets: [B, T] int -> [B, T]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def target_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
    """[B, T] float: the batch's `mask` if it has one, else every non-PAD target."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return (batch["targets"] != tokenizer.PAD).astype(jnp.float32)


def loss(theta: Any, logits: jax.Array, batch: Mapping[str, jax.Array]):
    """Mean negative log-likelihood over the masked targets; `theta` is unused (MLE has none).

    Returns:
      (loss [], metrics {loss, accuracy, tokens}).
    """
    del theta
    mask = target_mask(batch)  # [B, T]
    nll = -token_log_likelihood(logits, batch["targets"])  # [B, T]
    tokens = mask.sum()
    mean_nll = (nll * mask).sum() / jnp.maximum(tokens, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    accuracy = (correct * mask).sum() / jnp.maximum(tokens, 1.0)
    return mean_nll, {"loss": mean_nll, "accuracy": accuracy, "tokens": tokens}
