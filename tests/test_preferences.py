"""Preference data from policy samples: fitting samples to the sequence length, and summaries."""

import math

import numpy as np
import pytest

from learned_loss.data import tasks
from learned_loss.rlhf import preferences


def test_answer_room_is_what_check_fits_allows():
    example = tasks.Example("first_char", "First letter of: abc", "a", 1, 0)
    room = preferences.answer_room(example, seq_len=32)
    # 1 + 20 prompt bytes + 1 + answer + 1 <= 33.
    assert room == 10
    tasks.check_fits(tasks.Example("first_char", example.prompt, "x" * room, 1, 0), 32)
    with pytest.raises(tasks.TaskError):
        tasks.check_fits(tasks.Example("first_char", example.prompt, "x" * (room + 1), 1, 0), 32)


def test_fit_answer_cuts_bytes_not_characters():
    assert preferences.fit_answer("abcdef", 4) == "abcd"
    assert preferences.fit_answer("abc", 4) == "abc"
    assert preferences.fit_answer("abc", -2) == ""
    # 'é' is two UTF-8 bytes: a cut through it drops the whole character.
    assert preferences.fit_answer("aé", 2) == "a"
    assert preferences.fit_answer("aé", 3) == "aé"


def _record(chosen, rejected, g_c, g_r, s_c="gold", s_r="policy"):
    return {"chosen": chosen, "rejected": rejected, "g_chosen": g_c, "g_rejected": g_r,
            "source_chosen": s_c, "source_rejected": s_r}


def test_summarize_counts_sources_and_gold_agreement():
    records = [
        _record("12", "1", 1.0, 0.5),                       # agrees with the gold order
        _record("9", "12", 0.0, 1.0, "policy", "gold"),      # disagrees
        _record("ab", "cd", 0.0, 0.0, "corrupt:truncated", "corrupt:appended"),  # a tie
    ]
    summary = preferences.summarize(records)
    assert summary["pairs"] == 3 and summary["pairs_with_policy"] == 2
    assert summary["completions_by_source"] == {"corrupt:appended": 1, "corrupt:truncated": 1,
                                                "gold": 2, "policy": 2}
    assert summary["gold_ordered_pairs"] == 2 and summary["gold_order_agreement"] == 0.5
    assert np.isclose(summary["g_chosen"], 1 / 3) and np.isclose(summary["g_rejected"], 0.5)
    assert np.isclose(summary["length_chosen"], 5 / 3)
    assert math.isnan(preferences.summarize([])["gold_order_agreement"])
