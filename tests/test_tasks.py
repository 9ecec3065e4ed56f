"""Tests for learned_loss.data.tasks: the task families, scorers, splits and token layout."""

import numpy as np
import pytest

from learned_loss.data import tasks, tokenizer
from learned_loss.data.tasks import TaskError

NAMES = list(tasks.FAMILIES)


def _inputs(name, seed, difficulty, n):
    fam = tasks.FAMILIES[name]
    rng = np.random.default_rng(seed)
    return [fam.sample(rng, difficulty) for _ in range(n)]


# ---- the suite as a whole -------------------------------------------------------------------


def test_suite_size_names_and_categories():
    assert len(tasks.FAMILIES) >= 60
    assert len(set(NAMES)) == len(NAMES)
    for name, fam in tasks.FAMILIES.items():
        assert fam.name == name
        assert name.isidentifier() and name == name.lower()
        assert fam.category in tasks.CATEGORIES
        assert len(fam.templates) >= 3 and len(set(fam.templates)) == len(fam.templates)
    assert {f.category for f in tasks.FAMILIES.values()} == set(tasks.CATEGORIES)
    for category in tasks.CATEGORIES:
        assert len(tasks.family_names(category)) >= 10
    # Registry order is fixed: categories in CATEGORIES order.
    cats = [f.category for f in tasks.FAMILIES.values()]
    assert cats == sorted(cats, key=tasks.CATEGORIES.index)


@pytest.mark.parametrize("name", NAMES)
def test_family_contract(name):
    fam = tasks.FAMILIES[name]
    # Deterministic per seed, and not constant across seeds.
    a = [tasks.sample_example(name, np.random.default_rng(7), d) for d in tasks.DIFFICULTIES]
    b = [tasks.sample_example(name, np.random.default_rng(7), d) for d in tasks.DIFFICULTIES]
    assert a == b
    many = {tasks.sample_example(name, np.random.default_rng(s), 3).prompt for s in range(20)}
    assert len(many) > 1
    # At every difficulty the answer varies: a constant answer is learnt without the task.
    for d in tasks.DIFFICULTIES:
        rng = np.random.default_rng(d)
        answers = {tasks.sample_example(name, rng, d).answer for _ in range(100)}
        assert len(answers) > 1, (d, answers)
    # Difficulty scales the input size.
    sizes = {d: np.mean([fam.input_size(x) for x in _inputs(name, 1, d, 30)]) for d in (1, 5)}
    assert sizes[5] > sizes[1], sizes
    # Answers: non-empty single-line ASCII; everything fits 256 tokens at every difficulty.
    rng = np.random.default_rng(3)
    for d in tasks.DIFFICULTIES:
        for _ in range(15):
            ex = tasks.sample_example(fam, rng, d)
            assert ex.family == name and ex.difficulty == d
            assert 0 <= ex.phrasing < len(fam.templates)
            assert ex.answer and ex.answer == ex.answer.strip()
            for text in (ex.prompt, ex.answer):
                assert text.isascii() and text.isprintable(), text
            assert tasks.sequence_length(ex) <= tasks.MAX_SEQ_LEN + 1
            tasks.encode_example(ex, tasks.MAX_SEQ_LEN)
            assert tasks.exact_match(ex.answer, ex.answer) == 1.0
            assert tasks.graded_score(ex.answer, ex.answer) == 1.0
    with pytest.raises(TaskError):
        fam.sample(np.random.default_rng(0), 0)
    with pytest.raises(TaskError):
        fam.sample(np.random.default_rng(0), 6)


def test_phrasing_changes_the_wording_not_the_input():
    exs = [tasks.sample_example("add", np.random.default_rng(5), 3, p) for p in range(3)]
    assert len({e.prompt for e in exs}) == 3
    assert len({e.answer for e in exs}) == 1
    assert [e.phrasing for e in exs] == [0, 1, 2]
    with pytest.raises(TaskError):
        tasks.sample_example("add", np.random.default_rng(0), 1, phrasing=3)
    with pytest.raises(TaskError, match="unknown task family"):
        tasks.sample_example("no_such_task", np.random.default_rng(0))


# ---- hand-worked answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, inputs, answer",
    [
        ("reverse_string", {"s": "abc"}, "cba"),
        ("run_length_encode", {"s": "aaabcc"}, "a3b1c2"),
        ("run_length_decode", {"s": "aaabcc"}, "aaabcc"),
        ("caesar_shift", {"s": "xyz", "k": 3}, "abc"),
        ("rot13", {"s": "hello"}, "uryyb"),
        ("sort_chars", {"s": "banana"}, "aaabnn"),
        ("unique_chars", {"s": "abacad"}, "abcd"),
        ("is_palindrome", {"s": "abcba"}, "yes"),
        ("acronym", {"s": "portable network graphics"}, "PNG"),
        ("alternate_case", {"s": "abcde"}, "AbCdE"),
        ("sort_ascending", {"xs": [3, 10, 1, 2]}, "1 2 3 10"),
        ("sort_descending", {"xs": [3, 10, 1, 2]}, "10 3 2 1"),
        ("rotate_left", {"xs": [1, 2, 3, 4], "k": 1}, "2 3 4 1"),
        ("rotate_right", {"xs": [1, 2, 3, 4], "k": 1}, "4 1 2 3"),
        ("interleave_lists", {"xs": [1, 2], "ys": [7, 8]}, "1 7 2 8"),
        ("pairwise_diff", {"xs": [5, 3, 10]}, "-2 7"),
        ("cumulative_sum", {"xs": [1, 2, 3]}, "1 3 6"),
        ("median", {"xs": [9, 1, 5]}, "5"),
        ("second_largest", {"xs": [4, 9, 7]}, "7"),
        ("dedupe_list", {"xs": [3, 1, 3, 2, 1]}, "3 1 2"),
        ("add", {"a": 457, "b": 698}, "1155"),
        ("subtract", {"a": 12, "b": 40}, "-28"),
        ("integer_division", {"a": 47, "b": 5}, "9"),
        ("to_binary", {"a": 10}, "1010"),
        ("to_hex", {"a": 255}, "ff"),
        ("from_binary", {"bits": "1101"}, "13"),
        ("gcd", {"a": 12, "b": 18}, "6"),
        ("round_to_tens", {"a": 25}, "30"),
        ("compare", {"a": 3, "b": 3}, "="),
        ("thousands_separator", {"a": 1234567}, "1,234,567"),
        ("cents_to_dollars", {"a": 105}, "$1.05"),
        ("seconds_to_hms", {"a": 3725}, "01:02:05"),
        ("date_reformat", {"dates": [(2024, 3, 9)]}, "09/03/2024"),
        ("snake_to_camel", {"ws": ["get", "user", "id"]}, "getUserId"),
        ("dict_format", {"ks": ["a", "b"], "vs": [1, 2]}, '{"a": 1, "b": 2}'),
        ("zero_pad", {"a": 42, "w": 5}, "00042"),
    ],
)
def test_hand_worked_answers(name, inputs, answer):
    assert tasks.FAMILIES[name].answer(inputs) == answer


def test_prompt_renders_the_input():
    fam = tasks.FAMILIES["add"]
    assert fam.prompt({"a": 123, "b": 456}, 1) == "Add 123 and 456."
    dates = tasks.FAMILIES["date_reformat"].render({"dates": [(2024, 3, 9), (1999, 12, 31)]})
    assert dates == {"dates": "2024-03-09 1999-12-31"}
    assert tasks.FAMILIES["run_length_decode"].prompt({"s": "aaabcc"}, 1) == (
        "Decode the RLE string a3b1c2"
    )


def test_k_digit_addition_has_k_digit_operands():
    for d in tasks.DIFFICULTIES:
        for x in _inputs("add", 0, d, 20):
            assert len(str(x["a"])) == d and len(str(x["b"])) == d


# ---- scorers --------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """The test oracle: edit distance (insert, delete, substitute; unit costs) by the
    O(len(a) len(b)) dynamic programme (Wagner and Fischer 1974)."""
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def test_levenshtein_oracle():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("sitting", "kitten") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("abc", "abc") == 0


def test_graded_score_matches_the_oracle():
    # Random strings over a small alphabet (many shared characters), lengths 0 to 12.
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = ("".join(rng.choice(list("abc "), size=rng.integers(0, 13))) for _ in range(2))
        p, g = a.strip(), b.strip()
        assert tasks.graded_score(a, b) == 1.0 - levenshtein(p, g) / max(len(p), len(g), 1)


def test_graded_score():
    assert tasks.graded_score("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert tasks.graded_score("", "") == 1.0
    assert tasks.graded_score("", "abcd") == 0.0
    assert tasks.graded_score("xyz", "abc") == 0.0
    assert tasks.graded_score("ab", "abcd") == pytest.approx(0.5)


def test_exact_match_strips_surrounding_whitespace_only():
    assert tasks.exact_match("  cba\n", "cba") == 1.0
    assert tasks.exact_match("c ba", "cba") == 0.0
    assert tasks.exact_match("CBA", "cba") == 0.0
    assert tasks.graded_score(" 1155 ", "1155") == 1.0
    assert tasks.score("kitten", "sitting") == {
        "exact_match": 0.0,
        "graded": pytest.approx(1 - 3 / 7),
    }


# ---- splits ---------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_covering_and_stratified():
    kw = dict(meta_valid_fraction=0.15, heldout_fraction=0.25)
    split = tasks.split_families(0, **kw)
    assert split == tasks.split_families(0, **kw)
    assert set(split) == {"meta_train", "meta_valid", "heldout"}
    flat = [n for names in split.values() for n in names]
    assert len(flat) == len(set(flat)) == len(tasks.FAMILIES)
    assert set(flat) == set(tasks.FAMILIES)
    for names in split.values():
        assert {tasks.FAMILIES[n].category for n in names} == set(tasks.CATEGORIES)
        assert list(names) == [n for n in tasks.FAMILIES if n in names]  # registry order
    assert len(split["heldout"]) == sum(
        round(len(tasks.family_names(c)) * 0.25) for c in tasks.CATEGORIES
    )
    assert tasks.split_families(1, **kw) != split
    assert tasks.families_for("heldout", seed=0, **kw) == split["heldout"]
    # Held-out families do not depend on the meta-valid fraction.
    other = tasks.split_families(0, meta_valid_fraction=0.3, heldout_fraction=0.25)
    assert other["heldout"] == split["heldout"]


def test_split_of_a_subset_and_bad_arguments():
    subset = ["add", "subtract", "reverse_string", "uppercase", "lowercase", "sort_ascending"]
    split = tasks.split_families(3, meta_valid_fraction=0.0, heldout_fraction=0.3,
                                 families=subset)
    assert split["meta_valid"] == ()
    assert sorted(n for v in split.values() for n in v) == sorted(subset)
    # Every category keeps a meta-train family.
    assert "sort_ascending" in split["meta_train"]
    with pytest.raises(ValueError):
        tasks.split_families(0, meta_valid_fraction=0.5, heldout_fraction=0.5)
    with pytest.raises(ValueError):
        tasks.split_families(0, meta_valid_fraction=-0.1, heldout_fraction=0.2)
    with pytest.raises(TaskError):
        tasks.split_families(0, meta_valid_fraction=0.1, heldout_fraction=0.1,
                             families=["nope"])
    with pytest.raises(ValueError):
        tasks.families_for("test", seed=0, meta_valid_fraction=0.1, heldout_fraction=0.1)


# ---- token layout ---------------------------------------------------------------------------


def test_encode_example_layout_and_mask():
    ex = tasks.Example(family="reverse_string", prompt="ab", answer="ba", difficulty=1,
                       phrasing=0)
    bos, sep, eos, pad = tokenizer.BOS, tokenizer.SEP, tokenizer.EOS, tokenizer.PAD
    a, b = ord("a"), ord("b")
    out = tasks.encode_example(ex, seq_len=8)
    # tokens = [BOS a b SEP b a EOS PAD PAD]
    np.testing.assert_array_equal(out["inputs"], [bos, a, b, sep, b, a, eos, pad])
    np.testing.assert_array_equal(out["targets"], [a, b, sep, b, a, eos, pad, pad])
    np.testing.assert_array_equal(out["mask"], [0, 0, 0, 1, 1, 1, 0, 0])
    assert out["inputs"].dtype == np.int32 and out["targets"].dtype == np.int32
    assert out["mask"].dtype == np.float32
    assert int(out["prompt_length"]) == 4
    np.testing.assert_array_equal(tasks.prompt_tokens(ex), [bos, a, b, sep])
    np.testing.assert_array_equal(out["inputs"][: out["prompt_length"]], tasks.prompt_tokens(ex))
    # Exactly fits: 7 tokens in seq_len + 1 = 7.
    tight = tasks.encode_example(ex, seq_len=6)
    np.testing.assert_array_equal(tight["targets"], [a, b, sep, b, a, eos])
    np.testing.assert_array_equal(tight["mask"], [0, 0, 0, 1, 1, 1])


def test_over_long_example_raises_task_error():
    ex = tasks.sample_example("repeat_string", np.random.default_rng(0), 5)
    length = tasks.sequence_length(ex)
    with pytest.raises(TaskError) as err:
        tasks.encode_example(ex, seq_len=length - 2)
    message = str(err.value)
    assert "repeat_string" in message and str(length) in message
    assert f"seq_len={length - 2}" in message and "\n" not in message
    assert isinstance(err.value, ValueError)


def test_task_text():
    ex = tasks.sample_example("add", np.random.default_rng(0), 2)
    text = tasks.task_text(ex)
    assert text == ex.prompt + "\n" + ex.answer
    assert text.split("\n") == [ex.prompt, ex.answer]
