"""The Transformer: shapes, causality, KV-cache decoding, size and FLOP formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import models
from learned_loss.core import model as model_lib


def _cfg(**overrides):
    base = dict(models.model_config("nano", max_len=32))
    base.update(overrides)
    return model_lib.ModelConfig.from_config(base)


def _setup(cfg, batch=2, length=12, seed=0):
    model = model_lib.build(cfg)
    tokens = jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)
    params = jax.jit(model.init)(jax.random.key(1), tokens)
    # Perturb the zero-initialised pieces so every path is exercised.
    params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(2), x.shape),
                          params)
    return model, params, tokens


VARIANTS = [
    dict(),
    dict(norm="rmsnorm"),
    dict(positions="learned", tie_embeddings=False),
    dict(scalar_head=True),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_shapes_and_causality(overrides):
    cfg = _cfg(**overrides)
    model, params, tokens = _setup(cfg)
    out = jax.jit(model.apply)(params, tokens)
    assert out.logits.shape == (2, 12, cfg.vocab_size)
    assert out.logits.dtype == jnp.float32
    assert (out.scalar is not None) == cfg.scalar_head
    # Changing a later token must not change earlier logits.
    changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % cfg.vocab_size)
    out2 = jax.jit(model.apply)(params, changed)
    np.testing.assert_allclose(out.logits[:, :8], out2.logits[:, :8], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out.logits[:, 8:], out2.logits[:, 8:])


@pytest.mark.parametrize("overrides", VARIANTS)
def test_kv_cache_decode_matches_full_forward(overrides):
    cfg = _cfg(**overrides)
    model, params, tokens = _setup(cfg, length=10)
    full = jax.jit(model.apply)(params, tokens)
    apply = jax.jit(model.apply)
    cache = model_lib.init_cache(cfg, batch_size=2, capacity=16)
    out = apply(params, tokens[:, :4], cache)  # Prefill 4 tokens.
    pieces = [out.logits]
    cache = out.cache
    for t in range(4, 10):  # Then one token at a time.
        out = apply(params, tokens[:, t:t + 1], cache)
        pieces.append(out.logits)
        cache = out.cache
    decoded = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(decoded, full.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.pos, [10, 10])
    if cfg.scalar_head:
        np.testing.assert_allclose(out.scalar[:, 0], full.scalar[:, -1], rtol=1e-5, atol=1e-5)


def test_kv_cache_rows_at_different_positions():
    """Rows of a batch may sit at different positions (prompts of different lengths)."""
    cfg = _cfg()
    model, params, tokens = _setup(cfg, length=8)
    apply = jax.jit(model.apply)
    # Row 0 has consumed 5 tokens, row 1 only 3: fill each row separately, then merge.
    c0 = apply(params, tokens[:1, :5], model_lib.init_cache(cfg, 1, 12)).cache
    c1 = apply(params, tokens[1:, :3], model_lib.init_cache(cfg, 1, 12)).cache
    cache = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), c0, c1)
    step = jnp.stack([tokens[0, 5:6], tokens[1, 3:4]])  # [2, 1]
    out = apply(params, step, cache)
    ref0 = apply(params, tokens[:1, :6]).logits[0, -1]
    ref1 = apply(params, tokens[1:, :4]).logits[0, -1]
    np.testing.assert_allclose(out.logits[0, 0], ref0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logits[1, 0], ref1, rtol=1e-5, atol=1e-5)


def test_param_count_matches_formula_and_variants():
    cfg = _cfg()
    model, params, _ = _setup(cfg)
    d, f, v, layers = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_layers
    per_layer = 4 * d * d + 2 * d * f + f + d + 4 * d  # qkv+out, mlp, biases, two norms
    assert model_lib.param_count(params) == layers * per_layer + v * d + 2 * d
    counts = {}
    for name in ("nano", "mini", "tiny", "small", "base"):
        mcfg = model_lib.ModelConfig.from_config(models.model_config(name, 64))
        shapes = jax.eval_shape(model_lib.build(mcfg).init, jax.random.key(0),
                                jnp.zeros((1, 4), jnp.int32))
        counts[name] = model_lib.param_count(shapes)
    assert 0.8e5 < counts["nano"] < 1.5e5
    assert 0.38e6 < counts["mini"] < 0.48e6
    assert 0.8e6 < counts["tiny"] < 1.3e6
    assert 8e6 < counts["small"] < 13e6
    assert 75e6 < counts["base"] < 95e6


def test_flops_per_token_hand_worked():
    cfg = model_lib.ModelConfig(vocab_size=10, d_model=4, num_layers=1, num_heads=2, d_ff=8,
                                max_len=16)
    # N = 4*3*2*2 (qkv) + 2*2*4 (out) + 2*4*8 (mlp) + 4*10 (unembed) = 48 + 16 + 64 + 40 = 168.
    assert model_lib.matmul_param_count(cfg) == 168
    # 6N + 12 * L * H * K * T = 1008 + 12 * 1 * 2 * 2 * 16 = 1008 + 768.
    assert model_lib.flops_per_token(cfg, seq_len=16) == 1776.0
    assert model_lib.flops_per_token(cfg, seq_len=16, training=False) == 592.0


def test_bad_model_configs_are_named():
    with pytest.raises(ValueError, match="not divisible by model.num_heads"):
        _cfg(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="model.norm"):
        _cfg(norm="batchnorm")
    with pytest.raises(ValueError, match="unknown model config keys"):
        model_lib.ModelConfig.from_config(dict(models.model_config("nano", 8), dmodel=3))
