"""List task families: lists of non-negative integers, written space-separated.

Difficulty d sets the list length: d + 1 .. 2d + 1 items (d=1: 2..3, d=5: 6..11),
values 0..99 (0..9 where repeats matter). Answers that are lists are written
space-separated too.
"""

from __future__ import annotations

import numpy as np

from learned_loss.data.tasks.base import family, Family, ints, randint


def _f(name, templates, sample_fn, answer_fn) -> Family:
    return family(name, "list", templates, sample_fn, answer_fn)


def _join(xs) -> str:
    return " ".join(str(v) for v in xs)


def _n(rng: np.random.Generator, d: int) -> int:
    return randint(rng, d + 1, 2 * d + 1)


# ---- samplers -------------------------------------------------------------------------------


def _list(rng: np.random.Generator, d: int) -> dict:
    return {"xs": ints(rng, _n(rng, d))}


def _digits(rng: np.random.Generator, d: int) -> dict:
    return {"xs": ints(rng, _n(rng, d), 0, 9)}


def _with_k(rng: np.random.Generator, d: int) -> dict:
    xs = ints(rng, _n(rng, d))
    return {"xs": xs, "k": randint(rng, 1, len(xs) - 1)}


def _two_lists(rng: np.random.Generator, d: int) -> dict:
    n = _n(rng, d)
    return {"xs": ints(rng, n), "ys": ints(rng, n)}


def _with_parity(parity: int):
    def sample(rng: np.random.Generator, d: int) -> dict:
        xs = ints(rng, _n(rng, d))
        if not any(v % 2 == parity for v in xs):  # keep the filtered answer non-empty
            i = randint(rng, 0, len(xs) - 1)
            xs[i] = xs[i] + 1 if xs[i] < 99 else xs[i] - 1
        return {"xs": xs}

    return sample


def _with_member(rng: np.random.Generator, d: int) -> dict:
    xs = ints(rng, _n(rng, d), 0, 9)
    return {"xs": xs, "x": xs[randint(rng, 0, len(xs) - 1)]}


def _with_digit(rng: np.random.Generator, d: int) -> dict:
    return {"xs": ints(rng, _n(rng, d), 0, 9), "x": randint(rng, 0, 9)}


def _odd_length(rng: np.random.Generator, d: int) -> dict:
    return {"xs": ints(rng, 2 * randint(rng, (d + 1) // 2, d) + 1)}


def _distinct(rng: np.random.Generator, d: int) -> dict:
    return {"xs": [int(v) for v in rng.choice(100, size=_n(rng, d), replace=False)]}


# ---- answers --------------------------------------------------------------------------------


def _rotate(xs, k: int):
    return xs[k:] + xs[:k]


def _cumsum(xs):
    out, total = [], 0
    for v in xs:
        total += v
        out.append(total)
    return out


FAMILIES: tuple[Family, ...] = (
    _f("sort_ascending",
       ["Sort in ascending order: {xs}", "Order these numbers from smallest to largest: {xs}",
        "Sort the list {xs}"],
       _list, lambda x: _join(sorted(x["xs"]))),
    _f("sort_descending",
       ["Sort in descending order: {xs}", "Order these numbers from largest to smallest: {xs}",
        "Reverse-sort the list {xs}"],
       _list, lambda x: _join(sorted(x["xs"], reverse=True))),
    _f("reverse_list",
       ["Reverse the list: {xs}", "Write these numbers in reverse order: {xs}",
        "Last to first: {xs}"],
       _list, lambda x: _join(x["xs"][::-1])),
    _f("list_max",
       ["What is the largest number in {xs}?", "Maximum of: {xs}", "max({xs}) ="],
       _list, lambda x: str(max(x["xs"]))),
    _f("list_min",
       ["What is the smallest number in {xs}?", "Minimum of: {xs}", "min({xs}) ="],
       _list, lambda x: str(min(x["xs"]))),
    _f("list_sum",
       ["Add up the numbers: {xs}", "What is the sum of {xs}?", "Total of: {xs}"],
       _list, lambda x: str(sum(x["xs"]))),
    _f("dedupe_list",
       ["Remove duplicates, keeping first occurrences: {xs}",
        "List each number of {xs} once, in order of first appearance.", "Deduplicate: {xs}"],
       _digits, lambda x: _join(dict.fromkeys(x["xs"]))),
    _f("list_length",
       ["How many numbers are in the list {xs}?", "Length of the list: {xs}",
        "Count the items: {xs}"],
       _list, lambda x: str(len(x["xs"]))),
    _f("first_k",
       ["Give the first {k} numbers of {xs}", "Take {k} items from the front of: {xs}",
        "The first {k} elements of {xs} are"],
       _with_k, lambda x: _join(x["xs"][: x["k"]])),
    _f("last_k",
       ["Give the last {k} numbers of {xs}", "Take {k} items from the end of: {xs}",
        "The last {k} elements of {xs} are"],
       _with_k, lambda x: _join(x["xs"][-x["k"]:])),
    _f("rotate_left",
       ["Rotate the list {xs} left by {k}.", "Move the first {k} items of {xs} to the end.",
        "Left rotation by {k} of: {xs}"],
       _with_k, lambda x: _join(_rotate(x["xs"], x["k"]))),
    _f("rotate_right",
       ["Rotate the list {xs} right by {k}.", "Move the last {k} items of {xs} to the front.",
        "Right rotation by {k} of: {xs}"],
       _with_k, lambda x: _join(_rotate(x["xs"], len(x["xs"]) - x["k"]))),
    _f("interleave_lists",
       ["Interleave {xs} with {ys}, starting with the first list.",
        "Alternate items from [{xs}] and [{ys}].",
        "Merge by taking turns, first list first: {xs} | {ys}"],
       _two_lists, lambda x: _join(v for pair in zip(x["xs"], x["ys"]) for v in pair)),
    _f("zip_sum",
       ["Add the lists element by element: {xs} and {ys}",
        "Pairwise sums of [{xs}] and [{ys}]:", "Elementwise sum: {xs} + {ys}"],
       _two_lists, lambda x: _join(a + b for a, b in zip(x["xs"], x["ys"]))),
    _f("filter_even",
       ["Keep only the even numbers: {xs}", "Which numbers in {xs} are even?",
        "Even elements of {xs}, in order:"],
       _with_parity(0), lambda x: _join(v for v in x["xs"] if v % 2 == 0)),
    _f("filter_odd",
       ["Keep only the odd numbers: {xs}", "Which numbers in {xs} are odd?",
        "Odd elements of {xs}, in order:"],
       _with_parity(1), lambda x: _join(v for v in x["xs"] if v % 2 == 1)),
    _f("count_occurrences",
       ["How many times does {x} appear in {xs}?", "Count the {x}s in: {xs}",
        "Occurrences of {x} in {xs}:"],
       _with_digit, lambda x: str(x["xs"].count(x["x"]))),
    _f("index_of",
       ["At which 0-based index does {x} first appear in {xs}?",
        "Position (from 0) of the first {x} in: {xs}", "index of {x} in {xs} ="],
       _with_member, lambda x: str(x["xs"].index(x["x"]))),
    _f("cumulative_sum",
       ["Running totals of {xs}", "Cumulative sum of the list {xs}",
        "Replace each number of {xs} by the sum up to and including it."],
       _list, lambda x: _join(_cumsum(x["xs"]))),
    _f("pairwise_diff",
       ["Differences between consecutive numbers (next minus current): {xs}",
        "Adjacent differences of {xs}", "For {xs}, give x[i+1] - x[i] for each i."],
       _list, lambda x: _join(b - a for a, b in zip(x["xs"], x["xs"][1:]))),
    _f("median",
       ["What is the median of {xs}?", "Median of the numbers: {xs}",
        "Middle value of {xs} once sorted:"],
       _odd_length, lambda x: str(sorted(x["xs"])[len(x["xs"]) // 2])),
    _f("second_largest",
       ["What is the second largest number in {xs}?", "Second maximum of: {xs}",
        "Runner-up value in {xs}:"],
       _distinct, lambda x: str(sorted(x["xs"])[-2])),
)
