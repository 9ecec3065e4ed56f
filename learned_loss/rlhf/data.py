"""Data for RLHF runs: encoded preference pairs, a resumable prompt stream, and gold scoring.

Layout of one scored sequence (W = seq_len + 1 tokens, the `tasks.encode_example` layout before
it is split into inputs and targets):

  [BOS] prompt [SEP] completion [EOS] PAD ...

A reward model reads its scalar at the EOS (index length - 1); a policy's log-probability of the
completion is the sum over the completion's tokens and its EOS (`rlhf.completion_log_prob`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from learned_loss.data import pipeline, preference_pairs, tasks, tokenizer
from learned_loss.objectives import kl


def encode_completion(prompt: str, completion: str, width: int) -> tuple[np.ndarray, int, int]:
    """([BOS] prompt [SEP] completion [EOS] padded to `width` [W] int32, its length, the prompt
    length P = len([BOS] prompt [SEP])). ValueError if it does not fit."""
    head = tasks.prompt_tokens(tasks.Example("", prompt, "", 1, 0))  # [P]
    body = tokenizer.encode(completion, eos=True)
    length = len(head) + len(body)
    if length > width:
        raise ValueError(f"prompt and completion need {length} tokens, more than {width}")
    tokens = np.full(width, tokenizer.PAD, np.int32)
    tokens[:len(head)] = head
    tokens[len(head):length] = body
    return tokens, length, len(head)


def encode_pair(record: Mapping[str, Any], seq_len: int) -> dict[str, np.ndarray]:
    """One stored preference pair, encoded: {'chosen', 'rejected': [W] int32 (W = seq_len + 1),
    'chosen_length', 'rejected_length', 'prompt_length': [] int32, 'gold_order': [] float32, the
    sign of g_chosen - g_rejected (the noiseless order: 0 when the gold scores tie)}."""
    record = preference_pairs.decode_record(record)
    row = {}
    for side in ("chosen", "rejected"):
        tokens, length, prompt_length = encode_completion(record["prompt"], record[side],
                                                          seq_len + 1)
        row[side] = tokens
        row[f"{side}_length"] = np.int32(length)
    row["prompt_length"] = np.int32(prompt_length)
    row["gold_order"] = np.float32(np.sign(record["g_chosen"] - record["g_rejected"]))
    return row


def encoded_pairs(source, seq_len: int) -> pipeline.EncodedSource:
    """Random access to the encoded pairs of one split (`encode_pair`, kept after first read)."""
    return pipeline.EncodedSource(source, lambda record: encode_pair(record, seq_len))


class PromptStream:
    """An endless, resumable stream of task prompts for on-policy RL.

    Global row r is an example of family `families[r % F]` whose input lies in `split` (RL
    prompts: 'train'; an evaluator's: 'validation'), drawn from a generator seeded by
    (seed, r), so a batch depends only on its position, whatever the process count: process p
    of n takes rows [p B / n, (p + 1) B / n) of each global batch of B. The state is the
    position and, with an adaptive KL controller, its coefficient (Ziegler et al. 2019), which
    each batch carries to the step as `kl_coef`.

    Batch (process-local, b = B / n rows): {'prompts': [b, P] int32 right-padded,
    'prompt_lengths': [b], 'index': [b] global row ids, 'kl_coef': [b] float32}.
    """

    def __init__(self, families: Sequence[str], *, difficulty: tuple[int, int], seed: int,
                 global_batch_size: int, width: int, kl_coef: float, kl_target: float = 0.0,
                 kl_horizon: float = 10_000.0, process_index: int = 0, process_count: int = 1,
                 split: str = "train"):
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} does not split over "
                             f"{process_count} processes")
        self.families = tuple(families)
        self.difficulty = difficulty
        self.split = tasks.partition.check_split(split)
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.width = width
        self.kl_coef = float(kl_coef)
        self.kl_target = float(kl_target)
        self.kl_horizon = float(kl_horizon)
        self._rows = global_batch_size // process_count
        self._first = process_index * self._rows
        self.position = 0

    def example(self, row: int) -> tasks.Example:
        rng = np.random.default_rng([self.seed, int(row), 104729])
        return tasks.partition.draw(self.families[int(row) % len(self.families)], rng,
                                    self.difficulty, self.split)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        start = self.position * self.global_batch_size + self._first
        index = np.arange(start, start + self._rows, dtype=np.int64)
        prompts = np.full((self._rows, self.width), tokenizer.PAD, np.int32)
        lengths = np.zeros(self._rows, np.int32)
        for b, row in enumerate(index):
            example = self.example(row)
            tokens = tasks.prompt_tokens(example)
            if len(tokens) > self.width:
                raise ValueError(f"a {example.family} prompt has {len(tokens)} tokens, more "
                                 f"than the {self.width} the sequence leaves after "
                                 f"max_new_tokens; raise preferences.seq_len or lower "
                                 f"rl.max_new_tokens")
            prompts[b, :len(tokens)] = tokens
            lengths[b] = len(tokens)
        self.position += 1
        return {"prompts": prompts, "prompt_lengths": lengths, "index": index,
                "kl_coef": np.full(self._rows, self.kl_coef, np.float32)}

    def observe_kl(self, kl_value: float, num_samples: int) -> None:
        """Adaptive KL control (Ziegler et al. 2019; trl's AdaptiveKLController): with a target,
        coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * num_samples / horizon."""
        if self.kl_target > 0:
            self.kl_coef = float(kl.adaptive_kl_update(self.kl_coef, kl_value, num_samples,
                                                       target=self.kl_target,
                                                       horizon=self.kl_horizon))

    def get_state(self) -> dict[str, Any]:
        return {"position": self.position, "kl_coef": self.kl_coef}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"position", "kl_coef"}:
            raise ValueError(f"not a prompt-stream state: {sorted(state)}")
        self.position = int(state["position"])
        self.kl_coef = float(state["kl_coef"])


def gold_scores(completions: np.ndarray, answers: Sequence[str]) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """(exact match [B], graded [B]) of completions [B, C] (tokens; the text is what comes
    before EOS) against the gold answers."""
    exact, graded = [], []
    for row, answer in zip(completions, answers):
        scores = tasks.score(tokenizer.decode(row), answer)
        exact.append(scores["exact_match"])
        graded.append(scores["graded"])
    return np.asarray(exact, np.float64), np.asarray(graded, np.float64)
