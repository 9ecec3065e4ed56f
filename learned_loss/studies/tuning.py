"""The hand-made baselines tuned on families of their own, and the best of them chosen there.

A reviewer's first question of a learned objective is whether a tuned hand-made one does as
well. Each hand-made baseline of `config.tuning.grids` (loss truncation's drop fraction, GCE's q,
SCE's alpha and beta, bootstrapping's beta: `TUNABLE`) is trained, for every setting of its grid
and `tuning.seeds` seeds, on the tuning families (`tuning.families`: by default the inner
families the offline learned loss is meta-trained on, configs/meta_train.py) under the same noise
kind, budget, model and start as the comparison's cell, and scored by greedy exact match on the
tuning families' clean test inputs. The setting with the best mean is the one the comparison
uses (the first in grid order among equals). The comparison's evaluation families play no part:
choosing a setting is the meta role `tuning` (learned_loss/data/tasks/roles.py), which the
comparison refuses on an evaluation family.

Early stopping (`token_arms.EARLY_STOP`) reads the clean validation examples of the families it
trains on, so it is tuned in the run itself; here it is scored like the others on the tuning
families, so that `best_baseline` can pick the best hand-made baseline (of the methods of
`token_arms.HAND_MADE` the run has) by its tuning score, never by a test result of the
evaluation families.

Every (method, noise, setting, seed) is one record under WORKDIR/tuning (core/store.py: a re-run
skips it, and refuses one computed under other settings). `choose` returns the table of one
(method, noise) with the chosen setting; `apply` gives the config with a setting in place.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Mapping, Sequence

import ml_collections

from learned_loss.core import errors, files, provenance, store
from learned_loss.studies import statistics, token_arms

# Tunable method -> the config section holding its settings.
TUNABLE = {method: "robust" if method in token_arms.ROBUST else method
           for method in token_arms.TUNED}
FAMILY_SET = "tuning"
FILE = "tuning.json"  # the tables of a run, in its workdir
# The config sections a tuning run depends on (besides the noise, setting and start).
SETTINGS_KEYS = ("steps", "optimizer", "batch_size", "model", "tasks", "data", "loss_truncation",
                 "robust", "early_stopping", "eval")


def check(config) -> None:
    """UserError for a grid of a method that cannot be tuned, a setting its section lacks, an
    empty grid or negative tuning seeds."""
    grids = config.tuning.grids
    for method, grid in grids.items():
        if method not in TUNABLE:
            raise errors.UserError(f"tuning.grids.{method}: {method!r} has no settings to tune; "
                                   f"tunable methods are {sorted(TUNABLE)}")
        section = config[TUNABLE[method]]
        for key, values in grid.items():
            if key not in section:
                raise errors.UserError(f"tuning.grids.{method}.{key}: {TUNABLE[method]} has no "
                                       f"field {key!r}; its fields are {sorted(section)}")
            if not values:
                raise errors.UserError(f"tuning.grids.{method}.{key} is empty; give it at "
                                       f"least one value")
    if config.tuning.seeds < 0:
        raise errors.UserError(f"tuning.seeds is {config.tuning.seeds}; give 0 (the configured "
                               f"settings, untuned) or more")


def candidates(config, method: str) -> list[dict[str, Any]]:
    """The settings tried for `method`, in grid order (every combination of its grid's values;
    one empty setting for a hand-made method without a grid)."""
    grid = config.tuning.grids.get(method, {})
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def apply(config, method: str, setting: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """An unlocked copy of `config` with `setting` written into `method`'s section."""
    out = ml_collections.ConfigDict(config.to_dict())
    if setting:
        out[TUNABLE[method]].update(dict(setting))
    return out


def families(config) -> tuple[str, ...]:
    return tuple(config.tuning.families)


def view(config) -> ml_collections.ConfigDict:
    """The config as token_arms reads it for a tuning run: one family set, FAMILY_SET."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.family_sets = {FAMILY_SET: families(config)}
    return out


def settings_hash(config, method: str, noise: str, setting: Mapping[str, Any],
                  start: str) -> str:
    """The hash of what one tuning record depends on: the sections of SETTINGS_KEYS, the
    families, noise kind, method, setting and the start ('' for a fresh initialisation, else a
    name of the parameters every run starts from, such as a pre-training cache key)."""
    values = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
              for k in SETTINGS_KEYS}
    values.update(families=list(families(config)), noise=config.noises[noise].to_dict(),
                  method=method, setting=dict(setting), start=start)
    return provenance.config_hash(values)


def _key(method: str, noise: str, index: int, seed: int) -> str:
    return f"{method}-{noise}-c{index}-s{seed}"


def choose(config, workdir: str, method: str, noise: str, *, init_params: Any = None,
           start: str = "", log=print) -> dict:
    """Runs the unfinished tuning runs of (method, noise) and returns its table:
    {'method', 'noise', 'candidates': [{'setting', 'scores' (per seed), 'mean', 'ci95'}],
    'chosen' (the setting with the best mean), 'score' (its mean)}.

    init_params: the parameters every run starts from (the comparison's pre-trained model),
    named by `start` in the records' settings hash; None: a fresh initialisation per seed."""
    kept = store.Store(os.path.join(workdir, "tuning"))
    tuned_view = view(config)
    seeds = list(range(config.tuning.seeds))
    data: dict[int, token_arms.Data] = {}  # built for the seeds that train, once
    rows = []
    for index, setting in enumerate(candidates(config, method)):
        cfg = apply(tuned_view, method, setting)
        digest = settings_hash(config, method, noise, setting, start)
        found = {s: kept.read(_key(method, noise, index, s), digest) for s in seeds}
        todo = [s for s in seeds if found[s] is None]
        if todo:
            for s in todo:
                if s not in data:
                    data[s] = token_arms.build_data(tuned_view, FAMILY_SET, noise, s)
            t0 = time.time()
            cells = [token_arms.Cell(FAMILY_SET, noise, method, cfg.model.variant, s)
                     for s in todo]
            model, inners, _ = token_arms.train_cells(cfg, cells, [data[s] for s in todo],
                                                      init_params=init_params)
            seconds = (time.time() - t0) / len(todo)
            for s, inner in zip(todo, inners):
                em = token_arms.exact_match(cfg, model, inner["params"], data[s])
                found[s] = kept.write(_key(method, noise, index, s), digest, {
                    "method": method, "noise": noise, "setting": dict(setting), "seed": s,
                    "exact_match": em, "seconds": seconds})
            log(f"tuning {method} {setting or '(no settings)'} on {noise}: exact match "
                + ", ".join(f"{found[s]['exact_match']:.3f}" for s in seeds))
        scores = [found[s]["exact_match"] for s in seeds]
        mean, half = statistics.mean_ci(scores)
        rows.append({"setting": dict(setting), "scores": scores, "mean": mean, "ci95": half})
    best = max(range(len(rows)), key=lambda i: (rows[i]["mean"], -i))
    return {"method": method, "noise": noise, "candidates": rows,
            "chosen": rows[best]["setting"], "score": rows[best]["mean"]}


def run(config, workdir: str, pairs: Sequence[tuple[str, str]], *, init_params: Any = None,
        start: str = "", log=print) -> list[dict]:
    """The tables (`choose`) of the hand-made methods of (method, noise) `pairs`, in that order;
    WORKDIR/tuning.json keeps them. None when `tuning.seeds` is 0 (nothing is tuned)."""
    check(config)
    if not config.tuning.seeds:
        return []
    pairs = [p for p in dict.fromkeys(pairs) if p[0] in token_arms.HAND_MADE]
    tables = [choose(config, workdir, method, noise, init_params=init_params, start=start,
                     log=log) for method, noise in pairs]
    files.write_json(os.path.join(workdir, FILE), tables)
    return tables


def chosen(tables: Sequence[Mapping[str, Any]], method: str, noise: str) -> dict[str, Any]:
    """The setting `tables` chose for (method, noise); {} (the configured one) when none did."""
    for t in tables:
        if (t["method"], t["noise"]) == (method, noise):
            return t["chosen"]
    return {}


def best_baselines(tables: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """noise -> `best_baseline` of that noise, for every noise kind of `tables` in order."""
    return {noise: best_baseline(tables, noise)
            for noise in dict.fromkeys(t["noise"] for t in tables)}


def best_baseline(tables: Sequence[Mapping[str, Any]], noise: str) -> str:
    """The hand-made method with the best tuning score on `noise` (the first of `tables` among
    equals): chosen on the tuning families, never on a test result of the evaluation families.
    UserError when no table is of that noise."""
    of_noise = [t for t in tables if t["noise"] == noise]
    if not of_noise:
        raise errors.UserError(f"no hand-made baseline was tuned on noise {noise!r}; add one of "
                               f"{token_arms.HAND_MADE} to the methods")
    return max(enumerate(of_noise), key=lambda it: (it[1]["score"], -it[0]))[1]["method"]


HEADER = ("noise", "method", "setting", "exact match on the tuning families (95% CI)", "seeds",
          "chosen")


def table_rows(tables: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The tuning table's rows (columns `HEADER`): every setting tried, its mean exact match on
    the tuning families' test inputs with a 95% CI over the tuning seeds, the chosen one
    marked."""
    return [[t["noise"], t["method"],
             ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "-",
             f"{r['mean']:.3f} ± {r['ci95']:.3f}", str(len(r["scores"])),
             "yes" if r["setting"] == t["chosen"] else ""]
            for t in tables for r in t["candidates"]]


def markdown(tables: Sequence[Mapping[str, Any]]) -> str:
    """The tuning table (`table_rows`) in Markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(tables)]
    return "\n".join(lines) + "\n"
