"""String task families: one lowercase string (or a few words) in, a string out.

Difficulty d sets the size: a string of `length_for(d)` = 2d..3d+1 letters, or
d + 1 words of 2..6 letters.
"""

from __future__ import annotations

import numpy as np

from learned_loss.data.tasks.base import Family, family, length_for, letters, LOWER, randint, VOWELS
from learned_loss.data.tasks.base import words

_SMALL = "abcd"  # a small alphabet, so that counts and repeats are non-trivial


def _f(name, templates, sample_fn, answer_fn, render_fn=None) -> Family:
    if render_fn is None:
        return family(name, "string", templates, sample_fn, answer_fn)
    return family(name, "string", templates, sample_fn, answer_fn, render_fn)


# ---- samplers -------------------------------------------------------------------------------


def _word(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, length_for(rng, d))}


def _small(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, length_for(rng, d), _SMALL)}


def _mixed_case(rng: np.random.Generator, d: int) -> dict:
    s = letters(rng, length_for(rng, d))
    upper = rng.random(len(s)) < 0.5
    return {"s": "".join(c.upper() if u else c for c, u in zip(s, upper))}


def _with_consonant(rng: np.random.Generator, d: int) -> dict:
    s = letters(rng, length_for(rng, d))
    if all(c in VOWELS for c in s):  # keep the answer of remove_vowels non-empty
        s = s[:-1] + "x"
    return {"s": s}


def _sentence(rng: np.random.Generator, d: int) -> dict:
    return {"s": " ".join(words(rng, d + 1))}


def _word_count(rng: np.random.Generator, d: int) -> dict:
    # 1..d + 2 words: a fixed count per difficulty would make the answer a constant.
    return {"s": " ".join(words(rng, randint(rng, 1, d + 2)))}


def _count_char(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, length_for(rng, d), _SMALL), "c": _SMALL[randint(rng, 0, 3)]}


def _index(rng: np.random.Generator, d: int) -> dict:
    s = letters(rng, length_for(rng, d))
    return {"s": s, "i": randint(rng, 0, len(s) - 1)}


def _repeat(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, randint(rng, d, 2 * d)), "n": randint(rng, 2, 3)}


def _palindrome(rng: np.random.Generator, d: int) -> dict:
    n = length_for(rng, d)
    if rng.random() < 0.5:
        half = letters(rng, (n + 1) // 2, _SMALL)
        return {"s": half + half[: n // 2][::-1]}
    return {"s": letters(rng, n, _SMALL)}


def _caesar(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, length_for(rng, d)), "k": randint(rng, 1, 25)}


def _replace(rng: np.random.Generator, d: int) -> dict:
    s = letters(rng, length_for(rng, d), _SMALL)
    return {"s": s, "c": s[randint(rng, 0, len(s) - 1)], "x": "xyz"[randint(rng, 0, 2)]}


def _separator(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, length_for(rng, d)), "sep": "-.,:/*"[randint(rng, 0, 5)]}


def _longest(rng: np.random.Generator, d: int) -> dict:
    ws = words(rng, d + 1, 2, 5)
    top = randint(rng, 0, len(ws) - 1)
    ws[top] = ws[top] + letters(rng, 6 - len(ws[top]))  # the unique longest: 6 letters
    return {"s": " ".join(ws)}


# ---- answers --------------------------------------------------------------------------------


def _shift(s: str, k: int) -> str:
    return "".join(LOWER[(LOWER.index(c) + k) % 26] for c in s)


def _unique(s: str) -> str:
    return "".join(dict.fromkeys(s))


def _rle(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{s[i]}{j - i}")
        i = j
    return "".join(out)


def _rle_input(rng: np.random.Generator, d: int) -> dict:
    runs = [(_SMALL[randint(rng, 0, 3)], randint(rng, 1, 4)) for _ in range(d + 1)]
    return {"s": "".join(c * n for c, n in runs)}


def _alternate(s: str) -> str:
    return "".join(c.upper() if i % 2 == 0 else c for i, c in enumerate(s))


FAMILIES: tuple[Family, ...] = (
    _f("reverse_string",
       ["Reverse the string: {s}", "Write {s} backwards.", "What is {s} spelled in reverse?"],
       _word, lambda x: x["s"][::-1]),
    _f("uppercase",
       ["Convert to uppercase: {s}", "Write {s} in capital letters.", "Uppercase this: {s}"],
       _word, lambda x: x["s"].upper()),
    _f("lowercase",
       ["Convert to lowercase: {s}", "Write {s} in small letters.", "Lowercase this: {s}"],
       _mixed_case, lambda x: x["s"].lower()),
    _f("swapcase",
       ["Swap the case of every letter in {s}", "Invert upper and lower case: {s}",
        "Make capitals small and small letters capital: {s}"],
       _mixed_case, lambda x: x["s"].swapcase()),
    _f("title_case",
       ["Capitalize the first letter of each word: {s}", "Title case: {s}",
        "Write '{s}' with every word capitalized."],
       _sentence, lambda x: " ".join(w.capitalize() for w in x["s"].split())),
    _f("alternate_case",
       ["Uppercase the letters at even positions (0-based) of {s}",
        "Alternate case starting with a capital: {s}",
        "Write {s} as capital, small, capital, small, ..."],
       _word, lambda x: _alternate(x["s"])),
    _f("remove_vowels",
       ["Remove the vowels from {s}", "Delete every a, e, i, o, u in: {s}",
        "Write {s} without its vowels."],
       _with_consonant, lambda x: "".join(c for c in x["s"] if c not in VOWELS)),
    _f("count_char",
       ["How many times does '{c}' occur in {s}?", "Count the letter {c} in: {s}",
        "Number of '{c}' characters in {s}:"],
       _count_char, lambda x: str(x["s"].count(x["c"]))),
    _f("count_vowels",
       ["How many vowels are in {s}?", "Count the vowels (a, e, i, o, u) in: {s}",
        "Number of vowels in {s}:"],
       _word, lambda x: str(sum(c in VOWELS for c in x["s"]))),
    _f("first_char",
       ["What is the first character of {s}?", "First letter of: {s}",
        "Give the letter that {s} starts with."],
       _word, lambda x: x["s"][0]),
    _f("last_char",
       ["What is the last character of {s}?", "Last letter of: {s}",
        "Give the letter that {s} ends with."],
       _word, lambda x: x["s"][-1]),
    _f("char_at_index",
       ["What is the character at index {i} (0-based) of {s}?",
        "Give letter number {i} of {s}, counting from 0.", "{s}[{i}] = ?"],
       _index, lambda x: x["s"][x["i"]]),
    _f("repeat_string",
       ["Repeat {s} {n} times.", "Write the string {s} {n} times in a row.",
        "Concatenate {n} copies of {s}."],
       _repeat, lambda x: x["s"] * x["n"]),
    _f("is_palindrome",
       ["Is {s} a palindrome? Answer yes or no.", "Does {s} read the same backwards? yes/no",
        "Palindrome check (yes or no): {s}"],
       _palindrome, lambda x: "yes" if x["s"] == x["s"][::-1] else "no"),
    _f("caesar_shift",
       ["Shift each letter of {s} forward by {k} in the alphabet, wrapping z to a.",
        "Caesar cipher with shift {k}: {s}", "Encrypt {s} with a Caesar shift of {k}."],
       _caesar, lambda x: _shift(x["s"], x["k"])),
    _f("rot13",
       ["Apply ROT13 to {s}", "Encode {s} with rot13.",
        "Shift every letter of {s} by 13 places."],
       _word, lambda x: _shift(x["s"], 13)),
    _f("duplicate_chars",
       ["Double every character of {s}", "Write each letter of {s} twice.",
        "Duplicate each character: {s}"],
       _word, lambda x: "".join(c * 2 for c in x["s"])),
    _f("sort_chars",
       ["Sort the letters of {s} alphabetically.", "Alphabetize the characters: {s}",
        "Write the letters of {s} in alphabetical order."],
       _word, lambda x: "".join(sorted(x["s"]))),
    _f("unique_chars",
       ["Remove repeated letters from {s}, keeping first occurrences.",
        "Distinct characters of {s} in order of first appearance:",
        "Deduplicate the characters of {s}"],
       _small, lambda x: _unique(x["s"])),
    _f("string_length",
       ["How many characters are in {s}?", "Length of the string {s}:",
        "Count the letters in {s}"],
       _word, lambda x: str(len(x["s"]))),
    _f("replace_char",
       ["Replace every '{c}' in {s} with '{x}'.", "In {s}, substitute {x} for {c}.",
        "Change all {c} to {x}: {s}"],
       _replace, lambda x: x["s"].replace(x["c"], x["x"])),
    _f("insert_separator",
       ["Put '{sep}' between the characters of {s}", "Join the letters of {s} with {sep}",
        "Insert {sep} between every two letters: {s}"],
       _separator, lambda x: x["sep"].join(x["s"])),
    _f("reverse_words",
       ["Reverse the order of the words: {s}", "Write the words of '{s}' backwards.",
        "Last word first: {s}"],
       _sentence, lambda x: " ".join(reversed(x["s"].split()))),
    _f("count_words",
       ["How many words are in '{s}'?", "Count the words: {s}", "Number of words in: {s}"],
       _word_count, lambda x: str(len(x["s"].split()))),
    _f("longest_word",
       ["Which word is the longest: {s}", "Longest word in '{s}':",
        "Give the longest of these words: {s}"],
       _longest, lambda x: max(x["s"].split(), key=len)),
    _f("acronym",
       ["Make an acronym from: {s}", "Uppercase first letters of each word in '{s}'",
        "Acronym of {s}:"],
       _sentence, lambda x: "".join(w[0].upper() for w in x["s"].split())),
    _f("run_length_encode",
       ["Run-length encode {s} as letter then count.", "RLE of {s}:",
        "Compress {s}: each run becomes its letter followed by its length."],
       _rle_input, lambda x: _rle(x["s"])),
    _f("run_length_decode",
       ["Expand the run-length code {r}", "Decode the RLE string {r}",
        "Each letter is followed by its count; write out {r}"],
       _rle_input, lambda x: x["s"], lambda x: {"r": _rle(x["s"])}),
)
