"""The task-diversity study: nested family subsets that never include a held-out family, the same
budget for every count, the gains-per-log analysis, and a smoke study end to end with resume."""

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest

from configs import diversity as diversity_config
from learned_loss.core import cli, evaluation
from learned_loss.data import tasks, training_rows

from learned_loss.report import studies as study_report
from learned_loss.studies import diversity
from tests import runs


def test_subsets_are_nested_seeded_and_never_held_out():
    config = diversity_config.get_config("tiny")
    families = diversity.train_families(config)
    heldout = diversity.heldout_families(config)
    assert len(families) >= 30 and not set(families) & set(heldout)
    a, b = diversity.family_order(families, 0), diversity.family_order(families, 1)
    assert sorted(a) == sorted(families) and a != b
    assert a == diversity.family_order(families, 0)
    assert diversity.check(config) == [1, 3, 10, 30, len(families)]
    assert diversity.resolve_counts((3, 0, 3), 52) == [3, 52]


@pytest.mark.parametrize("override, message", [
    ({"counts": (1, 99)}, "between 1 and the"),
    ({"counts": (3, 3)}, "at least 2 distinct"),
    ({"rows": 4}, "rows >= batch"),
    ({"seeds": 0}, "seeds must be"),
])
def test_bad_configs_are_refused(override, message):
    config = diversity_config.get_config("smoke")
    config.update(override)
    with pytest.raises(cli.UserError, match=message):
        diversity.check(config)


def test_a_held_out_family_cannot_be_trained_on():
    config = diversity_config.get_config("smoke")
    config.tasks.families = (diversity.heldout_families(config)[0],)
    with pytest.raises(tasks.TaskError, match="held-out"):
        diversity.train_families(config)


def test_demonstrations_round_robin_fit_and_are_deterministic():
    families = ("uppercase", "list_sum", "to_binary")
    rows = training_rows.sample_demonstrations(families, 30, 96, (1,), seed=3)
    again = training_rows.sample_demonstrations(families, 30, 96, (1,), seed=3)
    other = training_rows.sample_demonstrations(families, 30, 96, (1,), seed=4)
    assert rows.inputs.shape == (30, 96) and rows.mask.shape == (30, 96)
    assert training_rows.rows_hash(rows) == training_rows.rows_hash(again)
    assert training_rows.rows_hash(rows) != training_rows.rows_hash(other)
    assert (rows.mask.sum(axis=1) >= 2).all()  # An answer byte and the EOS at least.
    # Difficulties cycle within each family: with one family, every other row is at 5.
    mixed = training_rows.sample_demonstrations(("uppercase",), 40, 96, (1, 5), seed=0)
    lengths = mixed.mask.sum(axis=1)
    assert lengths[1::2].mean() > lengths[0::2].max()
    # Round-robin: row i is of family i mod 3, each family's draws in its own order.
    alone = training_rows.sample_demonstrations(("list_sum",), 10, 96, (1,), seed=3)
    np.testing.assert_array_equal(rows.inputs[1::3], alone.inputs)
    np.testing.assert_array_equal(rows.mask[1::3], alone.mask)


def _summary(values):
    return [{"count": k, "heldout_graded": (v, 0.0)} for k, v in values]


def test_gains_per_log_and_diminishing_returns():
    ks = [1, 3, 10, 30, 52]
    concave = diversity.gains(_summary([(k, 0.1 * np.log(k) - 0.01 * np.log(k) ** 2)
                                              for k in ks]))
    assert concave["diminishing"] and concave["curvature"] == pytest.approx(-0.01, abs=1e-9)
    assert concave["steps"][0]["per_log"] > concave["steps"][-1]["per_log"]
    linear = diversity.gains(_summary([(k, 0.05 * np.log(k)) for k in ks]))
    assert not linear["diminishing"]
    assert all(s["per_log"] == pytest.approx(0.05) for s in linear["steps"])
    assert linear["slope_per_log"] == pytest.approx(0.05)
    assert "do not diminish" in study_report.diversity_verdict(
        dict(linear, metric="heldout_graded"))
    assert "gains diminish" in study_report.diversity_verdict(
        dict(concave, metric="heldout_graded"))


def _cells(by_count):
    return [{"count": k, "seed": seed, "heldout": {"graded": v}}
            for k, values in by_count.items() for seed, v in enumerate(values)]


def test_change_from_fewest_to_most_families_is_paired_over_seeds():
    # Seeds differ a lot from each other, but each gains about 0.05: paired, that stands out.
    base = [0.1, 0.4, 0.7]
    steady = diversity.change(_cells({1: base, 10: [0.0, 0.0, 0.0],
                                            52: [b + d for b, d in zip(base, [0.05, 0.06, 0.04])]}))
    assert (steady["from"], steady["to"], steady["n"]) == (1, 52, 3)
    assert steady["mean"] == pytest.approx(0.05) and steady["p"] < 0.05
    assert "stands out of the seed noise" in study_report.diversity_noise(steady, "graded")
    noisy = diversity.change(_cells({1: base, 52: [b + d for b, d in
                                                         zip(base, [0.05, -0.04, 0.01])]}))
    assert noisy["p"] > 0.5
    assert "within the seed noise" in study_report.diversity_noise(noisy, "graded")


def test_examples_hash_follows_every_prompt_and_answer():
    examples = evaluation.sample_examples(("uppercase", "list_sum"), per_family=3, difficulty=1,
                                          seed=0)
    same = evaluation.sample_examples(("uppercase", "list_sum"), per_family=3, difficulty=1,
                                      seed=0)
    assert diversity.examples_hash(examples) == diversity.examples_hash(same)
    changed = [*examples[:-1], dataclasses.replace(examples[-1], answer="x")]
    assert diversity.examples_hash(changed) != diversity.examples_hash(examples)


def _never_pretrain(config, path):
    raise AssertionError(f"the cached pre-training must be reused ({path})")


def test_smoke_study_end_to_end_with_report_and_resume(tmp_path):
    workdir = tmp_path / "w"
    env = runs.env(1, LEARNED_LOSS_CACHE=str(tmp_path / "cache"))
    cmd = runs.command("experiments.diversity", workdir, "configs/diversity.py:smoke")
    first = subprocess.run(cmd, cwd=runs.ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(workdir / "diversity.json") as f:
        study = json.load(f)
    cells = {(c["count"], c["seed"]): c for c in study["cells"]}
    assert sorted(cells) == [(1, 0), (3, 0)]
    # Nested subsets of the same seed, the same token budget.
    assert cells[(3, 0)]["families"][:1] == cells[(1, 0)]["families"]
    assert cells[(1, 0)]["tokens"] == cells[(3, 0)]["tokens"]
    heldout = set(study["heldout_families"])
    assert heldout and not heldout & set(cells[(3, 0)]["families"])
    for (count, seed), cell in cells.items():
        key = diversity.cell_key(count, seed)
        with open(os.path.join(workdir, diversity.CELLS, f"{key}.json")) as f:
            assert json.load(f) == cell
        assert set(cell["heldout"]["families"]) == heldout
        assert 0.0 <= cell["heldout"]["exact_match"] <= cell["heldout"]["graded"] + 1e-9
    by = {r["count"]: r for r in study["summary"]}
    assert by[3]["heldout_graded"][0] == pytest.approx(cells[(3, 0)]["heldout"]["graded"])
    md = (workdir / "report.md").read_text()
    assert "## Task diversity" in md
    assert f"| 3 | 1 | {by[3]['heldout_exact_match'][0]:.3f} ± 0.000 |" in md
    change = study["change"]["graded"]
    assert (change["from"], change["to"], change["n"]) == (1, 3, 1)
    assert change["mean"] == pytest.approx(cells[(3, 0)]["heldout"]["graded"]
                                           - cells[(1, 0)]["heldout"]["graded"])
    assert "these seeds do not resolve the curve" in md  # One seed: no test at all.
    with open(workdir / "provenance.json") as f:
        recorded = json.load(f)["starts"][-1]["extra"]["data_hashes"]["heldout_eval"]
    assert recorded in md and len(recorded) == 16

    stamps = {p: os.path.getmtime(workdir / "diversity" / p)
              for p in os.listdir(workdir / "diversity")}
    second = subprocess.run(cmd, cwd=runs.ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: os.path.getmtime(workdir / "diversity" / p) for p in stamps} == stamps
    with open(workdir / "diversity.json") as f:
        assert json.load(f)["cells"] == study["cells"]

    # Cells of other settings are refused, not reported as if they had these; more seeds
    # reuse the finished ones.
    # (In process, from the cached pre-training; a UserError is one line and exit 2 at every
    # entry point: tests/test_errors.py.)
    changed = diversity_config.get_config("smoke")
    changed.steps, changed.cache_dir = 5, str(tmp_path / "cache")
    with pytest.raises(cli.UserError, match="other settings"):
        diversity.run(changed, str(workdir), _never_pretrain, log=lambda line: None)
    assert {p: os.path.getmtime(workdir / "diversity" / p) for p in stamps} == stamps
