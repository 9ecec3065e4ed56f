"""Per-token estimators of KL(pi || ref), and the adaptive KL-coefficient controller.

Shapes: B rows, C completion tokens. `logp` and `ref_logp` are [B, C] float32 log-probabilities
of the *sampled* tokens under the policy pi and the frozen reference; the tokens were drawn from
pi, so the average of an estimator over samples estimates KL(pi || ref). With
r = ref_logp - logp = log(ref / pi) (Schulman 2020, "Approximating KL divergence"):

  k1 = -r                    unbiased, high variance, can be negative per token.
  k2 = r^2 / 2               biased (exact to second order as ref -> pi), low variance, >= 0.
  k3 = (e^r - 1) - r         unbiased, low variance, >= 0 (e^r >= 1 + r), 0 iff logp == ref_logp.

trl uses k1 for the PPO and RLOO reward penalty (its `kl_estimator="k1"` default) and k3 for the
GRPO loss term.

Adaptive controller (Ziegler et al. 2019, "Fine-tuning language models from human preferences",
section 2.2; trl's `AdaptiveKLController`): after each batch the coefficient beta is moved
towards keeping the measured KL near a target,

  err = clip(KL / target - 1, -0.2, 0.2),   beta <- beta * (1 + err * n_steps / horizon).

trl's defaults are init 0.2, target 6 and horizon 10000 (INIT_KL_COEF, KL_TARGET, KL_HORIZON).
The state is an explicit NamedTuple and the update is jnp-only, so it runs under jit:

  state = AdaptiveKLState(coef=jnp.float32(INIT_KL_COEF))
  state = AdaptiveKLState(adaptive_kl_update(state.coef, kl, n_steps, target=6.0, horizon=1e4))
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

INIT_KL_COEF = 0.2
KL_TARGET = 6.0
KL_HORIZON = 10000.0
# Ziegler et al. limit the proportional error so one odd batch cannot move beta by much.
KL_ERROR_CLIP = 0.2


def k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """log pi - log ref per token. [B, C], [B, C] -> [B, C]."""
    return logp - ref_logp


def k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """0.5 * (log pi - log ref)^2 per token. [B, C], [B, C] -> [B, C]."""
    return 0.5 * jnp.square(logp - ref_logp)


def k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """exp(r) - r - 1 with r = log ref - log pi, per token. [B, C], [B, C] -> [B, C].

    Written as expm1(r) - r: for |r| small, exp(r) - 1 computed directly loses most of its
    digits to cancellation, and the estimate would come out as rounding noise (even negative).
    """
    r = ref_logp - logp  # [B, C]
    return jnp.expm1(r) - r


class AdaptiveKLState(NamedTuple):
    """The adaptive controller's only state: the current KL coefficient beta (a float scalar)."""
    coef: jax.Array


def adaptive_kl_init(init_coef: float = INIT_KL_COEF) -> AdaptiveKLState:
    """The controller's starting state (trl default beta = 0.2)."""
    return AdaptiveKLState(coef=jnp.asarray(init_coef, jnp.float32))


def adaptive_kl_update(coef: jax.Array, current_kl: jax.Array, n_steps: jax.Array, *,
                       target: float = KL_TARGET, horizon: float = KL_HORIZON) -> jax.Array:
    """The next coefficient: coef * (1 + err * n_steps / horizon), err = clip(kl / target - 1).

    err is clipped to [-0.2, 0.2]. coef, current_kl, n_steps: scalars (current_kl is the batch's
    mean per-sequence KL, n_steps the number of samples in the batch, as in trl). Returns a
    float32 scalar.
    """
    err = jnp.clip(current_kl / target - 1.0, -KL_ERROR_CLIP, KL_ERROR_CLIP)
    return jnp.asarray(coef, jnp.float32) * (1.0 + err * n_steps / horizon)
