"""Arithmetic task families over non-negative integers written in decimal.

Difficulty d is the number of digits of the operands (d=1: 0..9, d=5:
10000..99999); single-digit multipliers and divisors stay 2..9. Answers are
plain decimal (a leading '-' when negative), or a word / symbol where stated.
"""

from __future__ import annotations

import math

import numpy as np

from learned_loss.data.tasks.base import family, Family, number, randint


def _f(name, templates, sample_fn, answer_fn) -> Family:
    return family(name, "arithmetic", templates, sample_fn, answer_fn)


# ---- samplers -------------------------------------------------------------------------------


def _one(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d)}


def _digit_count(rng: np.random.Generator, d: int) -> dict:
    # 1..d + 2 digits: `number` has exactly d digits, which would make the count a constant.
    return {"a": number(rng, randint(rng, 1, d + 2))}


def _two(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d), "b": number(rng, d)}


def _three(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d), "b": number(rng, d), "c": number(rng, d)}


def _by_digit(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d), "b": randint(rng, 2, 9)}


def _dividend(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d + 1), "b": randint(rng, 2, 9)}


def _compare(rng: np.random.Generator, d: int) -> dict:
    a = number(rng, d)
    b = a if rng.random() < 0.2 else number(rng, d)  # equal often enough to be learned
    return {"a": a, "b": b}


def _gcd(rng: np.random.Generator, d: int) -> dict:
    # A shared factor g, so the gcd is rarely 1; a and b have about d + 1 digits.
    g = randint(rng, 2, 9 * d)
    return {"a": g * number(rng, d), "b": g * number(rng, d)}


def _binary(rng: np.random.Generator, d: int) -> dict:
    n = randint(rng, 2 * d, 3 * d + 1)
    return {"bits": "1" + "".join(str(v) for v in rng.integers(0, 2, size=n - 1))}


def _divisible(rng: np.random.Generator, d: int) -> dict:
    a, b = number(rng, d), randint(rng, 2, 9)
    if rng.random() < 0.5:  # balance the yes/no answers
        a -= a % b
    return {"a": a, "b": b}


# ---- answers --------------------------------------------------------------------------------


def _cmp(a: int, b: int) -> str:
    return ">" if a > b else "<" if a < b else "="


def _round10(a: int) -> int:
    return (a + 5) // 10 * 10  # half up: 25 -> 30


FAMILIES: tuple[Family, ...] = (
    _f("add",
       ["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."],
       _two, lambda x: str(x["a"] + x["b"])),
    _f("add_three",
       ["What is {a} + {b} + {c}?", "Add {a}, {b} and {c}.", "Sum of {a}, {b}, {c}:"],
       _three, lambda x: str(x["a"] + x["b"] + x["c"])),
    _f("subtract",
       ["What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}."],
       _two, lambda x: str(x["a"] - x["b"])),
    _f("absolute_difference",
       ["What is the absolute difference between {a} and {b}?", "|{a} - {b}| =",
        "How far apart are {a} and {b}?"],
       _two, lambda x: str(abs(x["a"] - x["b"]))),
    _f("multiply_single_digit",
       ["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}."],
       _by_digit, lambda x: str(x["a"] * x["b"])),
    _f("integer_division",
       ["What is {a} // {b} (integer division)?", "Divide {a} by {b}, rounding down.",
        "Quotient of {a} divided by {b}, without remainder:"],
       _dividend, lambda x: str(x["a"] // x["b"])),
    _f("modulo",
       ["What is {a} mod {b}?", "Remainder of {a} divided by {b}:", "Compute {a} % {b}."],
       _dividend, lambda x: str(x["a"] % x["b"])),
    _f("compare",
       ["Compare {a} and {b}: answer >, < or =.", "Which symbol fits {a} ? {b} (>, <, =)",
        "Is {a} greater than (>), less than (<) or equal to (=) {b}?"],
       _compare, lambda x: _cmp(x["a"], x["b"])),
    _f("parity",
       ["Is {a} even or odd?", "Parity of {a} (even/odd):", "Say whether {a} is even or odd."],
       _one, lambda x: "even" if x["a"] % 2 == 0 else "odd"),
    _f("is_divisible",
       ["Is {a} divisible by {b}? Answer yes or no.", "Does {b} divide {a}? yes/no",
        "Divisibility check, {a} by {b} (yes or no):"],
       _divisible, lambda x: "yes" if x["a"] % x["b"] == 0 else "no"),
    _f("digit_sum",
       ["What is the sum of the digits of {a}?", "Add up the digits of {a}.",
        "Digit sum of {a}:"],
       _one, lambda x: str(sum(int(c) for c in str(x["a"])))),
    _f("count_digits",
       ["How many digits does {a} have?", "Number of digits in {a}:",
        "Count the digits of {a}."],
       _digit_count, lambda x: str(len(str(x["a"])))),
    _f("to_binary",
       ["Write {a} in binary.", "Convert {a} to base 2 (no prefix).",
        "Binary representation of {a}:"],
       _one, lambda x: format(x["a"], "b")),
    _f("to_hex",
       ["Write {a} in hexadecimal, lowercase, no prefix.", "Convert {a} to base 16.",
        "Hex representation of {a}:"],
       _one, lambda x: format(x["a"], "x")),
    _f("from_binary",
       ["Convert the binary number {bits} to decimal.", "What is {bits} (base 2) in base 10?",
        "Decimal value of binary {bits}:"],
       _binary, lambda x: str(int(x["bits"], 2))),
    _f("gcd",
       ["What is the greatest common divisor of {a} and {b}?", "gcd({a}, {b}) =",
        "Largest number dividing both {a} and {b}:"],
       _gcd, lambda x: str(math.gcd(x["a"], x["b"]))),
    _f("square",
       ["What is {a} squared?", "Compute {a} * {a}.", "Square of {a}:"],
       _one, lambda x: str(x["a"] ** 2)),
    _f("successor",
       ["What number comes after {a}?", "Add one to {a}.", "{a} + 1 ="],
       _one, lambda x: str(x["a"] + 1)),
    _f("round_to_tens",
       ["Round {a} to the nearest ten (halves round up).", "{a} rounded to a multiple of 10:",
        "Nearest multiple of ten to {a} (5 rounds up):"],
       _one, lambda x: str(_round10(x["a"]))),
)
