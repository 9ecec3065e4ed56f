"""Formatting task families: re-write the same content in another surface format.

Difficulty d sets the number of items (d + 1 words, numbers, dates or pairs) or
the digits of a number (d + 3 digits for thousands separators).
"""

from __future__ import annotations

import numpy as np

from learned_loss.data.tasks.base import Family, family, ints, length_for, letters, number, randint
from learned_loss.data.tasks.base import words


def _f(name, templates, sample_fn, answer_fn, render_fn=None) -> Family:
    if render_fn is None:
        return family(name, "formatting", templates, sample_fn, answer_fn)
    return family(name, "formatting", templates, sample_fn, answer_fn, render_fn)


# ---- samplers -------------------------------------------------------------------------------


def _word(rng: np.random.Generator, d: int) -> dict:
    return {"s": letters(rng, length_for(rng, d))}


def _words(rng: np.random.Generator, d: int) -> dict:
    return {"ws": words(rng, d + 1)}


def _numbers(rng: np.random.Generator, d: int) -> dict:
    return {"xs": ints(rng, d + 1)}


def _pairs(rng: np.random.Generator, d: int) -> dict:
    keys = [str(k) for k in rng.choice(list("abcdefghijklmnopqrstuvwxyz"), d + 1, replace=False)]
    return {"ks": keys, "vs": ints(rng, d + 1)}


def _dates(rng: np.random.Generator, d: int) -> dict:
    dates = [
        (randint(rng, 1900, 2099), randint(rng, 1, 12), randint(rng, 1, 28)) for _ in range(d)
    ]
    return {"dates": dates}


def _pad(rng: np.random.Generator, d: int) -> dict:
    a = number(rng, d)
    return {"a": a, "w": len(str(a)) + randint(rng, 1, 3)}


def _big(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d + 3)}


def _cents(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d + 1)}


def _seconds(rng: np.random.Generator, d: int) -> dict:
    return {"a": number(rng, d)}


def _spaced(rng: np.random.Generator, d: int) -> dict:
    ws = words(rng, d + 1)
    gaps = [" " * randint(rng, 1, 3) for _ in ws]
    return {"s": "".join(g + w for g, w in zip(gaps, ws)).strip(" ") + " " * randint(rng, 0, 2)}


# ---- renderers and answers ------------------------------------------------------------------


def _iso(date) -> str:
    return f"{date[0]:04d}-{date[1]:02d}-{date[2]:02d}"


def _dmy(date) -> str:
    return f"{date[2]:02d}/{date[1]:02d}/{date[0]:04d}"


def _json_list(items) -> str:
    return "[" + ", ".join(items) + "]"


def _snake(ws) -> str:
    return "_".join(ws)


def _camel(ws) -> str:
    return ws[0] + "".join(w.capitalize() for w in ws[1:])


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _render_kv(x) -> dict:
    return {"ks": " ".join(x["ks"]), "vs": " ".join(str(v) for v in x["vs"])}


FAMILIES: tuple[Family, ...] = (
    _f("wrap_brackets",
       ["Wrap {s} in square brackets.", "Put [ and ] around {s}", "Enclose in brackets: {s}"],
       _word, lambda x: f"[{x['s']}]"),
    _f("wrap_quotes",
       ["Wrap {s} in double quotes.", "Put \" around {s}", "Quote this word: {s}"],
       _word, lambda x: f'"{x["s"]}"'),
    _f("csv_to_spaces",
       ["Turn the comma-separated values {csv} into space-separated ones.",
        "Replace the commas in {csv} with spaces.", "CSV to words: {csv}"],
       _words, lambda x: " ".join(x["ws"]), lambda x: {"csv": ",".join(x["ws"])}),
    _f("spaces_to_csv",
       ["Write '{ws}' as comma-separated values.", "Join the words {ws} with commas.",
        "Words to CSV: {ws}"],
       _words, lambda x: ",".join(x["ws"])),
    _f("key_value",
       ["Pair the keys {ks} with the values {vs} as key=value, separated by ', '.",
        "Format keys [{ks}] and values [{vs}] as k=v, k=v, ...",
        "Write key=value pairs for keys {ks} and values {vs}, comma-space separated."],
       _pairs, lambda x: ", ".join(f"{k}={v}" for k, v in zip(x["ks"], x["vs"])), _render_kv),
    _f("dict_format",
       ["Write a JSON object mapping keys {ks} to values {vs}.",
        "Format as a dict literal: keys {ks}, values {vs}",
        "JSON object from keys [{ks}] and numbers [{vs}]:"],
       _pairs, lambda x: "{" + ", ".join(f'"{k}": {v}' for k, v in zip(x["ks"], x["vs"])) + "}",
       _render_kv),
    _f("zero_pad",
       ["Pad {a} with leading zeros to width {w}.", "Write {a} as a {w}-digit number.",
        "Zero-fill {a} to {w} characters."],
       _pad, lambda x: str(x["a"]).zfill(x["w"])),
    _f("thousands_separator",
       ["Write {a} with commas as thousands separators.", "Group the digits of {a} by three.",
        "Format {a} like 1,234,567."],
       _big, lambda x: f"{x['a']:,}"),
    _f("cents_to_dollars",
       ["Write {a} cents as dollars, like $1.05.", "Format {a} cents in dollars and cents.",
        "{a} cents in dollars ($X.YY):"],
       _cents, lambda x: f"${x['a'] // 100}.{x['a'] % 100:02d}"),
    _f("seconds_to_hms",
       ["Write {a} seconds as HH:MM:SS.", "Convert {a} seconds to hours:minutes:seconds.",
        "{a} s in HH:MM:SS format:"],
       _seconds, lambda x: _hms(x["a"])),
    _f("date_reformat",
       ["Rewrite the dates {dates} from YYYY-MM-DD to DD/MM/YYYY.",
        "Convert each ISO date to day/month/year: {dates}",
        "Reformat as DD/MM/YYYY, space-separated: {dates}"],
       _dates, lambda x: " ".join(_dmy(t) for t in x["dates"]),
       lambda x: {"dates": " ".join(_iso(t) for t in x["dates"])}),
    _f("json_list",
       ["Write {xs} as a JSON list.", "Format the numbers {xs} like [1, 2, 3].",
        "Bracketed, comma-separated list of {xs}:"],
       _numbers, lambda x: _json_list(str(v) for v in x["xs"])),
    _f("json_string_list",
       ["Write the words {ws} as a JSON list of strings.",
        "Quote each word of {ws} and format them like [\"a\", \"b\"].",
        "JSON array of the strings {ws}:"],
       _words, lambda x: _json_list(f'"{w}"' for w in x["ws"])),
    _f("parse_json_list",
       ["Write the items of {js} separated by spaces.", "Unpack the list {js} into plain words.",
        "Remove brackets and commas: {js}"],
       _numbers, lambda x: " ".join(str(v) for v in x["xs"]),
       lambda x: {"js": _json_list(str(v) for v in x["xs"])}),
    _f("snake_to_camel",
       ["Convert {s} from snake_case to camelCase.", "camelCase of {s}:",
        "Rewrite the identifier {s} in camelCase."],
       _words, lambda x: _camel(x["ws"]), lambda x: {"s": _snake(x["ws"])}),
    _f("camel_to_snake",
       ["Convert {s} from camelCase to snake_case.", "snake_case of {s}:",
        "Rewrite the identifier {s} in snake_case."],
       _words, lambda x: _snake(x["ws"]), lambda x: {"s": _camel(x["ws"])}),
    _f("kebab_case",
       ["Join the words {ws} in kebab-case.", "Write '{ws}' with hyphens between the words.",
        "kebab-case of: {ws}"],
       _words, lambda x: "-".join(x["ws"])),
    _f("collapse_spaces",
       ["Collapse runs of spaces to one and trim the ends: '{s}'",
        "Normalise the whitespace of '{s}'", "Single-space this text: '{s}'"],
       _spaced, lambda x: " ".join(x["s"].split())),
    _f("enumerate_items",
       ["Number the items {ws} as 1:a 2:b ...", "Prefix each word of {ws} with its position.",
        "Enumerate from 1 as n:word: {ws}"],
       _words, lambda x: " ".join(f"{i}:{w}" for i, w in enumerate(x["ws"], 1))),
)
