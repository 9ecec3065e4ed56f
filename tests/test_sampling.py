"""Generation with a KV cache: against a full-forward reference, EOS stopping, sampling, scoring,
sharding and the compile cache. Random (perturbed) nano params make the outputs non-trivial."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import models
from learned_loss.core import sampling, sharding
from learned_loss.core import model as model_lib
from learned_loss.data import tokenizer

PAD = tokenizer.PAD
N = 10  # max_new_tokens.
NO_EOS = -1  # An eos_id no token equals: rows run the full N steps.
# The settings the tests share, so that each compiles once.
GREEDY = dict(max_new_tokens=N, eos_id=NO_EOS)
HOT = dict(GREEDY, temperature=2.0)  # Hot enough to leave the top 5 without top_k.


@pytest.fixture(scope="module")
def setup():
    cfg = model_lib.ModelConfig.from_config(models.model_config("nano", max_len=64))
    model = model_lib.build(cfg)
    # Random params drawn in numpy (no init compile on a busy CPU). Weights far larger than the
    # init scale: with the init scale, greedy decoding repeats one token.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(0)
    params = {module: {name: ((name == "scale") + 0.3 * rng.standard_normal(x.shape))
                       .astype(np.float32) for name, x in leaves.items()}
              for module, leaves in shapes.items()}
    rows = [[tokenizer.BOS, 60, 61, 62, 63], [tokenizer.BOS, 70], list(range(80, 88)),
            [tokenizer.BOS]]
    prompts, lengths = sampling.pad_prompts(rows)  # [4, 8], lengths 5, 2, 8, 1
    return model, jax.device_put(params), prompts, lengths


@pytest.fixture(scope="module")
def full_apply(setup):
    """A full forward pass over [B, P + N], compiled once for the references below."""
    return jax.jit(setup[0].apply)


def _reference_greedy(full_apply, params, prompts, lengths, eos_id):
    """Greedy decoding by a full forward pass (no cache) over each row's tokens at every step.

    Rows sit in one [B, P + N] buffer, right-padded; causality (tests/test_model.py) makes the
    logits at a row's last token independent of the padding after it.
    """
    batch, width = prompts.shape
    buffer = np.full((batch, width + N), PAD, np.int32)
    buffer[:, :width] = prompts
    ends = np.array(lengths)  # Each row's current length.
    tokens = np.full((batch, N), PAD, np.int32)
    done = np.zeros(batch, bool)
    for t in range(N):
        logits = np.asarray(full_apply(params, buffer).logits)  # [B, P + N, V]
        for b in np.flatnonzero(~done):
            tokens[b, t] = buffer[b, ends[b]] = np.argmax(logits[b, ends[b] - 1])
            ends[b] += 1
            done[b] = tokens[b, t] == eos_id
    return tokens


def _completion_logits(full_apply, params, prompts, lengths, completions):
    """[B, N, V]: the logits each completion token was drawn from, by one full forward pass."""
    batch, width = prompts.shape
    sequence = np.full((batch, width + N), PAD, np.int32)
    for b, length in enumerate(lengths):
        sequence[b, :length] = prompts[b, :length]
        sequence[b, length:length + N] = completions[b]
    logits = np.asarray(full_apply(params, sequence).logits)  # [B, P + N, V]
    return np.stack([logits[b, length - 1:length - 1 + N] for b, length in enumerate(lengths)])


def test_pad_prompts():
    prompts, lengths = sampling.pad_prompts([np.array([1, 2, 3]), [4]], pad_to=5)
    np.testing.assert_array_equal(prompts, [[1, 2, 3, PAD, PAD], [4, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert prompts.dtype == lengths.dtype == np.int32
    with pytest.raises(ValueError, match="more than pad_to"):
        sampling.pad_prompts([[1, 2, 3]], pad_to=2)
    with pytest.raises(ValueError, match="empty"):
        sampling.pad_prompts([[1], []])


def test_greedy_cache_matches_full_forward_recompute(setup, full_apply):
    model, params, prompts, lengths = setup
    out = sampling.generate(model, params, prompts, lengths, None, **GREEDY)
    expected = _reference_greedy(full_apply, params, prompts, lengths, NO_EOS)
    np.testing.assert_array_equal(out.tokens, expected)
    assert out.tokens.shape == (4, N) and out.tokens.dtype == jnp.int32
    assert out.log_probs.shape == (4, N) and out.log_probs.dtype == jnp.float32
    np.testing.assert_array_equal(out.lengths, [N] * 4)
    assert not out.finished.any()
    assert len({tuple(row) for row in expected}) == 4  # Rows differ ...
    assert len(np.unique(expected)) >= 8  # ... and do not all repeat one token.


def _first_new_token_at_3_or_later(row):
    """(step, token): a token that `row` produces first at `step` >= 3."""
    step = next(t for t in range(3, N - 1) if row[t] not in row[:t])
    return step, int(row[step])


def test_eos_stops_rows_and_pads_after(setup, full_apply):
    model, params, prompts, lengths = setup
    full = sampling.generate(model, params, prompts, lengths, None, **GREEDY)
    full_tokens = np.asarray(full.tokens)
    # Declare as EOS a token that row 0 produces first at step >= 3.
    step, eos = _first_new_token_at_3_or_later(full_tokens[0])
    out = sampling.generate(model, params, prompts, lengths, None, max_new_tokens=N, eos_id=eos)

    np.testing.assert_array_equal(
        out.tokens, _reference_greedy(full_apply, params, prompts, lengths, eos))
    for b in range(4):
        hits = np.flatnonzero(full_tokens[b] == eos)
        length = hits[0] + 1 if hits.size else N
        assert out.lengths[b] == length
        assert out.finished[b] == bool(hits.size)
        np.testing.assert_array_equal(out.tokens[b, :length], full_tokens[b, :length])
        assert (out.tokens[b, length:] == PAD).all()
        np.testing.assert_allclose(out.log_probs[b, :length], full.log_probs[b, :length],
                                   atol=1e-6)
        assert (out.log_probs[b, length:] == 0).all()
    assert out.lengths[0] == step + 1 and out.finished[0]
    assert not out.finished.all()  # Some row ran on after row 0 stopped.


def test_loop_exits_when_every_row_has_finished(setup):
    model, params, prompts, lengths = setup
    full = sampling.generate(model, params, prompts, lengths, None, **GREEDY)
    step, eos = _first_new_token_at_3_or_later(np.asarray(full.tokens[0]))
    calls = []

    def counting_apply(*args):
        jax.debug.callback(lambda: calls.append(1))
        return model.apply(*args)

    counting = model._replace(apply=counting_apply)
    out = sampling.generate(counting, params, prompts[:1], lengths[:1], None, max_new_tokens=N,
                            eos_id=eos)
    jax.effects_barrier()
    assert out.finished[0] and out.lengths[0] == step + 1
    assert len(calls) == 1 + step  # The prefill, then one decode step per token after the first.


def test_sampling_keys_and_top_k(setup, full_apply):
    model, params, prompts, lengths = setup
    greedy = sampling.generate(model, params, prompts, lengths, None, **GREEDY)
    a = sampling.generate(model, params, prompts, lengths, jax.random.key(0), **HOT)
    again = sampling.generate(model, params, prompts, lengths, jax.random.key(0), **HOT)
    b = sampling.generate(model, params, prompts, lengths, jax.random.key(1), **HOT)
    np.testing.assert_array_equal(a.tokens, again.tokens)
    np.testing.assert_array_equal(a.log_probs, again.log_probs)
    assert (np.asarray(a.tokens) != np.asarray(b.tokens)).mean() > 0.5

    top1 = sampling.generate(model, params, prompts, lengths, jax.random.key(0), top_k=1, **HOT)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    np.testing.assert_allclose(top1.log_probs, greedy.log_probs, atol=1e-6)

    def ranks(tokens):  # How many logits beat each sampled token at its step: [B, N].
        tokens = np.asarray(tokens)
        logits = _completion_logits(full_apply, params, prompts, lengths, tokens)
        return (logits > np.take_along_axis(logits, tokens[..., None], axis=-1)).sum(-1)

    top5 = sampling.generate(model, params, prompts, lengths, jax.random.key(0), top_k=5, **HOT)
    assert ranks(top5.tokens).max() < 5
    assert ranks(a.tokens).max() >= 5  # Without top_k the same temperature leaves the top 5.


def test_log_probs_are_the_models_own_and_match_sequence_log_probs(setup, full_apply):
    model, params, prompts, lengths = setup
    greedy = sampling.generate(model, params, prompts, lengths, None, **GREEDY)
    hot = sampling.generate(model, params, prompts, lengths, jax.random.key(0), **HOT)
    top5 = sampling.generate(model, params, prompts, lengths, jax.random.key(3), top_k=5, **HOT)
    # log_softmax of the raw logits (temperature 1, no top-k), from a full forward pass.
    tokens = np.asarray(top5.tokens)
    logits = _completion_logits(full_apply, params, prompts, lengths, tokens)
    expected = np.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)
    np.testing.assert_allclose(top5.log_probs, expected[..., 0], atol=1e-5)
    for out in (greedy, hot, top5):
        scored = sampling.sequence_log_probs(model, params, prompts, lengths, out.tokens,
                                             out.lengths)
        assert scored.shape == (4, N) and scored.dtype == jnp.float32
        np.testing.assert_allclose(scored, out.log_probs, atol=1e-5)
    # Completions shorter than N (as after an EOS): zeros beyond each length.
    cut = np.array([N, 3, 0, 7])
    scored = sampling.sequence_log_probs(model, params, prompts, lengths, top5.tokens, cut)
    mask = np.arange(N)[None] < cut[:, None]
    np.testing.assert_allclose(scored, np.where(mask, top5.log_probs, 0.0), atol=1e-5)
    assert (np.asarray(scored)[~mask] == 0).all()


def test_sharded_matches_single_device(setup):
    model, params, prompts, lengths = setup
    mesh = sharding.make_mesh({"data": 2, "model": 4})
    specs = sharding.param_specs(params, models.PARTITION_RULES, mesh)
    sharded_params = jax.device_put(params, sharding.named(mesh, specs))
    assert sharded_params["transformer/layer_0/attn"]["qkv"].sharding.spec[2] == "model"
    rows = NamedSharding(mesh, P("data"))
    sharded_prompts = jax.device_put(prompts, rows)
    sharded_lengths = jax.device_put(lengths, rows)
    for rng, kwargs in ((None, GREEDY), (jax.random.key(0), dict(HOT, top_k=5))):
        one = sampling.generate(model, params, prompts, lengths, rng, **kwargs)
        many = sampling.generate(model, sharded_params, sharded_prompts, sharded_lengths, rng,
                                 **kwargs)
        assert len(many.tokens.sharding.device_set) == 8
        np.testing.assert_array_equal(many.tokens, one.tokens)
        np.testing.assert_array_equal(many.lengths, one.lengths)
        np.testing.assert_array_equal(many.finished, one.finished)
        np.testing.assert_allclose(many.log_probs, one.log_probs, atol=1e-5)
    scored = sampling.sequence_log_probs(model, sharded_params, sharded_prompts, sharded_lengths,
                                         many.tokens, many.lengths)
    np.testing.assert_allclose(scored, one.log_probs, atol=1e-5)


def test_same_shapes_do_not_recompile(setup):
    model, params, prompts, lengths = setup
    out = sampling.generate(model, params, prompts, lengths, jax.random.key(0), **HOT)
    sampling.sequence_log_probs(model, params, prompts, lengths, out.tokens, out.lengths)
    compiled = sampling.generate._cache_size(), sampling.sequence_log_probs._cache_size()
    # New values of the same shapes: new prompts, lengths and key.
    other = (prompts + 1) % 256
    out = sampling.generate(model, params, other, lengths[::-1].copy(), jax.random.key(1), **HOT)
    sampling.sequence_log_probs(model, params, other, lengths, out.tokens, out.lengths)
    assert (sampling.generate._cache_size(), sampling.sequence_log_probs._cache_size()) == compiled


def test_bad_arguments_are_named(setup):
    model, params, prompts, lengths = setup
    with pytest.raises(ValueError, match="needs an rng key"):
        sampling.generate(model, params, prompts, lengths, None, max_new_tokens=2,
                          temperature=1.0)
    with pytest.raises(ValueError, match="top_k"):
        sampling.generate(model, params, prompts, lengths, jax.random.key(0), max_new_tokens=2,
                          temperature=1.0, top_k=1000)
