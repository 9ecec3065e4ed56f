"""Preference data from a policy's own samples, labelled by the simulated labeler.

RLHF starts from comparisons of the policy's completions (Ouyang et al. 2022, "Training language
models to follow instructions with human feedback", section 3.5; Stiennon et al. 2020): the SFT
policy answers each prompt several times, and a labeler prefers one answer of a pair. Here the
labeler is the Bradley-Terry model of `learned_loss.data.preference_pairs`:

  P(a preferred to b) = sigmoid((g(a) - g(b) + lambda * (len(a) - len(b)) / L) / tau)

and each pair is drawn from an example's candidates: its gold answer, one corruption of each kind
and the policy's samples (`preference_pairs` documents the order and deduplication).

A sample is the bytes the policy generated before EOS, at the given temperature and top-k, cut
to the room the sequence length leaves for an answer (1 + prompt + 1 + answer + 1 <= seq_len + 1),
so that every candidate fits the reward model's input.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from learned_loss.core import evaluation
from learned_loss.core import model as model_lib
from learned_loss.data import preference_pairs, tasks


def answer_room(example: tasks.Example, seq_len: int) -> int:
    """Bytes an answer to `example` may have: seq_len + 1 - (BOS, prompt, SEP, EOS)."""
    return seq_len + 1 - 3 - len(example.prompt.encode("utf-8"))


def fit_answer(text: str, room: int) -> str:
    """`text` cut to at most `room` UTF-8 bytes, never splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= room:
        return text
    return encoded[:max(room, 0)].decode("utf-8", errors="ignore")


def sample_completions(model: model_lib.Model, params: Any, examples: Sequence[tasks.Example], *,
                       samples_per_prompt: int, temperature: float, top_k: int,
                       max_new_tokens: int, batch_size: int, seq_len: int,
                       rng: jax.Array) -> dict[str, list[str]]:
    """prompt text -> `samples_per_prompt` completions of the policy, each cut to fit seq_len.

    The examples are repeated `samples_per_prompt` times (sample s of every prompt, then s + 1)
    and generated in fixed-shape batches, so the result depends only on the arguments.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    unique = list({e.prompt: e for e in examples}.values())
    repeated = unique * samples_per_prompt
    answers = evaluation.generate_answers(model, params, repeated, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, rng=rng,
                                          temperature=temperature, top_k=top_k)
    out: dict[str, list[str]] = collections.defaultdict(list)
    for example, answer in zip(repeated, answers):
        out[example.prompt].append(fit_answer(answer["text"], answer_room(example, seq_len)))
    return dict(out)


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a split of labelled pairs holds: pair counts per source, how often the labeler agreed
    with the gold order (among pairs whose gold scores differ), the mean gold score of chosen and
    rejected completions, and their mean lengths in bytes."""
    sources = collections.Counter()
    for r in records:
        sources[r["source_chosen"]] += 1
        sources[r["source_rejected"]] += 1
    ordered = [r for r in records if r["g_chosen"] != r["g_rejected"]]
    agree = [r["g_chosen"] > r["g_rejected"] for r in ordered]

    def mean(values) -> float:
        values = list(values)
        return float(np.mean(values)) if values else float("nan")

    return {
        "pairs": len(records),
        "completions_by_source": dict(sorted(sources.items())),
        "pairs_with_policy": sum("policy" in (r["source_chosen"], r["source_rejected"])
                                 for r in records),
        "gold_order_agreement": mean(agree),
        "gold_ordered_pairs": len(ordered),
        "g_chosen": mean(r["g_chosen"] for r in records),
        "g_rejected": mean(r["g_rejected"] for r in records),
        "length_chosen": mean(preference_pairs.completion_length(r["chosen"]) for r in records),
        "length_rejected": mean(preference_pairs.completion_length(r["rejected"])
                                for r in records),
    }
