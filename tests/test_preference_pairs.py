"""Tests for learned_loss.data.preference_pairs (simulated labeler and `preference_pairs`
builder)."""

import math

import numpy as np
import pytest

from learned_loss.data import tasks
from learned_loss.data import instruction_tasks as itasks
from learned_loss.data import preference_pairs as pp

FAMILIES = ("add", "reverse_string", "parity", "json_list")
KNOBS = dict(families=FAMILIES, pairs_per_family=30, difficulty=(1, 3), tau=0.2,
             length_bias=0.5, length_scale=64.0, seed=0, seq_len=128)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _records(info, split):
    source = pp.load_split(info, split)
    records = [pp.decode_record(source[i]) for i in range(len(source))]
    # TFDS reorders on write: back to the builder's order, families as given, then index.
    return sorted(records, key=lambda r: (info.families.index(r["family"]), r["index"]))


# ---- the labeler ----------------------------------------------------------------------------


def test_probability_on_hand_worked_numbers():
    p = pp.preference_probability
    assert p(1.0, 0.0, 3, 3, tau=1.0, length_bias=0.0, length_scale=10) == pytest.approx(
        _sigmoid(1.0))
    assert p(0.5, 0.5, 3, 3, tau=0.1, length_bias=2.0, length_scale=10) == pytest.approx(0.5)
    # Length only: lambda * (8 - 2) / 6 = 1 -> sigmoid(1 / 0.5).
    assert p(0.5, 0.5, 8, 2, tau=0.5, length_bias=1.0, length_scale=6) == pytest.approx(
        _sigmoid(2.0))
    # Both: (0.2 - 0.6 + 0.5 * (10 - 4) / 5) / 0.25 = (-0.4 + 0.6) / 0.25 = 0.8.
    assert p(0.2, 0.6, 10, 4, tau=0.25, length_bias=0.5, length_scale=5) == pytest.approx(
        _sigmoid(0.8))
    # Symmetry, arrays, and no overflow at tiny tau.
    assert p(0.3, 0.9, 1, 5, tau=0.3, length_bias=0.2, length_scale=4) + p(
        0.9, 0.3, 5, 1, tau=0.3, length_bias=0.2, length_scale=4) == pytest.approx(1.0)
    arr = p(np.array([1.0, 0.0]), 0.0, 1, 1, tau=1.0, length_bias=0.0, length_scale=1)
    np.testing.assert_allclose(arr, [_sigmoid(1.0), 0.5])
    assert p(1.0, 0.0, 1, 1, tau=1e-6, length_bias=0.0, length_scale=1) == 1.0
    assert p(0.0, 1.0, 1, 1, tau=1e-6, length_bias=0.0, length_scale=1) == 0.0
    for bad in (dict(tau=0.0, length_scale=1.0), dict(tau=1.0, length_scale=0.0)):
        with pytest.raises(ValueError):
            p(1.0, 0.0, 1, 1, length_bias=0.0, **bad)


@pytest.mark.parametrize("tau, length_bias", [(1.0, 0.0), (0.25, 0.0), (0.5, 1.0), (2.0, -1.0)])
def test_empirical_preference_rate_matches_the_formula(tau, length_bias):
    gold, a, b = "abcdef", "abcxyz", "abcdefghij"  # g_a = 0.5, g_b = 0.6
    labeler = dict(tau=tau, length_bias=length_bias, length_scale=8.0)
    expected = pp.preference_probability(
        tasks.graded_score(a, gold), tasks.graded_score(b, gold), len(a), len(b), **labeler)
    rng = np.random.default_rng(0)
    n = 20_000
    labels = [pp.label_pair(rng, a, b, gold, **labeler) for _ in range(n)]
    rate = np.mean([lab.a_chosen for lab in labels])
    assert abs(rate - expected) < 3 * math.sqrt(expected * (1 - expected) / n)
    for lab in labels[:50]:
        assert lab.chosen == (a if lab.a_chosen else b)
        assert lab.p_chosen == pytest.approx(expected if lab.a_chosen else 1 - expected)
        assert lab.g_chosen == tasks.graded_score(lab.chosen, gold)


def test_length_bias_favours_longer_completions_at_equal_gold_score():
    gold, short, long = "abcd", "ab", "abcdefgh"
    assert tasks.graded_score(short, gold) == tasks.graded_score(long, gold) == 0.5
    rates = {}
    for bias in (0.0, 1.0):
        rng = np.random.default_rng(1)
        labels = [pp.label_pair(rng, short, long, gold, tau=0.5, length_bias=bias,
                                length_scale=8.0) for _ in range(4_000)]
        rates[bias] = np.mean([lab.chosen == long for lab in labels])
    assert abs(rates[0.0] - 0.5) < 0.03
    assert rates[1.0] > 0.75  # sigmoid(0.75 / 0.5) = 0.82


# ---- the TFDS builder -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, pp.build_preference_pairs(data_dir, **KNOBS)


def test_records_are_consistent_with_the_labeler(built):
    _, info = built
    assert info.num_pairs == {"train": 4 * 27, "validation": 4 * 3}
    assert info.num_policy == {"train": 0, "validation": 0} and info.policy_hash == ""
    for split in ("train", "validation"):
        records = _records(info, split)
        assert len(records) == info.num_pairs[split]
        for rec in records:
            gold = rec["gold_answer"]
            assert rec["chosen"] != rec["rejected"]
            assert rec["g_chosen"] == pytest.approx(tasks.graded_score(rec["chosen"], gold))
            assert rec["g_rejected"] == pytest.approx(tasks.graded_score(rec["rejected"], gold))
            expected = pp.preference_probability(
                rec["g_chosen"], rec["g_rejected"], len(rec["chosen"]), len(rec["rejected"]),
                tau=0.2, length_bias=0.5, length_scale=64.0)
            assert rec["p_chosen"] == pytest.approx(expected, abs=1e-5)
            for side in ("chosen", "rejected"):
                source, text = rec[f"source_{side}"], rec[side]
                assert source in pp.SOURCES and source != "policy"
                if source == "gold":
                    assert text == gold
                elif source == "corrupt:appended":
                    assert text.startswith(gold + " ")
                elif source == "corrupt:truncated":
                    assert gold.startswith(text) and len(text) < len(gold)
                else:
                    assert text != gold
    sources = {r[f"source_{s}"] for r in _records(info, "train") for s in ("chosen", "rejected")}
    assert sources == set(pp.SOURCES) - {"policy"}
    # With a sharp labeler the better completion usually wins.
    train = _records(info, "train")
    better = [r["g_chosen"] > r["g_rejected"] for r in train if r["g_chosen"] != r["g_rejected"]]
    assert np.mean(better) > 0.7


def test_prompts_match_pair_examples_and_reuse(built):
    data_dir, info = built
    examples = pp.pair_examples(families=FAMILIES, pairs_per_family=30, difficulty=(1, 3),
                                seed=0)
    for split in ("train", "validation"):
        stored = [(r["family"], r["prompt"], r["gold_answer"]) for r in _records(info, split)]
        assert stored == [(e.family, e.prompt, e.answer) for e in examples[split]]
    again = pp.build_preference_pairs(data_dir, **KNOBS)
    assert again.reused and again.config_name == info.config_name
    other = pp.build_preference_pairs(data_dir, **{**KNOBS, "tau": 1.0})
    assert not other.reused and other.config_name != info.config_name
    assert [r["prompt"] for r in _records(other, "train")] == [
        r["prompt"] for r in _records(info, "train")]


def test_policy_samples_appear_with_source_policy(built):
    data_dir, info = built
    examples = pp.pair_examples(families=FAMILIES, pairs_per_family=30, difficulty=(1, 3),
                                seed=0)
    samples = {}
    for split_examples in examples.values():
        for e in split_examples:
            samples[e.prompt] = [e.answer + "!", "policy says " + e.answer[::-1], e.answer]
    with_policy = pp.build_preference_pairs(data_dir, **KNOBS, policy_samples=samples)
    assert with_policy.config_name != info.config_name and with_policy.policy_hash
    assert with_policy.num_policy["train"] > 0 and with_policy.num_policy["validation"] > 0
    seen = 0
    for split in ("train", "validation"):
        for rec in _records(with_policy, split):
            for side in ("chosen", "rejected"):
                if rec[f"source_{side}"] == "policy":
                    seen += 1
                    assert rec[side] in samples[rec["prompt"]]
                    assert rec[side] != rec["gold_answer"]  # a policy copy of gold is 'gold'
    assert seen >= with_policy.num_policy["train"]


def test_over_long_policy_sample_fails_the_build(tmp_path):
    examples = pp.pair_examples(families=["add"], pairs_per_family=10, difficulty=1, seed=0)
    samples = {examples["train"][0].prompt: ["9" * 200]}
    with pytest.raises(tasks.TaskError, match="add"):
        pp.build_preference_pairs(str(tmp_path), **{**KNOBS, "families": ["add"],
                                                     "pairs_per_family": 10, "difficulty": 1},
                                  policy_samples=samples)


def test_corruption_kinds_are_shared_with_instruction_tasks():
    assert pp.SOURCES == ("gold", "corrupt:other_answer", "corrupt:truncated",
                          "corrupt:appended", "policy")
    assert tuple(s.split(":")[1] for s in pp.SOURCES[1:-1]) == itasks.CORRUPTIONS
