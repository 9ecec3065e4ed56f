"""Which split a task input lives in, drawing inputs of one split, and counting input spaces.

Every input of every family belongs to exactly one split, decided by its identity
(`base.input_id`: the family and the input, not the phrasing nor the difficulty it was drawn
at) through a fixed partition of [0, 1):

  u = int(input_id, 16) / 16**16          (uniform in [0, 1) over inputs)
  'test' if u < 0.2, 'validation' if u < 0.4, else 'train'

So whichever code path draws an example (a dataset builder, the pre-training task mix, RL
prompts, an evaluation set) and with whatever seed, a test input never shows up in a training
split: splits are disjoint by construction. `draw` samples an example of one split by
rejection; `draw_distinct` samples distinct inputs (what an evaluation split needs), and when a
family's input space at the asked difficulties is too small for the count it raises a one-line
`TaskError` with the exact number of inputs there are (`input_space`).

Input spaces are counted exactly by running a family's sampler over every path of its random
choices (`enumerate_inputs`): the sampler is handed a stand-in generator whose `integers`,
`choice` and `random` return the choices of a scripted path, and the paths are walked like an
odometer. A `random()` draw is only ever compared with a threshold inside (0, 1) by the
samplers, so two values (0 and just below 1) reach both outcomes. Spaces with more sampler
paths than `limit` are reported as large (None) instead of being walked.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from learned_loss.data.tasks.base import DIFFICULTIES, Example, input_id, make_example, TaskError
from learned_loss.data.tasks.registry import get_family, sample_inputs

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# (split, upper end of its interval of u); in order of u.
_BOUNDS: tuple[tuple[str, float], ...] = (("test", 0.2), ("validation", 0.4), ("train", 1.0))
FRACTIONS: Mapping[str, float] = {"test": 0.2, "validation": 0.2, "train": 0.6}
# Bumped whenever the partition or the sampling below changes what a seed draws; part of every
# dataset's cache key (instruction_tasks, preference_pairs).
VERSION = 2
_TRIES = 2000  # rejection draws before a split is declared empty at these difficulties
_ENUMERATION_LIMIT = 50_000  # sampler paths walked before a space counts as large


def split_of(identity: str) -> str:
    """The split of an input given its `input_id`."""
    u = int(identity, 16) / 16 ** len(identity)
    for split, upper in _BOUNDS:
        if u < upper:
            return split
    return _BOUNDS[-1][0]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise TaskError(f"split must be one of {SPLITS} (task inputs are partitioned into "
                        f"these), got {split!r}")
    return split


def difficulty_range(difficulty: int | Sequence[int]) -> tuple[int, int]:
    """(lo, hi) inclusive from an int or a pair; TaskError outside 1..5."""
    lo, hi = (difficulty, difficulty) if np.ndim(difficulty) == 0 else tuple(difficulty)
    if not (min(DIFFICULTIES) <= lo <= hi <= max(DIFFICULTIES)):
        raise TaskError(f"difficulty must be an int or (lo, hi) within 1..5, got {difficulty}")
    return int(lo), int(hi)


def parse_difficulty(values: Sequence[str]) -> tuple[int, int]:
    """(lo, hi) from a command-line list: ['2'] or ['1', '3']; TaskError otherwise."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise TaskError(f"--difficulty={','.join(values)}: give a difficulty or LO,HI within "
                        f"1..5")
    return difficulty_range(numbers[0] if len(numbers) == 1 else tuple(numbers))


def sample_difficulty(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform in [lo, hi]; no draw when lo == hi."""
    return lo if lo == hi else int(rng.integers(lo, hi + 1))


def draw(family: str, rng: np.random.Generator, difficulty: int | Sequence[int], split: str,
         phrasing: int | None = None) -> Example:
    """One example of `split`: difficulty uniform in the range, then the family's sampler,
    again until the input falls in the split.

    Raises:
        TaskError: no input of the split came up in many draws (the message counts them).
    """
    check_split(split)
    lo, hi = difficulty_range(difficulty)
    fam = get_family(family)
    for _ in range(_TRIES):
        d = sample_difficulty(rng, lo, hi)
        _, inputs, chosen = sample_inputs(fam, rng, d, phrasing)
        identity = input_id(fam.name, inputs)
        if split_of(identity) == split:  # Rendered only once kept.
            return make_example(fam, inputs, d, chosen, identity)
    raise TaskError(_short_message(family, (lo, hi), split, 1))


def draw_distinct(family: str, rng: np.random.Generator, difficulty: int | Sequence[int],
                  split: str, count: int) -> list[Example]:
    """`count` examples of `split` with distinct inputs, drawn as `draw` does.

    When draws keep repeating inputs, the split's inputs at these difficulties are counted
    exactly; if there are enough, the rest are taken from that list in an order shuffled by
    `rng`, otherwise it is an error.

    Raises:
        TaskError: the family has fewer than `count` distinct inputs of `split` at these
            difficulties; the message names the family, the difficulty, how many exist and the
            fix.
    """
    check_split(split)
    lo, hi = difficulty_range(difficulty)
    out: list[Example] = []
    seen: set[str] = set()
    misses, budget = 0, 1000 + 20 * count
    while len(out) < count:
        example = draw(family, rng, (lo, hi), split)
        if example.input_id in seen:
            misses += 1
            if misses > budget:
                return out + _fill(family, rng, (lo, hi), split, count - len(out), seen)
            continue
        seen.add(example.input_id)
        out.append(example)
    return out


def draw_split(family: str, rng: np.random.Generator, difficulty: int | Sequence[int],
               split: str, count: int) -> list[Example]:
    """`count` examples of one split of a dataset: the train split may repeat an input (draws
    with replacement), an evaluation split ('validation', 'test') holds distinct inputs."""
    if split == "train":
        return [draw(family, rng, difficulty, split) for _ in range(count)]
    return draw_distinct(family, rng, difficulty, split, count)


def _fill(family: str, rng: np.random.Generator, difficulty: tuple[int, int], split: str,
          count: int, seen: set[str]) -> list[Example]:
    """`count` more distinct inputs of `split` from the enumerated space, or TaskError."""
    pool: dict[str, tuple[int, dict]] = {}
    for d in range(difficulty[0], difficulty[1] + 1):
        found = enumerate_inputs(family, d)
        if found is None:  # Too large to walk, yet draws kept repeating: report what we know.
            raise TaskError(_short_message(family, difficulty, split, count + len(seen)))
        for identity, inputs in found.items():
            if split_of(identity) == split and identity not in seen:
                pool.setdefault(identity, (d, inputs))
    if len(pool) < count:
        raise TaskError(_short_message(family, difficulty, split, count + len(seen)))
    fam = get_family(family)
    chosen = [pool[k] for k in sorted(pool)]
    order = rng.permutation(len(chosen))[:count]
    return [make_example(fam, chosen[i][1], chosen[i][0],
                         int(rng.integers(len(fam.templates)))) for i in order]


def _short_message(family: str, difficulty: tuple[int, int], split: str, count: int) -> str:
    lo, hi = difficulty
    space = input_space(family, difficulty)
    where = f"difficulty {lo}" if lo == hi else f"difficulties {lo}..{hi}"
    if space is None:
        have = f"fewer than {count} of its inputs at {where} turned up in the {split} split"
    else:
        have = (f"has {space[split]} distinct {split} inputs at {where} (of its "
                f"{sum(space.values())} inputs; the fixed partition puts about "
                f"{FRACTIONS[split]:.0%} of a family's inputs in {split})")
    wider = f"({lo}, {min(hi + 1, max(DIFFICULTIES))})"
    return (f"task family {family} {have}, fewer than the {count} asked for; raise the "
            f"difficulty range (e.g. difficulty={wider}) or ask for fewer examples per family")


# ---- counting input spaces --------------------------------------------------------------------


class _PathRng:
    """A stand-in for np.random.Generator that takes its choices from a scripted path (0 past
    its end) and records each choice with its number of options."""

    _UNIFORMS = (0.0, 1.0 - 1e-9)  # below and above any threshold inside (0, 1)

    def __init__(self, path: Sequence[int]):
        self.path = path
        self.taken: list[tuple[int, int]] = []  # (choice, options)

    def _choose(self, options: int) -> int:
        if options < 1:
            raise TaskError("a sampler asked for a choice among no options")
        i = len(self.taken)
        choice = self.path[i] if i < len(self.path) else 0
        self.taken.append((choice, options))
        return choice

    def integers(self, low, high=None, size=None):
        if high is None:
            low, high = 0, low
        if size is None:
            return int(low) + self._choose(int(high) - int(low))
        return np.array([int(low) + self._choose(int(high) - int(low)) for _ in range(size)])

    def random(self, size=None):
        if size is None:
            return self._UNIFORMS[self._choose(2)]
        return np.array([self._UNIFORMS[self._choose(2)] for _ in range(size)])

    def choice(self, a, size=None, replace=True):
        pool = list(range(a)) if np.ndim(a) == 0 else list(a)
        if size is None:
            return pool[self._choose(len(pool))]
        out = []
        for _ in range(size):
            i = self._choose(len(pool))
            out.append(pool.pop(i) if not replace else pool[i])
        return np.array(out)


@functools.lru_cache(maxsize=None)
def _walk(family: str, difficulty: int, limit: int) -> tuple[tuple[str, dict], ...] | None:
    fam = get_family(family)
    found: dict[str, dict] = {}
    path: list[int] = []
    for _ in range(limit):
        rng = _PathRng(path)
        inputs = fam.sample(rng, difficulty)
        found.setdefault(input_id(fam.name, inputs), inputs)
        taken = rng.taken
        i = len(taken) - 1
        while i >= 0 and taken[i][0] == taken[i][1] - 1:
            i -= 1
        if i < 0:
            return tuple(found.items())
        path = [c for c, _ in taken[:i]] + [taken[i][0] + 1]
    return None


def enumerate_inputs(family: str, difficulty: int,
                     limit: int = _ENUMERATION_LIMIT) -> dict[str, dict] | None:
    """Every input the family's sampler can produce at `difficulty`, by `input_id`; None when
    its sampler has more than `limit` paths (a large space)."""
    walked = _walk(get_family(family).name, int(difficulty_range(difficulty)[0]), int(limit))
    return None if walked is None else dict(walked)


def input_space(family: str, difficulty: int | Sequence[int],
                limit: int = _ENUMERATION_LIMIT) -> dict[str, int] | None:
    """{split: number of distinct inputs} of a family over a difficulty range (an input drawn
    at two difficulties counts once), exact; None when a difficulty's space is large."""
    lo, hi = difficulty_range(difficulty)
    ids: set[str] = set()
    for d in range(lo, hi + 1):
        found = enumerate_inputs(family, d, limit)
        if found is None:
            return None
        ids.update(found)
    counts = {split: 0 for split in SPLITS}
    for identity in ids:
        counts[split_of(identity)] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class Overlap:
    """Inputs shared between splits (should be none): split pair -> shared input ids and
    prompts."""

    inputs: Mapping[tuple[str, str], tuple[str, ...]]
    prompts: Mapping[tuple[str, str], tuple[str, ...]]

    def __bool__(self) -> bool:
        return any(self.inputs.values()) or any(self.prompts.values())


def overlap(records_by_split: Mapping[str, Sequence[Mapping[str, str]]]) -> Overlap:
    """The inputs (by `input_id`) and prompt texts that occur in more than one split of a
    dataset: records are dicts with 'input_id' and 'prompt'."""
    ids = {s: {r["input_id"] for r in recs} for s, recs in records_by_split.items()}
    prompts = {s: {r["prompt"] for r in recs} for s, recs in records_by_split.items()}
    names = sorted(records_by_split)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return Overlap({(a, b): tuple(sorted(ids[a] & ids[b])) for a, b in pairs},
                   {(a, b): tuple(sorted(prompts[a] & prompts[b])) for a, b in pairs})
