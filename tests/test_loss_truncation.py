"""Tests for learned_loss.objectives.loss_truncation against numbers worked out by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.data import tokenizer
from learned_loss.objectives import loss_truncation, mle

# Two classes with logits (log p, log(1 - p)): log_softmax gives back log p exactly, so the NLL
# of target 0 is -log p. Row 4 has no masked token (and a huge loss that must not leak).
P = np.array([[0.9, 0.9, 0.5],
              [0.2, 0.5, 0.5],
              [0.5, 0.5, 0.5],
              [0.8, 0.6, 0.5],
              [0.01, 0.01, 0.01]])  # [B=5, T=3]
MASK = np.array([[1, 1, 0],
                 [1, 0, 0],
                 [1, 1, 1],
                 [1, 1, 0],
                 [0, 0, 0]], np.float32)  # [B, T]
LOGITS = jnp.asarray(np.stack([np.log(P), np.log(1 - P)], axis=-1), jnp.float32)  # [B, T, V=2]
TARGETS = jnp.zeros((5, 3), jnp.int32)  # [B, T]
BATCH = {"targets": TARGETS, "mask": jnp.asarray(MASK)}

# Per-row mean NLL: row 0 -log .9 = 0.1054; row 1 -log .2 = 1.6094; row 2 -log .5 = 0.6931;
# row 3 (-log .8 - log .6) / 2 = (0.2231 + 0.5108) / 2 = 0.3670; row 4 not valid.
ROW_LOSS = [-np.log(0.9), -np.log(0.2), -np.log(0.5), -(np.log(0.8) + np.log(0.6)) / 2, 0.0]
# drop 0.5 of the 4 valid rows: k = 4 - 2 = 2 kept, rows 0 and 3 (the lowest losses), with
# 2 + 2 tokens: (2 * 0.1054 + 0.2231 + 0.5108) / 4 = 0.2362.
TRUNCATED = (-2 * np.log(0.9) - np.log(0.8) - np.log(0.6)) / 4
# MLE over all 8 masked tokens: (0.2107 + 1.6094 + 3 * 0.6931 + 0.7340) / 8 = 4.6335 / 8 = 0.5792.
MLE = (-2 * np.log(0.9) - np.log(0.2) - 3 * np.log(0.5) - np.log(0.8) - np.log(0.6)) / 8

truncation = functools.partial(loss_truncation.loss, drop_fraction=0.5, warmup_steps=10)


def _at(step, batch=BATCH):
    return dict(batch, step=jnp.asarray(step, jnp.int32))


def test_hand_worked_truncated_loss():
    np.testing.assert_allclose(MLE, 0.5792, atol=1e-4)
    np.testing.assert_allclose(TRUNCATED, 0.2362, atol=1e-4)
    losses, tokens = loss_truncation.example_losses(
        -mle.token_log_likelihood(LOGITS, TARGETS), BATCH["mask"])
    np.testing.assert_allclose(losses, ROW_LOSS, rtol=1e-5)
    np.testing.assert_array_equal(tokens, [2, 1, 3, 2, 0])
    value, metrics = truncation((), LOGITS, _at(10))
    np.testing.assert_allclose(value, TRUNCATED, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], TRUNCATED, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], MLE, rtol=1e-5)
    np.testing.assert_allclose(metrics["kept_fraction"], 0.5)
    assert metrics["tokens"] == 8.0
    # Class 0 is the argmax wherever p >= 0.5 (a tie goes to the first class): every masked
    # token but row 1's (p = 0.2), 7 of 8.
    np.testing.assert_allclose(metrics["accuracy"], 7 / 8)


def test_equals_mle_during_warmup_and_in_evaluation():
    mle_value, mle_metrics = mle.loss((), LOGITS, BATCH)
    for batch in (BATCH, _at(0), _at(9)):
        value, metrics = truncation((), LOGITS, batch)
        np.testing.assert_array_equal(value, mle_value)
        np.testing.assert_array_equal(metrics["nll"], mle_value)
        np.testing.assert_array_equal(metrics["accuracy"], mle_metrics["accuracy"])
        np.testing.assert_allclose(metrics["kept_fraction"], 1.0)
    no_warmup = functools.partial(loss_truncation.loss, drop_fraction=0.5, warmup_steps=0)
    np.testing.assert_allclose(no_warmup((), LOGITS, _at(0))[0], TRUNCATED, rtol=1e-5)


def test_dropped_rows_get_zero_gradient_and_kept_rows_the_mle_gradient():
    grad = jax.grad(lambda x: truncation((), x, _at(50))[0])(LOGITS)  # [B, T, V]
    np.testing.assert_array_equal(grad[1], 0.0)
    np.testing.assert_array_equal(grad[2], 0.0)
    np.testing.assert_array_equal(grad[4], 0.0)
    # MLE on the kept rows only: d(-log softmax_0) / dlogits = softmax - onehot(0) = (p - 1,
    # 1 - p), over the 4 kept tokens.
    kept_only = dict(BATCH, mask=BATCH["mask"] * jnp.array([1.0, 0, 0, 1, 0])[:, None])
    expected = jax.grad(lambda x: mle.loss((), x, kept_only)[0])(LOGITS)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad[0, 0], [(0.9 - 1) / 4, (1 - 0.9) / 4], rtol=1e-5)
    np.testing.assert_allclose(grad[3, 1], [(0.6 - 1) / 4, (1 - 0.6) / 4], rtol=1e-5)
    np.testing.assert_array_equal(grad[0, 2], 0.0)  # unmasked token


def test_rows_without_tokens_never_count():
    # In BATCH row 4 is empty: n = 4 valid rows, not 5, so 2 are dropped and 2 of 4 kept.
    np.testing.assert_allclose(truncation((), LOGITS, _at(10))[1]["kept_fraction"], 0.5)
    # Only row 0 has tokens: n = 1, floor(0.5 * 1) = 0 dropped, so row 0 is kept although the
    # empty rows' mean NLL (0 by `example_losses`) is lower than its own.
    only_row_0 = dict(BATCH, mask=BATCH["mask"] * jnp.array([1.0, 0, 0, 0, 0])[:, None])
    value, metrics = truncation((), LOGITS, _at(10, only_row_0))
    np.testing.assert_allclose(value, -np.log(0.9), rtol=1e-5)
    np.testing.assert_allclose(metrics["kept_fraction"], 1.0)
    # An all-empty batch: a zero loss with a zero (finite) gradient.
    empty = dict(BATCH, mask=jnp.zeros_like(BATCH["mask"]))
    value, metrics = truncation((), LOGITS, _at(10, empty))
    assert value == 0.0 and metrics["tokens"] == 0.0 and metrics["kept_fraction"] == 1.0
    grad = jax.grad(lambda x: truncation((), x, _at(10, empty))[0])(LOGITS)
    np.testing.assert_array_equal(grad, 0.0)


def test_default_mask_is_the_non_pad_targets():
    # Without 'mask', PAD targets are the unmasked positions: the same batch as MASK.
    pad = jnp.where(BATCH["mask"] > 0, TARGETS, tokenizer.PAD)
    assert tokenizer.PAD != 0  # so that target 0 stays a real token
    logits = jnp.concatenate(
        [LOGITS, jnp.full(LOGITS.shape[:2] + (tokenizer.PAD - 1,), -1e9)], axis=-1)
    value, metrics = truncation((), logits, {"targets": pad, "step": jnp.int32(10)})
    np.testing.assert_allclose(value, TRUNCATED, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], MLE, rtol=1e-5)


def test_keep_lowest_counts_and_ties():
    # k = n - floor(drop * n), exact in float64 with a tolerance: 0.29 * 100 drops 29.
    np.testing.assert_array_equal(loss_truncation.kept_counts(0.5, 5), [0, 1, 1, 2, 2, 3])
    assert loss_truncation.kept_counts(0.29, 100)[100] == 71
    assert loss_truncation.kept_counts(0.0, 3).tolist() == [0, 1, 2, 3]
    # Equal losses: the lower indices are kept. drop 0.34 of 3 valid rows drops 1.
    keep = loss_truncation.keep_lowest(jnp.array([1.0, 1.0, 1.0, 0.0]),
                                       jnp.array([True, True, True, False]), 0.34)
    np.testing.assert_array_equal(keep, [True, True, False, False])
    keep = loss_truncation.keep_lowest(jnp.array([3.0, 1.0, 2.0, 1.0, 5.0]),
                                       jnp.array([True, True, True, True, False]), 0.5)
    np.testing.assert_array_equal(keep, [False, True, False, True, False])


def test_under_jit_with_a_traced_step():
    jitted = jax.jit(truncation)
    for step, expected in [(3, MLE), (10, TRUNCATED), (1000, TRUNCATED)]:
        value, metrics = jitted((), LOGITS, _at(step))
        np.testing.assert_allclose(value, expected, rtol=1e-5)
        assert set(metrics) == {"loss", "nll", "accuracy", "tokens", "kept_fraction"}
    np.testing.assert_allclose(jitted((), LOGITS, BATCH)[0], MLE, rtol=1e-5)


def test_no_drop_is_mle():
    keep_all = functools.partial(loss_truncation.loss, drop_fraction=0.0, warmup_steps=0)
    value, metrics = keep_all((), LOGITS, _at(5))
    np.testing.assert_allclose(value, MLE, rtol=1e-6)
    np.testing.assert_allclose(metrics["kept_fraction"], 1.0)
    grad = jax.grad(lambda x: keep_all((), x, _at(5))[0])(LOGITS)
    expected = jax.grad(lambda x: mle.loss((), x, BATCH)[0])(LOGITS)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("drop_fraction, warmup_steps, match", [
    (-0.1, 0, "drop_fraction"), (1.0, 0, "drop_fraction"), (0.3, -1, "warmup_steps"),
    (0.3, 1.5, "warmup_steps"),
])
def test_bad_settings(drop_fraction, warmup_steps, match):
    with pytest.raises(ValueError, match=match):
        loss_truncation.loss((), LOGITS, BATCH, drop_fraction=drop_fraction,
                             warmup_steps=warmup_steps)
