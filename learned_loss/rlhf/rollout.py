"""Experience for RL fine-tuning: sample completions from a policy, and score them.

A rollout is what the RL objectives (`learned_loss.objectives.ppo`, `rloo`, `grpo`) consume:
the policy's sampled completions laid after their prompts, the policy's and the reference
policy's per-token log-probabilities, and the reward model's score read at each completion's
last token (its EOS: Ouyang et al. 2022, Stiennon et al. 2020).

Shapes:
  B: rows (prompts x samples per prompt), P: padded prompt length, C: max new tokens,
  T = P + C: joined sequence length.

All functions here are pure and traceable, so an RL step jits end to end: sampling (a
`lax.while_loop` with a KV cache), scoring and the updates run as one program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from learned_loss.core import sampling
from learned_loss.core import model as model_lib


class Rollout(NamedTuple):
    sequences: jax.Array  # [B, T] int32: prompt, completion (EOS included), PAD.
    positions: jax.Array  # [B, C] int32: the position whose logits predict completion token i.
    completions: jax.Array  # [B, C] int32: new tokens, PAD after the EOS.
    mask: jax.Array  # [B, C] float32: 1 on completion tokens (the EOS included).
    lengths: jax.Array  # [B] int32: completion tokens, the EOS included.
    finished: jax.Array  # [B] bool: the completion ended with EOS.
    end: jax.Array  # [B] int32: position of the completion's last token (prompt end if empty).


def repeat_prompts(prompts: jax.Array, prompt_lengths: jax.Array,
                   samples: int) -> tuple[jax.Array, jax.Array]:
    """Each prompt `samples` times in a row: [B, P], [B] -> [B * samples, P], [B * samples].

    Rows of one prompt are contiguous, so per-prompt groups reshape to [B, samples]."""
    return jnp.repeat(prompts, samples, axis=0), jnp.repeat(prompt_lengths, samples, axis=0)


def sample(model: model_lib.Model, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
           rng: jax.Array, *, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0) -> Rollout:
    """Samples one completion per row and lays it after its prompt.

    prompts: [B, P] int right-padded; prompt_lengths: [B]; rng: a PRNG key. `max_new_tokens`,
    `temperature` and `top_k` are static.
    """
    gen = sampling._generate(model, params, prompts, prompt_lengths, rng,  # pylint: disable=protected-access
                             max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k)
    sequences, positions = sampling.join(prompts, prompt_lengths, gen.tokens, gen.lengths)
    i = jnp.arange(max_new_tokens)[None, :]
    mask = (i < gen.lengths[:, None]).astype(jnp.float32)  # [B, C]
    end = jnp.asarray(prompt_lengths, jnp.int32) + gen.lengths - 1  # [B]
    return Rollout(sequences=sequences, positions=positions, completions=gen.tokens, mask=mask,
                   lengths=gen.lengths, finished=gen.finished, end=end)


def log_probs(logits: jax.Array, rollout: Rollout) -> jax.Array:
    """[B, C] float32: log pi(completion token | prefix) from logits [B, T, V] of the sequences."""
    return sampling.completion_log_probs(logits, rollout.positions, rollout.completions,
                                         rollout.lengths)


def values(scalar: jax.Array, rollout: Rollout) -> jax.Array:
    """[B, C]: a value head's output [B, T] at the positions that predict each completion token
    (the state before the token, as in trl), 0 on padding."""
    picked = jnp.take_along_axis(scalar, rollout.positions, axis=1)  # [B, C]
    return picked * rollout.mask


def score(reward_model: model_lib.Model, reward_params: Any, rollout: Rollout) -> jax.Array:
    """[B]: the reward model's scalar read at each completion's last token (its EOS)."""
    scalar = reward_model.apply(reward_params, rollout.sequences).scalar  # [B, T]
    return jnp.take_along_axis(scalar, rollout.end[:, None], axis=1)[:, 0]


def policy_outputs(model: model_lib.Model, params: Any,
                   rollout: Rollout) -> tuple[jax.Array, jax.Array | None]:
    """(log-probs [B, C], values [B, C] or None when the model has no scalar head)."""
    out = model.apply(params, rollout.sequences)
    vals = None if out.scalar is None else values(out.scalar, rollout)
    return log_probs(out.logits, rollout), vals


def take(rollout: Rollout, index: jax.Array) -> Rollout:
    """The rows `index` [M] of every field."""
    return jax.tree.map(lambda x: jnp.take(x, index, axis=0), rollout)
