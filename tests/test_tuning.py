"""The hand-made baselines' tuning (learned_loss/studies/tuning.py) and early stopping
(token_arms.BestOnValidation): settings chosen on the tuning families only, the best hand-made
baseline chosen by its tuning score, the cells trained with what was chosen."""

import json
import os

import pytest

from configs import noisy_demonstrations as noisy
from learned_loss.core import errors
from learned_loss.data import tasks
from learned_loss.studies import noisy_demonstrations, token_arms, tuning


def _config(tmp_path):
    config = noisy.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.seeds = 1
    config.tuning.seeds = 1
    config.tuning.grids = {"gce": {"q": (0.5, 1.0)}}
    return config


def test_candidates_apply_and_refusals(tmp_path):
    config = noisy.get_config("tiny")
    assert tuning.candidates(config, "sce") == [
        {"sce_alpha": 0.1, "sce_beta": 0.1}, {"sce_alpha": 0.1, "sce_beta": 1.0},
        {"sce_alpha": 1.0, "sce_beta": 0.1}, {"sce_alpha": 1.0, "sce_beta": 1.0}]
    assert tuning.candidates(config, "mle_early_stop") == [{}]  # No grid: one setting.
    tuned = tuning.apply(config, "gce", {"q": 0.3})
    assert tuned.robust.q == 0.3 and config.robust.q == 0.7  # A copy; the original is kept.
    assert tuning.apply(config, "loss_truncation", {"drop_fraction": 0.1}
                        ).loss_truncation.drop_fraction == 0.1
    for grids, message in (({"mle": {"q": (0.5,)}}, "'mle' has no settings to tune"),
                           ({"gce": {"qq": (0.5,)}}, "robust has no field 'qq'"),
                           ({"gce": {"q": ()}}, "tuning.grids.gce.q is empty")):
        bad = noisy.get_config("tiny")
        bad.tuning.grids = grids
        with pytest.raises(errors.UserError, match=message):
            tuning.check(bad)


def test_best_baseline_is_chosen_by_tuning_score():
    tables = [{"method": "gce", "noise": "swap30", "score": 0.4},
              {"method": "sce", "noise": "swap30", "score": 0.6},
              {"method": "bootstrap", "noise": "swap30", "score": 0.6},
              {"method": "gce", "noise": "off_by_one", "score": 0.9}]
    assert tuning.best_baseline(tables, "swap30") == "sce"  # The first of equal scores.
    assert tuning.best_baseline(tables, "off_by_one") == "gce"
    with pytest.raises(errors.UserError, match="no hand-made baseline was tuned on noise"):
        tuning.best_baseline(tables, "swap50")
    assert tuning.chosen([{"method": "gce", "noise": "swap30", "chosen": {"q": 0.3}}],
                         "gce", "swap30") == {"q": 0.3}
    assert tuning.chosen([], "gce", "swap30") == {}


def test_tuning_families_get_the_tuning_role_and_may_not_be_evaluated():
    config = noisy.get_config("smoke")
    config.methods = ("mle", "gce")
    config.tuning.seeds = 1
    cells = noisy_demonstrations.grid(config)
    roles = token_arms.check_roles(config, cells)
    assert roles["gce"]["tuning"] == sorted(config.tuning.families)
    assert "tuning" not in roles["mle"]
    config.tuning.families = (config.family_sets.transfer[0],)
    with pytest.raises(tasks.TaskError, match="meta role 'tuning'"):
        token_arms.check_roles(config, cells)
    config.tuning.seeds = 0  # Untuned: the configured settings, no tuning role.
    assert "tuning" not in token_arms.check_roles(config, cells)["gce"]


def test_tuning_chooses_on_the_tuning_families_and_the_cell_uses_the_choice(tmp_path):
    """Two settings of GCE's q and early stopping, one tuning seed each, then their cells: real
    training at the smoke size (seconds)."""
    config = _config(tmp_path)
    config.methods = ("gce", "mle_early_stop")
    workdir = str(tmp_path / "w")
    cells = noisy_demonstrations.grid(config)
    results = noisy_demonstrations.run_cells(config, workdir, cells, log=lambda _: None)
    with open(os.path.join(workdir, tuning.FILE)) as f:
        table, early = json.load(f)
    assert early["method"] == "mle_early_stop" and early["chosen"] == {}
    assert [r["setting"] for r in table["candidates"]] == [{"q": 0.5}, {"q": 1.0}]
    scores = [r["mean"] for r in table["candidates"]]
    assert table["chosen"] == table["candidates"][scores.index(max(scores))]["setting"]
    assert table["score"] == max(scores)
    # Each tuning record was scored on the tuning families' test inputs.
    record = tuning.choose(config, workdir, "gce", "swap30", log=lambda _: None)
    assert record == table  # Read back, nothing trained again.
    # The cell's settings are those of the config with the chosen q in place.
    cell = cells[0]
    tuned = tuning.apply(config, "gce", table["chosen"])
    assert results[0]["config_hash"] == noisy_demonstrations.cell_settings(tuned, cell)
    # Early stopping evaluated the run twice (steps 3 and 6) and kept the first best.
    stopped = results[1]
    assert stopped["method"] == "mle_early_stop" and stopped["stopped_at"] in (3, 6)
    assert 0.0 <= stopped["valid_exact_match"] <= 1.0
    assert stopped["data_seen"]["clean_demonstrations"] > 0  # It read the validation examples.
    summary = noisy_demonstrations.write_summary(workdir, results)
    assert {r["method"] for r in summary["exact_match"]} == {"gce", "mle_early_stop"}
    with open(os.path.join(workdir, "summary.md")) as f:
        text = f.read()
    best = tuning.best_baseline([table, early], "swap30")
    assert f"Best hand-made baseline on swap30 (chosen on the tuning families): {best}." in text
    # A record computed under other settings is refused, not reused.
    config.steps += 1
    with pytest.raises(errors.UserError, match="computed with other settings"):
        tuning.choose(config, workdir, "gce", "swap30", log=lambda _: None)


def test_early_stopping_keeps_the_first_best_parameters(monkeypatch):
    scores = iter([0.2, 0.5, 0.5, 0.4,  # cell 0 at steps 10, 20, 30, 40
                   ])
    monkeypatch.setattr(token_arms, "exact_match", lambda *a, **k: next(scores))
    best = token_arms.BestOnValidation(None, None, [None])
    for step in (10, 20, 30, 40):
        best.offer(step, [{"params": f"params at {step}"}])
    assert best.steps == [20] and best.scores == [0.5] and best.params == ["params at 20"]
    config = noisy.get_config("smoke")
    assert token_arms.early_stopping_evaluations(config, 6) == 2
    config.early_stopping.evaluations = 7
    with pytest.raises(errors.UserError, match="can be evaluated 1 to 6 times"):
        token_arms.early_stopping_evaluations(config, 6)
