"""The input partition (learned_loss/data/tasks/partition.py): every input of every family lives
in one split, whatever the phrasing, the difficulty or the code path that draws it; evaluation
splits hold distinct inputs; input spaces are counted exactly where small."""

import numpy as np
import pytest

from learned_loss.data import tasks
from learned_loss.data.tasks import partition, TaskError


def test_the_partition_gives_each_split_its_fraction_of_inputs():
    rng = np.random.default_rng(0)
    ids = {tasks.sample_example("reverse_string", rng, 3).input_id for _ in range(20_000)}
    share = {s: np.mean([partition.split_of(i) == s for i in ids]) for s in partition.SPLITS}
    for split, fraction in partition.FRACTIONS.items():
        assert abs(share[split] - fraction) < 0.02, share


def test_an_input_has_one_identity_whatever_its_phrasing():
    fam = tasks.FAMILIES["caesar_shift"]
    inputs = {"s": "abc", "k": 3}
    ids = {tasks.input_id(fam.name, inputs)}
    prompts = set()
    for phrasing in range(len(fam.templates)):
        for difficulty in (1, 4):
            example = tasks.base.make_example(fam, inputs, difficulty, phrasing)
            ids.add(example.input_id)
            prompts.add(example.prompt)
    assert len(ids) == 1 and len(prompts) == len(fam.templates)
    # ... and other inputs, or the same input of another family, have other identities.
    assert tasks.input_id(fam.name, {"s": "abd", "k": 3}) not in ids
    assert tasks.input_id("rot13", inputs) not in ids


@pytest.mark.parametrize("split", partition.SPLITS)
def test_draw_gives_inputs_of_its_split_only(split):
    rng = np.random.default_rng(1)
    drawn = [partition.draw("add", rng, (1, 2), split) for _ in range(200)]
    assert {partition.split_of(e.input_id) for e in drawn} == {split}
    assert {e.difficulty for e in drawn} == {1, 2}


def test_draw_distinct_takes_every_input_of_a_small_split_then_refuses():
    # add at difficulty 1: a, b in 0..9, 100 inputs; the partition holds some k of them in test.
    space = partition.input_space("add", 1)
    k = space["test"]
    assert sum(space.values()) == 100 and 0 < k < 100
    drawn = partition.draw_distinct("add", np.random.default_rng(2), 1, "test", k)
    assert len({e.input_id for e in drawn}) == k
    with pytest.raises(TaskError, match=f"add has {k} distinct test inputs at difficulty 1"):
        partition.draw_distinct("add", np.random.default_rng(2), 1, "test", k + 1)


@pytest.mark.parametrize("family, difficulty, count", [
    ("to_binary", 1, 10),        # 0..9
    ("to_binary", 2, 90),        # 10..99
    ("from_binary", 1, 14),      # '1' + 1..3 bits: 2 + 4 + 8
    ("is_palindrome", 1, 336),   # 2..4 letters of 'abcd': 16 + 64 + 256
    ("multiply_single_digit", 1, 80),  # a in 0..9, b in 2..9
])
def test_input_spaces_are_counted_exactly(family, difficulty, count):
    assert sum(partition.input_space(family, difficulty).values()) == count


@pytest.mark.parametrize("family", ["to_binary", "is_palindrome", "compare", "count_char",
                                    "dedupe_list", "run_length_encode", "gcd"])
def test_the_enumeration_covers_what_the_sampler_draws(family):
    enumerated = partition.enumerate_inputs(family, 1)
    rng = np.random.default_rng(3)
    sampled = {tasks.sample_example(family, rng, 1).input_id for _ in range(3000)}
    assert sampled <= set(enumerated)
    # The sampler reaches most of a small space in 3000 draws.
    assert len(sampled) >= 0.5 * min(len(enumerated), 3000)


def test_a_large_space_is_reported_as_large():
    assert partition.enumerate_inputs("reverse_string", 3, limit=1000) is None
    assert partition.input_space("reverse_string", (1, 3), limit=1000) is None


def test_difficulty_and_split_are_checked():
    with pytest.raises(TaskError, match="within 1..5"):
        partition.difficulty_range((0, 2))
    with pytest.raises(TaskError, match="split must be one of"):
        partition.draw("add", np.random.default_rng(0), 1, "dev")
    assert partition.difficulty_range(2) == (2, 2) == partition.difficulty_range((2, 2))
