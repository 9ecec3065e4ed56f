"""Statistics over the masked entries of an array: the helpers every RLHF loss here averages with.

Shapes: B rows, C completion tokens. `mask` is a [B, C] float array, 1.0 on the completion tokens
that count (the EOS token included) and 0.0 on the padding after it; `x` has the mask's shape.

The formulas follow trl's `trl.core` / `trl.trainer.utils` helpers `masked_mean`, `masked_var`
and `masked_whiten`, with one deliberate difference: trl divides by `mask.sum()` (NaN or an error
for an empty mask), while here the divisor is `max(mask.sum(), 1)`. For a 0/1 mask with at least
one 1.0 the two agree exactly; for an empty mask these return 0.0, and the gradient stays finite,
so a batch of all-padding rows cannot poison a jitted step.

The mask multiplies, so entries under a 0.0 mask must still be finite (0 * inf is NaN): fill
padded log-probs with a constant rather than -inf.
"""

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

Axis = Optional[Union[int, Sequence[int]]]


def masked_sum(x: jax.Array, mask: jax.Array, axis: Axis = None) -> jax.Array:
    """sum(x * mask) over `axis` (all axes when None). x, mask: [B, C] -> [] or reduced shape."""
    return jnp.sum(x * mask, axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis: Axis = None) -> jax.Array:
    """sum(x * mask) / max(sum(mask), 1) over `axis`: trl's masked_mean, but 0.0 for an empty mask.

    x, mask: [B, C]; axis=None -> [], axis=1 -> [B] (a mean per row).
    """
    total = jnp.sum(x * mask, axis=axis)
    count = jnp.sum(mask, axis=axis)
    return total / jnp.maximum(count, 1.0)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Variance of the masked entries of x (all axes) -> [].

    The biased variance is masked_mean((x - mean)^2). With `unbiased` it is scaled by the Bessel
    factor n / (n - 1), n = sum(mask), as trl's masked_var does. trl raises for n == 0 and gives
    NaN for n == 1; here the factor's divisor is max(n - 1, 1), so both cases return 0.0.
    """
    mean = masked_mean(x, mask)  # []
    var = masked_mean(jnp.square(x - mean), mask)  # []
    if unbiased:
        n = jnp.sum(mask)
        var = var * n / jnp.maximum(n - 1.0, 1.0)
    return var


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
    """(x - mean) * rsqrt(var + eps) over the masked entries: trl's masked_whiten.

    mean is the masked mean, var the unbiased masked variance.

    With shift_mean=False the mean is added back, so only the scale changes (trl uses this to
    whiten rewards without moving their mean). x, mask: [B, C] -> [B, C].

    Every entry is transformed, the padded ones included (they get (x_pad - mean) * scale, not
    0): callers that need zeros on padding multiply the result by `mask`.
    """
    mean = masked_mean(x, mask)  # []
    var = masked_var(x, mask)  # []
    whitened = (x - mean) * jax.lax.rsqrt(var + eps)  # [B, C]
    if not shift_mean:
        whitened = whitened + mean
    return whitened
