"""Tests for learned_loss.objectives.masked against numbers worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.objectives import masked

# Row 0 has three tokens then padding; row 1 two tokens then padding. The padded values are
# large on purpose: any leak into a statistic would show.
X = jnp.array([[1.0, 2.0, 3.0, 100.0],
               [4.0, 5.0, -7.0, -7.0]])  # [B=2, C=4]
MASK = jnp.array([[1.0, 1.0, 1.0, 0.0],
                  [1.0, 1.0, 0.0, 0.0]])  # [B, C]


def test_sum_and_mean():
    # Masked entries 1, 2, 3, 4, 5: sum 15, count 5, mean 3.
    np.testing.assert_allclose(masked.masked_sum(X, MASK), 15.0, rtol=1e-7)
    np.testing.assert_allclose(masked.masked_mean(X, MASK), 3.0, rtol=1e-7)
    # Per row: row 0 (1+2+3)=6 over 3 -> 2; row 1 (4+5)=9 over 2 -> 4.5.
    np.testing.assert_allclose(masked.masked_sum(X, MASK, axis=1), [6.0, 9.0], rtol=1e-7)
    np.testing.assert_allclose(masked.masked_mean(X, MASK, axis=1), [2.0, 4.5], rtol=1e-7)


def test_empty_mask_gives_zero_and_finite_gradient():
    empty = jnp.zeros_like(MASK)
    np.testing.assert_allclose(masked.masked_mean(X, empty), 0.0)
    np.testing.assert_allclose(masked.masked_var(X, empty), 0.0)
    # Row 1 of this mask is empty: its mean is 0, not NaN.
    half = MASK.at[1].set(0.0)
    np.testing.assert_allclose(masked.masked_mean(X, half, axis=1), [2.0, 0.0], rtol=1e-7)
    grad = jax.jit(jax.grad(lambda x: masked.masked_mean(x, empty)))(X)
    np.testing.assert_array_equal(grad, np.zeros((2, 4), np.float32))


def test_var_biased_and_unbiased():
    # Deviations from the mean 3: -2, -1, 0, 1, 2; squares 4, 1, 0, 1, 4 sum to 10.
    # Biased: 10 / 5 = 2. Bessel: 2 * 5 / 4 = 2.5.
    np.testing.assert_allclose(masked.masked_var(X, MASK, unbiased=False), 2.0, rtol=1e-6)
    np.testing.assert_allclose(masked.masked_var(X, MASK), 2.5, rtol=1e-6)
    # A single masked entry: biased variance 0; the Bessel factor would be 1/0, guarded to 0.
    one = jnp.zeros_like(MASK).at[0, 0].set(1.0)
    np.testing.assert_allclose(masked.masked_var(X, one), 0.0)


def test_whiten_hand_values():
    # (x - 3) / sqrt(2.5 + 1e-8): 1 -> -2 / 1.5811388 = -1.2649111, 5 -> 1.2649111,
    # and the padded 100 -> 97 / 1.5811388 = 61.347853 (transformed, not zeroed).
    w = masked.masked_whiten(X, MASK)
    scale = 1.0 / np.sqrt(2.5 + 1e-8)
    np.testing.assert_allclose(w[0, 0], -2.0 * scale, rtol=1e-6)
    np.testing.assert_allclose(w[1, 1], 2.0 * scale, rtol=1e-6)
    np.testing.assert_allclose(w[0, 3], 97.0 * scale, rtol=1e-6)
    # shift_mean=False adds the mean 3 back: 1 -> 3 - 1.2649111 = 1.7350889.
    w_keep = masked.masked_whiten(X, MASK, shift_mean=False)
    np.testing.assert_allclose(w_keep, w + 3.0, rtol=1e-6)


def test_whiten_gives_mean_zero_var_one_on_masked_entries():
    x = np.random.default_rng(0).normal(7.0, 3.0, (4, 6)).astype(np.float32)  # [B, C]
    lengths = np.array([6, 4, 1, 3])
    mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.float32)  # [B, C]
    w = jax.jit(masked.masked_whiten)(x, mask)
    np.testing.assert_allclose(masked.masked_mean(w, mask), 0.0, atol=1e-6)
    np.testing.assert_allclose(masked.masked_var(w, mask), 1.0, rtol=1e-5)
