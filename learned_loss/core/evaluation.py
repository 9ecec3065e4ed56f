"""Gold evaluation of a policy on instruction tasks.

For each example the policy completes `[BOS] prompt [SEP]` greedily (the answer is what comes
before EOS), and the gold scorers of the task suite grade it: exact match and the graded score
(normalised edit similarity). Per family and overall (the mean over families, so every family
weighs the same) it reports exact match, graded score and mean completion length in tokens.

KL(policy || reference) is estimated on the same prompts from completions sampled at
temperature 1: KL = E_{y ~ pi}[log pi(y | x) - log pi_ref(y | x)], the sequence-level k1
estimator (Schulman 2020, "Approximating KL divergence"), unbiased, averaged over samples.

Shapes: B batch, P padded prompt length, N max new tokens.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np

from learned_loss.core import sampling
from learned_loss.core import model as model_lib
from learned_loss.data import tasks, tokenizer


def _batches(examples: Sequence[tasks.Example], batch_size: int):
    """Fixed-shape prompt batches: every batch [batch_size, P] with one P for all (one compile).

    The last batch is filled up by repeating its first prompt; `count` says how many rows count.
    """
    prompts = [tasks.prompt_tokens(e) for e in examples]
    pad_to = max(len(p) for p in prompts)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        count = len(chunk)
        chunk = chunk + [chunk[0]] * (batch_size - count)
        block, lengths = sampling.pad_prompts(chunk, pad_to=pad_to)
        yield block, lengths, count


def _completion_text(tokens: np.ndarray) -> str:
    """The answer text of one generated row: the bytes before the first EOS."""
    return tokenizer.decode(tokens)


def generate_answers(model: model_lib.Model, params: Any, examples: Sequence[tasks.Example], *,
                     batch_size: int, max_new_tokens: int, rng: Optional[jax.Array] = None,
                     temperature: float = 0.0, top_k: int = 0) -> list[dict[str, Any]]:
    """Completes every example's prompt. Returns, per example, the answer text, its token
    count before EOS, whether it ended, the summed log-probability and the raw tokens."""
    out = []
    for index, (block, lengths, count) in enumerate(_batches(examples, batch_size)):
        key = None if rng is None else jax.random.fold_in(rng, index)
        gen = jax.device_get(sampling.generate(
            model, params, block, lengths, key, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k))
        for row in range(count):
            ended = bool(gen.finished[row])
            length = int(gen.lengths[row])
            out.append({
                "text": _completion_text(gen.tokens[row]),
                "length": length - 1 if ended else length,  # Tokens before EOS.
                "finished": ended,
                "log_prob": float(gen.log_probs[row].sum()),
                "tokens": gen.tokens[row, :length],  # Including the EOS.
            })
    return out


def kl_to_reference(model: model_lib.Model, params: Any, reference_params: Any,
                    examples: Sequence[tasks.Example], *, batch_size: int, max_new_tokens: int,
                    rng: jax.Array) -> float:
    """Sequence-level k1 estimate of KL(policy || reference) on the examples' prompts."""
    samples = generate_answers(model, params, examples, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, rng=rng, temperature=1.0)
    estimates = []
    for (block, lengths, count), start in zip(_batches(examples, batch_size),
                                              range(0, len(examples), batch_size)):
        rows = samples[start:start + count] + [samples[start]] * (batch_size - count)
        completions, completion_lengths = sampling.pad_prompts(
            [r["tokens"] for r in rows], pad_to=max_new_tokens)
        ref = jax.device_get(sampling.sequence_log_probs(
            model, reference_params, block, lengths, completions, completion_lengths))
        for row in range(count):
            estimates.append(rows[row]["log_prob"] - float(ref[row].sum()))
    return float(np.mean(estimates))


def evaluate(model: model_lib.Model, params: Any, examples: Sequence[tasks.Example], *,
             batch_size: int, max_new_tokens: int, reference_params: Any = None,
             rng: Optional[jax.Array] = None) -> dict[str, Any]:
    """Per-family and overall gold metrics of greedy completions (plus KL when a reference
    is given). Returns {'overall': {...}, 'families': {name: {...}}, 'num_examples': n,
    'per_prompt': {'input_id': [...], 'family': [...], 'exact_match': [...]}} (in the order of
    `examples`: what a reader bootstraps over prompts with)."""
    answers = generate_answers(model, params, examples, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    per_family: dict[str, dict[str, list[float]]] = {}
    per_prompt: dict[str, list] = {"input_id": [], "family": [], "exact_match": []}
    for example, answer in zip(examples, answers):
        scores = tasks.score(answer["text"], example.answer)
        per_prompt["input_id"].append(example.input_id)
        per_prompt["family"].append(example.family)
        per_prompt["exact_match"].append(int(scores["exact_match"]))
        row = per_family.setdefault(example.family, {"exact_match": [], "graded": [],
                                                     "length": []})
        row["exact_match"].append(scores["exact_match"])
        row["graded"].append(scores["graded"])
        row["length"].append(answer["length"])
    families = {name: {k: float(np.mean(v)) for k, v in row.items()} | {"count": len(row["length"])}
                for name, row in sorted(per_family.items())}
    overall = {k: float(np.mean([f[k] for f in families.values()]))
               for k in ("exact_match", "graded", "length")}
    if reference_params is not None:
        overall["kl_to_reference"] = kl_to_reference(
            model, params, reference_params, examples, batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            rng=jax.random.key(0) if rng is None else rng)
    return {"overall": overall, "families": families, "num_examples": len(examples),
            "per_prompt": per_prompt}


def sample_examples(families: Sequence[str], *, per_family: int,
                    difficulty: int | Sequence[int], seed: int,
                    split: str = "test") -> list[tasks.Example]:
    """A fixed, seeded set of evaluation examples: `per_family` distinct inputs of `split`
    (the test inputs by default: no training split of any dataset holds them) from each
    family. TaskError when a family has fewer such inputs at `difficulty`."""
    out = []
    for index, name in enumerate(families):
        rng = np.random.default_rng([seed, index, 7919])
        out.extend(tasks.partition.draw_distinct(name, rng, difficulty, split, per_family))
    return out
