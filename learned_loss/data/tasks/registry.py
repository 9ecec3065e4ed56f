"""The registry of task families: `FAMILIES` by name, and sampling an `Example`.

Order is fixed (string, list, arithmetic, formatting; within a category, the
order of its module), so anything derived from it is deterministic.
"""

from __future__ import annotations

import numpy as np

from learned_loss.data.tasks import arithmetic, formatting, lists, strings
from learned_loss.data.tasks.base import CATEGORIES, Example, Family, Inputs, make_example
from learned_loss.data.tasks.base import TaskError


def _registry() -> dict[str, Family]:
    families: dict[str, Family] = {}
    for module in (strings, lists, arithmetic, formatting):
        for fam in module.FAMILIES:
            if fam.name in families:
                raise TaskError(f"task family {fam.name} is defined twice")
            if fam.category not in CATEGORIES:
                raise TaskError(f"task family {fam.name} has unknown category {fam.category}")
            families[fam.name] = fam
    return families


FAMILIES: dict[str, Family] = _registry()


def get_family(family: Family | str) -> Family:
    """The Family for a name (or the Family itself); TaskError for an unknown name."""
    if isinstance(family, Family):
        return family
    try:
        return FAMILIES[family]
    except KeyError:
        raise TaskError(
            f"unknown task family {family!r}; known families: {', '.join(FAMILIES)}"
        ) from None


def family_names(category: str | None = None) -> tuple[str, ...]:
    """Names of all families, or of one category's, in registry order."""
    if category is not None and category not in CATEGORIES:
        raise TaskError(f"unknown category {category!r}; categories are {CATEGORIES}")
    return tuple(n for n, f in FAMILIES.items() if category in (None, f.category))


def sample_example(
    family: Family | str,
    rng: np.random.Generator,
    difficulty: int = 1,
    phrasing: int | None = None,
) -> Example:
    """Samples one example; deterministic given the rng state.

    The phrasing index is always drawn first (one draw) and then replaced by
    `phrasing` if given, so for the same rng state the input is the same
    whichever phrasing is asked for.

    Args:
        family: a Family or its name.
        rng: the numpy generator to draw from (advanced in place).
        difficulty: 1..5.
        phrasing: template index in [0, len(family.templates)), or None to draw one.

    Raises:
        TaskError: unknown family, difficulty out of range, or phrasing out of range.
    """
    fam, inputs, phrasing = sample_inputs(family, rng, difficulty, phrasing)
    return make_example(fam, inputs, difficulty, phrasing)


def sample_inputs(
    family: Family | str,
    rng: np.random.Generator,
    difficulty: int = 1,
    phrasing: int | None = None,
) -> tuple[Family, Inputs, int]:
    """The draws of `sample_example` without the rendering: (the Family, its sampled inputs,
    the phrasing index). `make_example(*sample_inputs(f, rng, d), ...)` is `sample_example`;
    a caller that may reject the input (by its split) renders only the ones it keeps."""
    fam = get_family(family)
    drawn = int(rng.integers(len(fam.templates)))
    if phrasing is None:
        phrasing = drawn
    elif not 0 <= phrasing < len(fam.templates):
        raise TaskError(
            f"family {fam.name} has {len(fam.templates)} phrasings, got phrasing={phrasing}"
        )
    return fam, fam.sample(rng, difficulty), phrasing
