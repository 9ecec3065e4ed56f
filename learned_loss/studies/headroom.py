"""The headroom map (experiments/headroom.py): where does clean data help, so that a better
objective for noisy data has room to show?

Headroom is mle_clean - mle: exact match on clean test inputs of MLE on the same training inputs
with their gold answers, minus MLE on the noisy demonstrations, paired over seeds (each seed its
own data, corruption, initialisation and batches: learned_loss/studies/token_arms.py). A learned
objective for noisy demonstrations can at best recover it; where it is small, no comparison can
tell objectives apart.

`points(config)`: the base point (the config as it is) and, for each value of each axis of
`config.axes`, the base with that one setting changed (configs/headroom.py names the axes:
noise rate `rho`, passes over the training rows `epochs`, `model` size, `examples` a family),
then the `corner` point when it sets any axis. Every point is a run of the noisy-demonstration
grid (learned_loss/studies/noisy_demonstrations.py) with methods mle and mle_clean, in
WORKDIR/points/NAME (a re-run skips finished cells). `run` writes WORKDIR/headroom.json: per
point its settings, both methods' mean and 95% CI, the paired headroom with its t-interval and
p-value Holm-adjusted over every point (statistics.adjust), and the seconds a cell took; and
`choice`, the point with the largest headroom among those whose cells took at most
`max_cell_seconds` (the regime for the learned objectives). learned_loss/report/studies.py
renders it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import ml_collections

from learned_loss.core import errors, files, provenance
from learned_loss.studies import noisy_demonstrations, statistics, token_arms

STUDY_FILE = "headroom.json"
AXES = ("rho", "epochs", "model", "examples")
UNSET = {"rho": -1.0, "epochs": 0, "model": "", "examples": 0}  # a corner axis left as the base
MAP_KEYS = ("axes", "corner", "models", "max_cell_seconds")  # the config's keys of the map


def check(config) -> None:
    """UserError for an unknown axis, an axis without values, a noise other than one, or a
    model the config does not define."""
    for axis, values in list(config.axes.items()) + [("corner", [0])]:
        if axis not in AXES + ("corner",):
            raise errors.UserError(f"axes.{axis}: unknown axis; axes are {AXES}")
        if not values:
            raise errors.UserError(f"axes.{axis} has no values; give it one or drop it")
    if len(config.noise_order) != 1:
        raise errors.UserError(f"the headroom map varies one noise kind's rate; noise_order "
                               f"names {list(config.noise_order)}")
    named = list(config.axes.get("model", ())) + [config.corner.model or config.model.variant]
    missing = [m for m in named if m not in config.models]
    if missing:
        raise errors.UserError(f"model {missing} is not in config.models "
                               f"{sorted(config.models)}; add its config there")


def points(config) -> list[dict[str, Any]]:
    """[{'name', 'axis', 'value', 'overrides'}]: the base, each axis value, then the corner."""
    out = [{"name": "base", "axis": "base", "value": None, "overrides": {}}]
    for axis in AXES:
        for value in config.axes.get(axis, ()):
            out.append({"name": f"{axis}={value}", "axis": axis, "value": value,
                        "overrides": {axis: value}})
    corner = {a: v for a, v in config.corner.items() if v != UNSET[a]}
    if corner:
        out.append({"name": "corner", "axis": "corner", "value": None, "overrides": corner})
    return out


def train_rows(config) -> int:
    """The training rows of seed 0 of a point's data (every seed draws as many)."""
    return len(token_arms.build_data(config, config.set_order[0], config.noise_order[0],
                                     0).train)


def point_config(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The noisy-demonstration config of a point: the base with `overrides` applied (epochs
    last, so that its steps count the point's own training rows)."""
    out = ml_collections.ConfigDict(config.to_dict())
    for key in MAP_KEYS:  # The map's own settings: no cell depends on them.
        del out[key]
    noise = config.noise_order[0]
    if "rho" in overrides:
        out.noises[noise].rho = float(overrides["rho"])
    if "model" in overrides:
        out.model = config.models[overrides["model"]].to_dict()
    if "examples" in overrides:
        out.tasks.examples_per_family = int(overrides["examples"])
    if "epochs" in overrides:
        out.steps = max(1, round(overrides["epochs"] * train_rows(out) / config.batch_size))
        out.loss_truncation.warmup_steps = out.steps // 5
    return out


def _by_method(results: Sequence[Mapping[str, Any]], method: str) -> dict[int, float]:
    return {r["seed"]: r["exact_match"] for r in results if r["method"] == method}


def summarize_point(point: Mapping[str, Any], cfg, results: Sequence[Mapping[str, Any]],
                    rows: int) -> dict[str, Any]:
    """One point's row of headroom.json (p not yet adjusted)."""
    mle, clean = _by_method(results, "mle"), _by_method(results, "mle_clean")
    gap = statistics.paired(clean, mle)
    return dict(point, rho=float(cfg.noises[cfg.noise_order[0]].rho), model=cfg.model.variant,
                examples=int(cfg.tasks.examples_per_family), steps=int(cfg.steps),
                train_rows=rows, epochs=cfg.steps * cfg.batch_size / rows,
                mle=statistics.mean_ci(list(mle.values())),
                mle_clean=statistics.mean_ci(list(clean.values())),
                headroom=gap["mean"], headroom_ci95=gap["ci95"], p=gap["p"], n=gap["n"],
                params=results[0]["params"],
                seconds=sum(r["seconds"] for r in results) / len(results))


def choose(rows: Sequence[Mapping[str, Any]], max_cell_seconds: float) -> str:
    """The name of the point with the largest headroom among those whose cells took at most
    `max_cell_seconds` (the first among equals); '' when none did."""
    fast = [r for r in rows if r["seconds"] <= max_cell_seconds and math.isfinite(r["headroom"])]
    return max(fast, key=lambda r: r["headroom"])["name"] if fast else ""


def run(config, workdir: str, log=print) -> dict:
    """Runs every point's unfinished cells and writes WORKDIR/headroom.json (module
    docstring); returns what it wrote."""
    check(config)
    rows = []
    for point in points(config):
        cfg = point_config(config, point["overrides"])
        point_dir = os.path.join(workdir, "points", point["name"])
        results = noisy_demonstrations.run_cells(cfg, point_dir, noisy_demonstrations.grid(cfg),
                                                 log=log)
        noisy_demonstrations.write_summary(point_dir, results)
        rows.append(summarize_point(point, cfg, results, results[0]["train_rows"]))
        log(f"headroom {point['name']}: mle_clean - mle = {rows[-1]['headroom']:+.3f} ± "
            f"{rows[-1]['headroom_ci95']:.3f}")
    for row, p in zip(rows, statistics.adjust([r["p"] for r in rows], "holm")):
        row["p_adjusted"] = p
    study = {"points": rows, "choice": choose(rows, config.max_cell_seconds),
             "max_cell_seconds": config.max_cell_seconds, "seeds": config.seeds,
             "families": list(config.family_sets[config.set_order[0]]),
             "batch": config.batch_size, "base": {"rho": rows[0]["rho"],
                                                  "model": rows[0]["model"],
                                                  "examples": rows[0]["examples"],
                                                  "epochs": rows[0]["epochs"]},
             "config_hash": provenance.config_hash(config)}
    files.write_json(os.path.join(workdir, STUDY_FILE), study)
    return study
