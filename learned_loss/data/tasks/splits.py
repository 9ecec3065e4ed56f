"""Split task families into meta-train, meta-valid and held-out sets.

Stratified by category: within each category the families are shuffled with a
seeded rng (np.random.default_rng([seed, category index])); the first
h = round(n * heldout_fraction) go to 'heldout', the next
v = round(n * meta_valid_fraction) to 'meta_valid', the rest to 'meta_train'.
Where a fraction is positive, each category gives that split at least one
family, and meta_train always keeps at least one family of every category
(v shrinks first, then h). The held-out set therefore depends only on the seed,
heldout_fraction and the family list, not on meta_valid_fraction.

Each split lists its families in registry order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learned_loss.data.tasks.base import CATEGORIES, TaskError
from learned_loss.data.tasks.registry import FAMILIES, get_family

SPLIT_NAMES: tuple[str, ...] = ("meta_train", "meta_valid", "heldout")


def _count(n: int, fraction: float) -> int:
    count = round(n * fraction)
    return max(count, 1) if fraction > 0 else count


def split_families(
    seed: int,
    *,
    meta_valid_fraction: float,
    heldout_fraction: float,
    families: Sequence[str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Disjoint, covering split of the families; deterministic given the seed.

    Args:
        seed: non-negative int choosing the shuffle.
        meta_valid_fraction: fraction of each category for 'meta_valid', in [0, 1).
        heldout_fraction: fraction of each category for 'heldout', in [0, 1).
        families: names to split (default: all of `FAMILIES`).

    Returns:
        {'meta_train': names, 'meta_valid': names, 'heldout': names}.

    Raises:
        ValueError: fractions out of range or summing to 1 or more.
        TaskError: an unknown or repeated family name.
    """
    for label, fraction in (("meta_valid_fraction", meta_valid_fraction),
                            ("heldout_fraction", heldout_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{label} must lie in [0, 1), got {fraction}")
    if meta_valid_fraction + heldout_fraction >= 1.0:
        raise ValueError(
            f"meta_valid_fraction + heldout_fraction must be < 1, got "
            f"{meta_valid_fraction} + {heldout_fraction}"
        )
    names = tuple(FAMILIES) if families is None else tuple(families)
    if len(set(names)) != len(names):
        raise TaskError(f"family names repeat in {names}")
    order = {name: i for i, name in enumerate(names)}
    assigned: dict[str, list[str]] = {split: [] for split in SPLIT_NAMES}
    for index, category in enumerate(CATEGORIES):
        members = [n for n in names if get_family(n).category == category]
        n = len(members)
        if not n:
            continue
        perm = np.random.default_rng([seed, index]).permutation(n)
        shuffled = [members[i] for i in perm]
        h = min(_count(n, heldout_fraction), n - 1)
        v = min(_count(n, meta_valid_fraction), n - 1 - h)
        assigned["heldout"] += shuffled[:h]
        assigned["meta_valid"] += shuffled[h : h + v]
        assigned["meta_train"] += shuffled[h + v :]
    return {split: tuple(sorted(found, key=order.get)) for split, found in assigned.items()}


def families_for(
    split_name: str, *, seed: int, meta_valid_fraction: float, heldout_fraction: float
) -> tuple[str, ...]:
    """The families of one split ('meta_train', 'meta_valid' or 'heldout'), for configs."""
    if split_name not in SPLIT_NAMES:
        raise ValueError(f"split_name must be one of {SPLIT_NAMES}, got {split_name!r}")
    splits = split_families(
        seed, meta_valid_fraction=meta_valid_fraction, heldout_fraction=heldout_fraction
    )
    return splits[split_name]


def training_families(
    families: Sequence[str],
    split_name: str,
    *,
    seed: int,
    meta_valid_fraction: float,
    heldout_fraction: float,
) -> tuple[str, ...]:
    """The families a training path may use: `families` if given, else those of `split_name`.

    Every training and meta-training path resolves its families here, so that a held-out family
    can never reach one: asking for the 'heldout' split, or naming a held-out family, is an error.

    Raises:
        TaskError: a held-out family or split was requested, or a name is unknown.
    """
    splits = split_families(
        seed, meta_valid_fraction=meta_valid_fraction, heldout_fraction=heldout_fraction
    )
    if split_name == "heldout":
        raise TaskError(
            "training on the 'heldout' split is not allowed: held-out families are for "
            "evaluation only; use 'meta_train' or 'meta_valid'"
        )
    if split_name not in SPLIT_NAMES:
        raise TaskError(f"unknown task split {split_name!r}; choose one of {SPLIT_NAMES}")
    if not families:
        return splits[split_name]
    for name in families:
        get_family(name)  # Raises TaskError for an unknown name.
    leaked = [name for name in families if name in splits["heldout"]]
    if leaked:
        raise TaskError(
            f"families {leaked} are held out (split seed {seed}); held-out families are for "
            f"evaluation only: remove them from tasks.families or change tasks.split_seed"
        )
    return tuple(families)
