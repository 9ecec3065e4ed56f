"""Batched generation with a KV cache (greedy, temperature, top-k), and sequence scoring.

Shapes:
  B: batch, P: padded prompt length, N: max_new_tokens, C: completion length,
  T: P + C (scored sequences), S: cache capacity (P + N - 1), V: vocabulary.

How prompts of different lengths share one batch (and one cache):
  1. Prompts arrive right-padded, [B, P] plus their lengths [B]. The whole padded block is
     prefilled into an empty cache from position 0, so slot j of row b holds the key/value of
     prompts[b, j], a pad for j >= prompt_lengths[b].
  2. The first new token of row b is sampled from the logits at position prompt_lengths[b] - 1,
     and the cache's per-row write position is reset to prompt_lengths[b].
  3. Decode step t >= 1 feeds new token t - 1 of row b at position prompt_lengths[b] + t - 1,
     overwriting the pad (or empty slot) there. The causal mask lets a query at position q see
     slots k <= q only, and each of those already holds a real token, so no pad is ever attended
     to. The tests check this against a full forward pass recomputed at every step.

Log-probabilities: `Generation.log_probs` and `sequence_log_probs` are both log p(token | prefix)
= log_softmax(raw logits)[token], i.e. the model's own distribution at temperature 1 without top-k
truncation, whatever temperature and top_k were used to sample. That is the policy's likelihood
that KL(policy || reference) estimates and policy gradients need. (trl's PPOTrainer instead
divides the logits by the sampling temperature before its log_softmax; divide the logits yourself
if you want that convention.)

  >>> prompts, lengths = pad_prompts([tokenizer.encode("ab", bos=True), [tokenizer.BOS]])
  >>> out = generate(model, params, prompts, lengths, jax.random.key(0), max_new_tokens=16,
  ...                temperature=0.7, top_k=40)
  >>> [tokenizer.decode(row) for row in out.tokens]
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.core import model as model_lib
from learned_loss.data import tokenizer


class Generation(NamedTuple):
    tokens: jax.Array  # [B, N] int32: new tokens; the EOS included, pad_id after it.
    lengths: jax.Array  # [B] int32: new tokens up to and including the EOS (N if none).
    finished: jax.Array  # [B] bool: the row produced an EOS.
    log_probs: jax.Array  # [B, N] float32: log_softmax(raw logits)[token]; 0 after the end.


def pad_prompts(prompts: Sequence[Any], pad_to: int | None = None,
                pad_id: int = tokenizer.PAD) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads 1-D token sequences into a block.

    Args:
      prompts: B sequences of token ids (lists, numpy or jax arrays), each of length >= 1 (start
        an otherwise empty prompt with BOS: the first new token is predicted from the last
        prompt token).
      pad_to: the padded length P; default the longest prompt.
      pad_id: the filler token.
    Returns:
      (prompts [B, P] int32, lengths [B] int32), numpy arrays.
    """
    rows = [np.asarray(p, dtype=np.int32).reshape(-1) for p in prompts]
    if not rows:
        raise ValueError("pad_prompts needs at least one prompt")
    lengths = np.array([len(r) for r in rows], dtype=np.int32)  # [B]
    if lengths.min() == 0:
        raise ValueError(f"prompt {int(np.argmin(lengths))} is empty; start it with BOS")
    width = int(lengths.max()) if pad_to is None else int(pad_to)
    if lengths.max() > width:
        raise ValueError(f"a prompt has {int(lengths.max())} tokens, more than pad_to={width}")
    block = np.full((len(rows), width), pad_id, dtype=np.int32)  # [B, P]
    for b, row in enumerate(rows):
        block[b, :len(row)] = row
    return block, lengths


def _check_prompts(prompts, prompt_lengths):
    if prompts.ndim != 2 or prompt_lengths.shape != prompts.shape[:1]:
        raise ValueError(f"prompts must be [B, P] and prompt_lengths [B]; got "
                         f"{prompts.shape} and {prompt_lengths.shape}")


def _sample(logits, key, temperature: float, top_k: int):
    """One token per row from logits [B, V]: argmax when temperature == 0, else
    softmax(logits / temperature) restricted to the top_k largest logits (all when top_k == 0)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]
    scaled = logits / temperature  # [B, V]
    if top_k:
        # Sample among exactly k candidates (a threshold at the k-th value would admit ties).
        values, indices = jax.lax.top_k(scaled, top_k)  # [B, k], [B, k]
        choice = jax.random.categorical(key, values, axis=-1)  # [B]
        return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)  # [B]


def _token_log_prob(logits, token):
    """log_softmax(logits [B, V])[token [B]] -> [B] float32."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_p, token[:, None], axis=-1)[:, 0]


def _generate(model: model_lib.Model, params, prompts, prompt_lengths, rng=None, *,
              max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
              eos_id: int = tokenizer.EOS, pad_id: int = tokenizer.PAD) -> Generation:
    """Samples up to `max_new_tokens` new tokens after each prompt, stopping each row at EOS.

    Args:
      model: from `model.build` (static: its config and functions key the compile cache, so
        build it once and reuse it; a rebuilt Model compiles again).
      params: the model's params, on one device or placed with NamedShardings.
      prompts: [B, P] int, right-padded (see `pad_prompts`); may be sharded over the batch.
      prompt_lengths: [B] int, each in [1, P].
      rng: a PRNG key; unused (and may be None) when temperature == 0. Step t draws with
        fold_in(rng, t), one draw for the whole batch, so a row's sample depends on the batch.
      max_new_tokens: N, static.
      temperature: 0 for greedy (argmax); > 0 samples softmax(logits / temperature). Static.
      top_k: > 0 restricts sampling to the k largest logits; 0 keeps all. Static.
      eos_id: the token that ends a row (included in its output); a traced value, so changing
        it does not recompile (an id outside the vocabulary, e.g. -1, never stops a row).
      pad_id: the filler after a row's end (traced too).
    Returns:
      A Generation. The loop stops early once every row has produced EOS.
    """
    cfg = model.config
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    _check_prompts(prompts, prompt_lengths)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy)")
    if not 0 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k={top_k} must lie in [0, vocab_size={cfg.vocab_size}]")
    if temperature > 0 and rng is None:
        raise ValueError("sampling with temperature > 0 needs an rng key")
    batch, width = prompts.shape
    # The last new token is never fed back, so the cache needs P + N - 1 slots.
    capacity = width + max_new_tokens - 1
    if cfg.positions == "learned" and capacity > cfg.max_len:
        raise ValueError(f"prompt length {width} + max_new_tokens {max_new_tokens} - 1 exceeds "
                         f"the learned position table (model.max_len={cfg.max_len})")
    if rng is None:
        rng = jax.random.key(0)  # Greedy: never drawn from.

    # Prefill the padded block, read each row's logits at its last prompt token.
    cache = model_lib.init_cache(cfg, batch, capacity)
    out = model.apply(params, prompts, cache)
    last = jnp.clip(prompt_lengths - 1, 0, width - 1)  # [B]
    logits = jnp.take_along_axis(out.logits, last[:, None, None], axis=1)[:, 0]  # [B, V]
    cache = out.cache._replace(pos=prompt_lengths)

    def record(t, logits, tokens, log_probs, lengths, finished):
        """Samples step t from logits [B, V] and writes it for the rows still running."""
        token = _sample(logits, jax.random.fold_in(rng, t), temperature, top_k)  # [B]
        running = ~finished
        tokens = tokens.at[:, t].set(jnp.where(running, token, pad_id))
        log_probs = log_probs.at[:, t].set(jnp.where(running, _token_log_prob(logits, token), 0.0))
        lengths = lengths + running.astype(jnp.int32)
        finished = finished | (token == eos_id)
        return token, tokens, log_probs, lengths, finished

    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)  # [B, N]
    log_probs = jnp.zeros((batch, max_new_tokens), jnp.float32)  # [B, N]
    lengths = jnp.zeros((batch,), jnp.int32)
    finished = jnp.zeros((batch,), bool)
    token, tokens, log_probs, lengths, finished = record(
        0, logits, tokens, log_probs, lengths, finished)

    def cond(carry):
        t, _, _, _, _, _, finished = carry
        return (t < max_new_tokens) & ~jnp.all(finished)

    def body(carry):
        t, token, cache, tokens, log_probs, lengths, finished = carry
        # Finished rows keep decoding (their outputs are masked): the batch moves in lockstep.
        out = model.apply(params, token[:, None], cache)
        token, tokens, log_probs, lengths, finished = record(
            t, out.logits[:, 0], tokens, log_probs, lengths, finished)
        return t + 1, token, out.cache, tokens, log_probs, lengths, finished

    carry = (jnp.int32(1), token, cache, tokens, log_probs, lengths, finished)
    _, _, _, tokens, log_probs, lengths, finished = jax.lax.while_loop(cond, body, carry)
    return Generation(tokens=tokens, lengths=lengths, finished=finished, log_probs=log_probs)


# One compiled program per (model, static settings, input shapes and shardings, rng None or a
# key); later calls with the same ones reuse it (`generate._cache_size()` counts the programs).
generate = jax.jit(_generate, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))


def join(prompts, prompt_lengths, completions, completion_lengths, *,
         pad_id: int = tokenizer.PAD) -> tuple[jax.Array, jax.Array]:
    """Lays each row's prompt and completion end to end: [prompt[:Lp], completion[:Lc], pad...].

    Args:
      prompts: [B, P] int right-padded; prompt_lengths: [B] int in [1, P].
      completions: [B, C] int; completion_lengths: [B] int in [0, C].
    Returns:
      (sequences [B, T] int32 with T = P + C, positions [B, C] int32): completion token i of row
      b sits at Lp + i and is predicted by the logits at positions[b, i] = Lp + i - 1.
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    completions = jnp.asarray(completions, jnp.int32)
    completion_lengths = jnp.asarray(completion_lengths, jnp.int32)
    _check_prompts(prompts, prompt_lengths)
    width, num_new = prompts.shape[1], completions.shape[1]
    # Sequence position j reads prompt[j] while j < Lp, then completion[j - Lp] (column
    # P + j - Lp of the concatenation), then pad.
    joined = jnp.concatenate([prompts, completions], axis=1)  # [B, T]
    j = jnp.arange(width + num_new)[None, :]  # [1, T]
    lp = prompt_lengths[:, None]  # [B, 1]
    source = jnp.where(j < lp, j, width + j - lp)  # [B, T]
    sequence = jnp.take_along_axis(joined, jnp.clip(source, 0, width + num_new - 1), axis=1)
    sequence = jnp.where(j < lp + completion_lengths[:, None], sequence, pad_id)  # [B, T]
    positions = jnp.clip(lp - 1 + jnp.arange(num_new)[None, :], 0, width + num_new - 1)
    return sequence, positions.astype(jnp.int32)


def completion_log_probs(logits: jax.Array, positions: jax.Array, completions: jax.Array,
                         completion_lengths: jax.Array) -> jax.Array:
    """log_softmax(logits)[token] of each completion token, 0 at and beyond its length.

    logits: [B, T, V] over a `join`ed sequence; positions: [B, C] from `join`;
    completions: [B, C] int; completion_lengths: [B] int. Returns [B, C] float32.
    """
    picked_logits = jnp.take_along_axis(logits, positions[:, :, None], axis=1)  # [B, C, V]
    log_p = jax.nn.log_softmax(picked_logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, completions[:, :, None], axis=-1)[:, :, 0]  # [B, C]
    i = jnp.arange(completions.shape[1])[None, :]
    return jnp.where(i < completion_lengths[:, None], picked, 0.0)


def _sequence_log_probs(model: model_lib.Model, params, prompts, prompt_lengths, completions,
                        completion_lengths, *, pad_id: int = tokenizer.PAD):
    """Per-token log p(completion token | prompt, earlier completion tokens), one forward pass.

    Each row's prompt and completion are laid end to end (`join`) and scored without a cache,
    so this checks (and is independent of) the decode path.

    Args:
      model, params: as for `generate` (model static); e.g. a reference model for a KL estimate.
      prompts: [B, P] int right-padded; prompt_lengths: [B] int in [1, P].
      completions: [B, C] int (e.g. `Generation.tokens`); completion_lengths: [B] int in [0, C].
    Returns:
      [B, C] float32: log_softmax(raw logits)[token] (temperature 1, no top-k), 0 at and beyond
      completion_lengths.
    """
    sequence, positions = join(prompts, prompt_lengths, completions, completion_lengths,
                               pad_id=pad_id)
    logits = model.apply(params, sequence).logits  # [B, T, V]
    return completion_log_probs(logits, positions, jnp.asarray(completions, jnp.int32),
                                jnp.asarray(completion_lengths, jnp.int32))


sequence_log_probs = jax.jit(_sequence_log_probs, static_argnames=("model",))
