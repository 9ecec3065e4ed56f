"""Hand-made losses robust to noisy labels, applied per target token: the baselines a learned
objective for noisy demonstrations has to beat.

At each counted target position (b, t) the model's next-token distribution is a V-way
classifier: p = softmax(logits[b, t]) [V], y = targets[b, t], p_y its probability of the target.
Each loss is a per-token value l(p, y) averaged over the mask M (the batch's `mask`, else every
non-PAD target, as `mle.loss`):

  generalized cross-entropy (Zhang and Sabuncu 2018, "Generalized Cross Entropy Loss for
  Training Deep Neural Networks with Noisy Labels", NeurIPS), the negative Box-Cox transform of
  p_y:
      l = (1 - p_y^q) / q,  q in (0, 1]
  q -> 0 is cross-entropy (-log p_y), q = 1 the mean absolute error 1 - p_y (up to a factor 2),
  which is robust to symmetric noise but slow to train.

  symmetric cross-entropy (Wang et al. 2019, "Symmetric Cross Entropy for Robust Learning with
  Noisy Labels", ICCV): cross-entropy plus the reverse cross-entropy, in which the one-hot label
  plays the model and log 0 is clipped to A (the paper's A = -4):
      l = alpha * (-log p_y) + beta * (-A) * (1 - p_y)
  (-sum_k p_k log onehot_k = -A sum_{k != y} p_k).

  bootstrapping (Reed et al. 2015, "Training Deep Neural Networks on Noisy Labels with
  Bootstrapping", ICLR workshop): cross-entropy against a target that mixes the label with the
  model's own prediction,
      soft:  l = -sum_k (beta * onehot_k + (1 - beta) * p_k) log p_k
               = beta * (-log p_y) + (1 - beta) * H(p)
      hard:  l = -beta * log p_y - (1 - beta) * log p_{argmax p}
  beta = 1 is cross-entropy. As in the paper, the soft target's prediction is differentiated
  through, which makes soft bootstrapping minimum-entropy regularisation (Grandvalet and Bengio
  2005). Held fixed (stop_gradient), the soft target's gradient would be beta times
  cross-entropy's (d/dz of -sum_k c_k log p_k is p - c, and p - (beta e_y + (1 - beta) p) =
  beta (p - e_y)), which an optimizer invariant to the gradient's scale, such as Adam, turns into
  MLE exactly.

Every loss has `mle.loss`'s signature and metrics: `loss(theta, logits, batch, **settings)`
-> (loss [], {loss, nll, accuracy, tokens}), with theta unused and nll the plain cross-entropy
over the same tokens. Shapes: B batch, T sequence, V vocabulary.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from learned_loss.core import errors
from learned_loss.objectives import mle

# log 0 in the reverse cross-entropy (Wang et al. 2019 use A = -4).
RCE_LOG_ZERO = -4.0
BOOTSTRAP_KINDS = ("soft", "hard")


def check_settings(*, q: float | None = None, alpha: float | None = None,
                   beta: float | None = None, bootstrap_beta: float | None = None,
                   kind: str | None = None) -> None:
    """UserError naming the setting unless: 0 < q <= 1; alpha, beta >= 0, not both 0;
    0 <= bootstrap_beta <= 1; kind in BOOTSTRAP_KINDS. Settings left None are not checked."""
    if q is not None and not 0.0 < q <= 1.0:
        raise errors.UserError(f"gce q must lie in (0, 1], got {q}")
    if alpha is not None and beta is not None:
        if alpha < 0 or beta < 0 or alpha == beta == 0:
            raise errors.UserError(f"sce alpha and beta must be >= 0 and not both 0, got {alpha}, "
                             f"{beta}")
    if bootstrap_beta is not None and not 0.0 <= bootstrap_beta <= 1.0:
        raise errors.UserError(f"bootstrap beta must lie in [0, 1], got {bootstrap_beta}")
    if kind is not None and kind not in BOOTSTRAP_KINDS:
        raise errors.UserError(f"bootstrap kind must be one of {BOOTSTRAP_KINDS}, got {kind!r}")


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """values, mask: [B, T] -> [] mean over the mask (0 with no token)."""
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _with_metrics(per_token: jax.Array, logits: jax.Array, batch: Mapping[str, jax.Array]):
    """(mean of per_token [B, T] over the mask, metrics with the plain NLL beside it)."""
    nll, metrics = mle.loss((), logits, batch)
    value = _masked_mean(per_token, mle.target_mask(batch))
    return value, {**metrics, "loss": value, "nll": nll}


def gce_loss(theta: Any, logits: jax.Array, batch: Mapping[str, jax.Array], *, q: float):
    """Generalized cross-entropy (module docstring). logits [B, T, V]; batch 'targets' [B, T],
    optional 'mask' [B, T]."""
    del theta
    check_settings(q=q)
    log_p_y = mle.token_log_likelihood(logits, batch["targets"])  # [B, T]
    return _with_metrics((1.0 - jnp.exp(q * log_p_y)) / q, logits, batch)


def sce_loss(theta: Any, logits: jax.Array, batch: Mapping[str, jax.Array], *, alpha: float,
             beta: float):
    """Symmetric cross-entropy (module docstring), A = RCE_LOG_ZERO."""
    del theta
    check_settings(alpha=alpha, beta=beta)
    log_p_y = mle.token_log_likelihood(logits, batch["targets"])  # [B, T]
    reverse = -RCE_LOG_ZERO * (1.0 - jnp.exp(log_p_y))  # [B, T]
    return _with_metrics(alpha * -log_p_y + beta * reverse, logits, batch)


def bootstrap_loss(theta: Any, logits: jax.Array, batch: Mapping[str, jax.Array], *,
                   beta: float, kind: str):
    """Bootstrapping, soft or hard (module docstring)."""
    del theta
    check_settings(bootstrap_beta=beta, kind=kind)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
    log_p_y = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    if kind == "soft":
        own = -(jnp.exp(log_probs) * log_probs).sum(axis=-1)  # [B, T]: the entropy H(p)
    else:
        top = jnp.argmax(log_probs, axis=-1)  # [B, T]
        own = -jnp.take_along_axis(log_probs, top[..., None], axis=-1)[..., 0]
    return _with_metrics(beta * -log_p_y + (1.0 - beta) * own, logits, batch)
