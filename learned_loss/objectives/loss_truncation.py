"""Loss truncation: maximum likelihood on all but the highest-loss examples of each batch.

Kang and Hashimoto 2020, "Improved Natural Language Generation via Loss Truncation" (ACL):
log loss is not robust to invalid references (noisy demonstrations), because it must give every
reference probability mass; dropping the examples the model finds least likely, after a warm-up
of plain MLE that lets the model learn which ones those are, bounds a distinguishability
criterion instead. The paper drops the examples above a loss quantile estimated over recent
batches; here the quantile is the batch's own, which needs no state:

  per-example loss  l_b = (1 / |M_b|) sum_{t in M_b} -log p(y_{b,t} | y_{b,<t})
                    (length-normalised, so a long answer is not dropped for its length alone)
  valid             V = {b : |M_b| > 0}, n = |V|  (a row with no masked token never counts)
  kept              K = the k = n - floor(drop_fraction * n) valid rows of lowest l_b, ties
                    broken by the lower row index (floor with a 1e-9 tolerance, so that
                    0.29 * 100 drops 29, not 28)
  loss              sum_{b in K} sum_{t in M_b} -log p(y_{b,t}) / sum_{b in K} |M_b|

i.e. MLE (`mle.loss`, token-weighted) restricted to the kept rows. The selection is under
stop_gradient: a dropped row gets zero gradient, a kept one the MLE gradient of the kept tokens.
While step < warmup_steps, and when the batch has no 'step' (evaluation), the loss is exactly
`mle.loss`. M is the batch's `mask` (answer tokens) or every non-PAD target (`mle.target_mask`).

Shapes: B batch, T sequence, V vocabulary.
"""

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.objectives import mle

_FLOOR_TOLERANCE = 1e-9


def check_settings(drop_fraction: float, warmup_steps: int) -> None:
    """ValueError unless 0 <= drop_fraction < 1 and warmup_steps is an int >= 0."""
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must lie in [0, 1), got {drop_fraction}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)):
        raise ValueError(f"warmup_steps must be an int, got {warmup_steps!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


def kept_counts(drop_fraction: float, batch_size: int) -> np.ndarray:
    """[batch_size + 1] int32: entry n is k = n - floor(drop_fraction * n), the rows kept of n.

    A table built in Python (B is static) so that the floor is exact float64 arithmetic, not
    float32 under jit.
    """
    return np.array(
        [n - math.floor(drop_fraction * n + _FLOOR_TOLERANCE) for n in range(batch_size + 1)],
        np.int32,
    )


def example_losses(nll: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row mean NLL over the masked tokens and the row's token count.

    nll, mask: [B, T] -> ([B] mean NLL (0 for a row with no token), [B] tokens).
    """
    tokens = mask.sum(axis=1)  # [B]
    return (nll * mask).sum(axis=1) / jnp.maximum(tokens, 1.0), tokens


def keep_lowest(losses: jax.Array, valid: jax.Array, drop_fraction: float) -> jax.Array:
    """[B] bool: the k = n - floor(drop_fraction * n) valid rows of lowest loss (n valid rows),
    ties broken by row index. losses: [B] float; valid: [B] bool. No gradient flows through it.
    """
    batch = losses.shape[0]
    key = jnp.where(valid, jax.lax.stop_gradient(losses), jnp.inf)  # [B]; invalid rows last
    order = jnp.argsort(key, stable=True)  # [B]: row indices, lowest loss first
    rank = jnp.zeros((batch,), jnp.int32).at[order].set(jnp.arange(batch, dtype=jnp.int32))
    n_valid = valid.sum().astype(jnp.int32)
    k = jnp.asarray(kept_counts(drop_fraction, batch))[n_valid]  # []
    return valid & (rank < k)


def loss(theta: Any, logits: jax.Array, batch: Mapping[str, jax.Array], *,
         drop_fraction: float, warmup_steps: int):
    """Loss truncation (module docstring); `theta` is unused (the objective has none).

    Args:
      logits: [B, T, V].
      batch: 'targets' [B, T] int; optional 'mask' [B, T]; optional 'step' [] int (the
        optimizer steps taken before this one; absent in evaluation, which then gets MLE).
      drop_fraction: fraction of the batch's valid rows to drop, in [0, 1).
      warmup_steps: steps of plain MLE before any row is dropped.

    Returns:
      (loss [], metrics {loss, nll (MLE over every masked token), accuracy, tokens (every
      masked token), kept_fraction (kept rows / rows with a masked token; 1 with none)}).
    """
    check_settings(drop_fraction, warmup_steps)
    mle_loss, mle_metrics = mle.loss(theta, logits, batch)
    metrics = {"nll": mle_loss, "accuracy": mle_metrics["accuracy"],
               "tokens": mle_metrics["tokens"]}
    if "step" not in batch:
        return mle_loss, {**metrics, "loss": mle_loss, "kept_fraction": jnp.ones(())}

    mask = mle.target_mask(batch)  # [B, T]
    nll = -mle.token_log_likelihood(logits, batch["targets"])  # [B, T]
    losses, tokens = example_losses(nll, mask)  # [B], [B]
    valid = tokens > 0  # [B]
    kept = keep_lowest(losses, valid, drop_fraction)  # [B]
    kept_mask = mask * kept[:, None].astype(mask.dtype)  # [B, T]
    truncated = (nll * kept_mask).sum() / jnp.maximum(kept_mask.sum(), 1.0)

    warm = batch["step"] < warmup_steps
    value = jnp.where(warm, mle_loss, truncated)
    n_valid = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    kept_fraction = jnp.where(warm | ~valid.any(), 1.0, kept.sum() / n_valid)
    return value, {**metrics, "loss": value, "kept_fraction": kept_fraction}
