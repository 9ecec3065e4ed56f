"""The building blocks of the task suite: `Family`, `Example`, and their byte-token layout.

A family is a procedurally generated task: an input sampler with a difficulty
knob, a few instruction templates (phrasings) that render the input into a
prompt, and the gold answer function. Families live in one module per category
(strings.py, lists.py, arithmetic.py, formatting.py); the registry is in
registry.py.

Conventions every family follows (tests/test_tasks.py checks them):
  * Difficulty is an int in `DIFFICULTIES` = 1..5; it sets the input size
    (string or list length, number of digits, number of items). Higher
    difficulty means a longer input on average.
  * Prompts and answers are single-line printable ASCII, so one character is
    one byte token, and answers are never empty.
  * At every difficulty, prompt + answer fit `MAX_SEQ_LEN` = 256 tokens in the
    layout of `encode_example`.

Token layout of an example (T = seq_len, P = prompt tokens incl. BOS and SEP,
A = answer bytes):

    tokens  = [BOS] prompt_bytes [SEP] answer_bytes [EOS] PAD ...   # [T + 1]
    inputs  = tokens[:-1]                                          # [T]
    targets = tokens[1:]                                           # [T]
    mask[t] = 1 iff targets[t] is an answer byte or that EOS       # [T], A + 1 ones

A policy is conditioned on `prompt_tokens(example)` = [BOS] prompt [SEP]; its
answer follows SEP and ends at EOS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from learned_loss.core import errors
from learned_loss.data import tokenizer

CATEGORIES: tuple[str, ...] = ("string", "list", "arithmetic", "formatting")
DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# Every family fits this sequence length at every difficulty.
MAX_SEQ_LEN = 256

Inputs = dict[str, Any]


class TaskError(errors.UserError):
    """A task example or request that cannot be served; the message says why."""


def _render_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def render_fields(inputs: Mapping[str, Any]) -> dict[str, str]:
    """Default renderer: lists become space-separated items, everything else `str`."""
    return {key: _render_value(value) for key, value in inputs.items()}


@dataclasses.dataclass(frozen=True)
class Family:
    """One task family.

    Attributes:
        name: unique snake_case name.
        category: one of `CATEGORIES`.
        templates: instruction phrasings, `str.format` templates over the
            rendered input fields (e.g. 'Reverse the string: {s}').
        sample_fn: (rng, difficulty) -> inputs, a dict of plain Python values.
        answer_fn: inputs -> gold answer text.
        render_fn: inputs -> {field: text} substituted into the template.
    """

    name: str
    category: str
    templates: tuple[str, ...]
    sample_fn: Callable[[np.random.Generator, int], Inputs]
    answer_fn: Callable[[Inputs], str]
    render_fn: Callable[[Inputs], Mapping[str, str]] = render_fields

    def sample(self, rng: np.random.Generator, difficulty: int) -> Inputs:
        """Draws one input at `difficulty` (1..5); raises TaskError outside that range."""
        if difficulty not in DIFFICULTIES:
            raise TaskError(
                f"family {self.name}: difficulty must be one of {DIFFICULTIES}, got {difficulty}"
            )
        return self.sample_fn(rng, difficulty)

    def render(self, inputs: Inputs) -> dict[str, str]:
        return dict(self.render_fn(inputs))

    def prompt(self, inputs: Inputs, phrasing: int) -> str:
        return self.templates[phrasing].format(**self.render(inputs))

    def answer(self, inputs: Inputs) -> str:
        return self.answer_fn(inputs)

    def input_size(self, inputs: Inputs) -> int:
        """Characters of the rendered input: what the difficulty knob scales."""
        return sum(len(text) for text in self.render(inputs).values())


def input_id(family: str, inputs: Inputs) -> str:
    """The identity of a task input: 16 hex digits of sha256 over the family name and the
    canonical JSON of its inputs. The phrasing and the difficulty it was drawn at play no part,
    so every rendering of one input shares it (the unit that data splits keep apart)."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{family}\n{canonical}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Example:
    """One sampled task instance: prompt text and its gold answer, and `input_id`, the identity
    of the input behind the prompt (`input_id`; empty for an example made by hand)."""

    family: str
    prompt: str
    answer: str
    difficulty: int
    phrasing: int
    input_id: str = ""


def make_example(family: Family, inputs: Inputs, difficulty: int, phrasing: int,
                 identity: str | None = None) -> Example:
    """The rendered Example of `inputs`; `identity`: their `input_id` where the caller has it."""
    return Example(
        family=family.name,
        prompt=family.prompt(inputs, phrasing),
        answer=family.answer(inputs),
        difficulty=difficulty,
        phrasing=phrasing,
        input_id=input_id(family.name, inputs) if identity is None else identity,
    )


def prompt_tokens(example: Example) -> np.ndarray:
    """[BOS] prompt_bytes [SEP] as int32 [P]: what a policy is conditioned on."""
    body = tokenizer.encode(example.prompt, bos=True)
    return np.concatenate([body, np.array([tokenizer.SEP], np.int32)])  # [P]


def sequence_length(example: Example) -> int:
    """Tokens of the full layout before padding: 1 + prompt + 1 + answer + 1."""
    return len(example.prompt.encode("utf-8")) + len(example.answer.encode("utf-8")) + 3


def check_fits(example: Example, seq_len: int) -> None:
    """Raises TaskError if the example needs more than seq_len + 1 tokens."""
    length = sequence_length(example)
    if length > seq_len + 1:
        raise TaskError(
            f"example of family {example.family} needs {length} tokens "
            f"([BOS] prompt [SEP] answer [EOS]) but seq_len={seq_len} holds {seq_len + 1}; "
            "raise seq_len or lower the difficulty"
        )


def encode_example(example: Example, seq_len: int) -> dict[str, np.ndarray]:
    """Byte tokens of one example in the layout of the module docstring.

    Args:
        example: the example (its `answer` is the one trained on).
        seq_len: T, the model's sequence length.

    Returns:
        {'inputs': [T] int32, 'targets': [T] int32, 'mask': [T] float32 (1 on
        answer bytes and the final EOS of `targets`), 'prompt_length': int32
        scalar P (= len(prompt_tokens(example)))}. The prompt ids themselves
        are `inputs[:P]`.

    Raises:
        TaskError: the example needs more than seq_len + 1 tokens (it is never
            truncated silently).
    """
    check_fits(example, seq_len)
    prompt = prompt_tokens(example)  # [P]
    answer = tokenizer.encode(example.answer, eos=True)  # [A + 1]
    tokens = np.full(seq_len + 1, tokenizer.PAD, np.int32)  # [T + 1]
    tokens[: len(prompt)] = prompt
    tokens[len(prompt) : len(prompt) + len(answer)] = answer
    mask = np.zeros(seq_len, np.float32)  # [T]
    # targets[t] = tokens[t + 1]: the answer starts at token P, i.e. target P - 1.
    mask[len(prompt) - 1 : len(prompt) - 1 + len(answer)] = 1.0
    return {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "mask": mask,
        "prompt_length": np.int32(len(prompt)),
    }


def task_text(example: Example) -> str:
    """Plain text for mixing into a pre-training corpus: f'{prompt}\\n{answer}'.

    One line of prompt, a newline, one line of answer, no trailing newline
    (prompts and answers never contain newlines, so the split is unambiguous).
    """
    return f"{example.prompt}\n{example.answer}"


# ---- sampling helpers shared by the family modules ----------------------------------------

LOWER = "abcdefghijklmnopqrstuvwxyz"
VOWELS = "aeiou"


def randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform int in [lo, hi] (inclusive), as a Python int."""
    return int(rng.integers(lo, hi + 1))


def length_for(rng: np.random.Generator, difficulty: int) -> int:
    """Sequence length for a difficulty: uniform in [2d, 3d + 1] (d=1: 2..4, d=5: 10..16)."""
    return randint(rng, 2 * difficulty, 3 * difficulty + 1)


def letters(rng: np.random.Generator, n: int, alphabet: str = LOWER) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


def words(rng: np.random.Generator, n: int, lo: int = 2, hi: int = 6) -> list[str]:
    return [letters(rng, randint(rng, lo, hi)) for _ in range(n)]


def ints(rng: np.random.Generator, n: int, lo: int = 0, hi: int = 99) -> list[int]:
    return [int(v) for v in rng.integers(lo, hi + 1, size=n)]


def number(rng: np.random.Generator, digits: int) -> int:
    """Uniform number with exactly `digits` digits (1 digit: 0..9)."""
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return randint(rng, lo, 10**digits - 1)


def family(
    name: str,
    category: str,
    templates: Sequence[str],
    sample_fn: Callable[[np.random.Generator, int], Inputs],
    answer_fn: Callable[[Inputs], str],
    render_fn: Callable[[Inputs], Mapping[str, str]] = render_fields,
) -> Family:
    """Shorthand constructor used by the family modules."""
    return Family(name, category, tuple(templates), sample_fn, answer_fn, render_fn)
