"""The headroom map (learned_loss/studies/headroom.py): its points, their configs, the regime it
chooses and its report section."""

import json
import math
import os

import pytest

from configs import headroom as headroom_config
from learned_loss.core import errors
from learned_loss.report import render, studies
from learned_loss.studies import headroom, noisy_demonstrations


def test_points_change_one_axis_at_a_time_then_the_corner():
    config = headroom_config.get_config("tiny")
    names = [p["name"] for p in headroom.points(config)]
    assert names == ["base", "rho=0.2", "rho=0.4", "rho=0.5", "epochs=1", "epochs=3", "epochs=10",
                     "epochs=30", "model=mini", "model=tiny", "examples=100", "examples=250",
                     "corner"]
    assert headroom.points(config)[-1]["overrides"] == {"epochs": 30, "rho": 0.5}
    config.corner.epochs, config.corner.rho, config.corner.model = 0, 0.4, "mini"
    corner = headroom.points(config)[-1]
    assert corner["name"] == "corner" and corner["overrides"] == {"model": "mini", "rho": 0.4}
    config.corner.rho, config.corner.model = -1.0, ""  # Every axis unset: no corner.
    assert headroom.points(config)[-1]["name"] == "examples=250"


def test_point_configs(tmp_path):
    config = headroom_config.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    base = headroom.point_config(config, {})
    assert not any(k in base for k in headroom.MAP_KEYS)  # No cell depends on the map's keys.
    rows = headroom.train_rows(base)
    point = headroom.point_config(config, {"rho": 0.5, "model": "mini", "examples": 30,
                                           "epochs": 3})
    assert point.noises.swap.rho == 0.5 and point.model.variant == "mini"
    assert point.tasks.examples_per_family == 30
    # Epochs count the point's own training rows (more examples, more rows, more steps).
    point_rows = headroom.train_rows(point)
    assert point_rows > rows
    assert point.steps == round(3 * point_rows / config.batch_size)
    # A cell of the base point hashes like the same cell of the noisy-demonstration grid.
    cell = noisy_demonstrations.grid(base)[0]
    assert noisy_demonstrations.cell_settings(base, cell) != noisy_demonstrations.cell_settings(
        point, cell)


def test_refusals():
    for change, message in ((lambda c: c.axes.update({"width": (1,)}), "unknown axis"),
                            (lambda c: c.axes.update({"rho": ()}), "axes.rho has no values"),
                            (lambda c: c.axes.update({"model": ("huge",)}),
                             r"model \['huge'\] is not in config.models")):
        config = headroom_config.get_config("tiny")
        change(config)
        with pytest.raises(errors.UserError, match=message):
            headroom.check(config)


def _row(name, axis, headroom_value, seconds, **setting):
    row = {"name": name, "axis": axis, "value": None, "overrides": {}, "rho": 0.3,
           "model": "nano", "examples": 500, "steps": 800, "train_rows": 1600, "epochs": 16.0,
           "mle": (0.4, 0.05), "mle_clean": (0.4 + headroom_value, 0.05),
           "headroom": headroom_value, "headroom_ci95": 0.03, "p": 0.01, "p_adjusted": 0.03,
           "n": 5, "params": 100, "seconds": seconds}
    row.update(setting)
    return row


def test_the_regime_is_the_largest_headroom_within_the_time_bound(tmp_path):
    rows = [_row("base", "base", 0.10, 20), _row("epochs=30", "epochs", 0.25, 40, epochs=30.0),
            _row("model=tiny", "model", 0.40, 400, model="tiny", params=1000),
            _row("rho=0.2", "rho", math.nan, 10, rho=0.2)]
    assert headroom.choose(rows, 300.0) == "epochs=30"
    assert headroom.choose(rows, 500.0) == "model=tiny"
    assert headroom.choose(rows, 5.0) == ""
    study = {"points": rows, "choice": "epochs=30", "max_cell_seconds": 300.0, "seeds": 5,
             "families": ["a", "b"], "batch": 32, "base": {}}
    with open(tmp_path / studies.HEADROOM_FILE, "w") as f:
        json.dump(study, f)
    paths = render.write(str(tmp_path))
    with open(paths["markdown"]) as f:
        text = f.read()
    assert "Regime chosen (the largest headroom among points whose cells took at most 300 s): "\
           "epochs=30 (rho 0.30, 30.0 epochs (800 steps), nano, 500 a family), headroom " \
           "0.250 ± 0.030" in text
    assert "| model=tiny | rho 0.30, 16.0 epochs (800 steps), tiny, 500 a family | 1000 |" in text
    assert os.path.exists(tmp_path / "plots" / "headroom.png")
    del study["choice"]
    with open(tmp_path / studies.HEADROOM_FILE, "w") as f:
        json.dump(study, f)
    with pytest.raises(render.ReportError, match="lacks .choice."):
        render.write(str(tmp_path))
