"""The task-diversity study (experiments/diversity.py), after Chung et al. 2022 ("Scaling
instruction-finetuned language models", Flan): does fine-tuning on more task families, at a
fixed budget, help on families never trained on, and do the gains diminish?

`run(config, workdir)`:
  1. the pre-trained model (learned_loss/studies/compare.py's cache, keyed by the hash of
  `pretrain`);
  2. for each seed, a seeded order of the meta-train families; for each count k in `counts`
     (0: all of them) the first k families of that order (nested subsets), `rows`
     demonstrations drawn round-robin over them (training_rows.sample_demonstrations), and
     `steps` MLE steps of `batch` rows from the pre-trained parameters: the same budget for
     every k;
  3. greedy exact match and graded score on the held-out families (the task suite's `heldout`
     split, which no training path may use) and on fresh inputs of the trained families;
  4. WORKDIR/diversity/COUNT-sSEED.json per cell (a re-run skips finished cells) and
     WORKDIR/diversity.json: the cells, the mean and 95% t-interval per count, the gains per
     unit of log(number of families) between successive counts (`gains`), and the change from
     the fewest to the most families paired over seeds (`change`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_loss import objectives
from learned_loss.core import cli, evaluation, files, loop, pretraining, provenance, store, train
from learned_loss.core import model as model_lib
from learned_loss.data import tasks, training_rows

from learned_loss.report import render as report

STUDY_FILE = "diversity.json"
CELLS = "diversity"
METRICS = ("exact_match", "graded")


def train_families(config) -> tuple[str, ...]:
    """The fine-tuning families (`tasks.roles.resolve` refuses a held-out one)."""
    return tasks.roles.resolve(config.tasks, "finetune")


def heldout_families(config) -> tuple[str, ...]:
    return tasks.roles.heldout(config.tasks)


def family_order(families: Sequence[str], seed: int) -> tuple[str, ...]:
    """The families in a seeded order; the first k are seed's subset of size k."""
    rng = np.random.default_rng([seed, 7727])
    return tuple(families[i] for i in rng.permutation(len(families)))


def resolve_counts(counts: Sequence[int], available: int) -> list[int]:
    """`counts` with 0 read as every family; each must be in [1, available]."""
    out = [available if int(k) == 0 else int(k) for k in counts]
    bad = [k for k in out if not 1 <= k <= available]
    if bad or not out:
        raise cli.UserError(f"counts must be between 1 and the {available} training families "
                            f"(0: all), got {tuple(counts)}")
    return sorted(set(out))


def _fits(example: tasks.Example, seq_len: int, max_new_tokens: int) -> bool:
    """Whether the prompt and the longest completion fit in seq_len tokens."""
    return len(tasks.prompt_tokens(example)) + max_new_tokens <= seq_len


def eval_examples(families: Sequence[str], config) -> list[tasks.Example]:
    """`eval.per_family` fixed prompts of each family that fit with the longest completion."""
    e = config.eval
    pool = evaluation.sample_examples(families, per_family=4 * e.per_family,
                                      difficulty=config.tasks.difficulty, seed=e.seed)
    out, kept = [], {f: 0 for f in families}
    for example in pool:
        if kept[example.family] < e.per_family and _fits(example, config.data.seq_len,
                                                         e.max_new_tokens):
            kept[example.family] += 1
            out.append(example)
    return out


def make_trainer(model: model_lib.Model, optimizer: optax.GradientTransformation,
                 batch_size: int, steps: int) -> Callable:
    """(params, rows {inputs, targets, mask} [N, T], key) -> params after `steps` MLE steps
    of `batch_size` rows drawn with replacement: one compiled program for every subset."""
    loss = train.objective_loss(model, objectives.build("mle"))

    def run(params, rows, key):
        def body(carry, k):
            params, opt_state = carry
            batch = training_rows.draw(rows, k, batch_size)
            grads = jax.grad(lambda p: loss(p, batch, ())[0])(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        carry = (params, optimizer.init(params))
        (params, _), _ = jax.lax.scan(body, carry, jax.random.split(key, steps))
        return params

    return jax.jit(run)


# ---- statistics -----------------------------------------------------------------------------


def summarise(cells: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per count: mean and 95% t-interval over seeds of the held-out and seen metrics."""
    out = []
    for count in sorted({c["count"] for c in cells}):
        mine = [c for c in cells if c["count"] == count]
        row = {"count": count, "seeds": len(mine)}
        for split in ("heldout", "seen"):
            for m in METRICS:
                row[f"{split}_{m}"] = report.mean_ci([c[split][m] for c in mine])
        out.append(row)
    return out


def gains(summary: Sequence[Mapping[str, Any]], metric: str = "heldout_graded") -> dict:
    """The gain in `metric` per unit of ln(number of families) between successive counts, and
    the curvature of a quadratic fit in ln(k) (negative: the gains diminish)."""
    ks = np.array([r["count"] for r in summary], np.float64)
    ys = np.array([r[metric][0] for r in summary], np.float64)
    steps = [{"from": int(a), "to": int(b), "per_log": float((y1 - y0) / np.log(b / a))}
             for a, b, y0, y1 in zip(ks[:-1], ks[1:], ys[:-1], ys[1:])]
    curvature = float(np.polyfit(np.log(ks), ys, 2)[0]) if len(ks) >= 3 else float("nan")
    slope = float(np.polyfit(np.log(ks), ys, 1)[0]) if len(ks) >= 2 else float("nan")
    return {"metric": metric, "steps": steps, "slope_per_log": slope, "curvature": curvature,
            "diminishing": bool(len(steps) >= 2 and steps[-1]["per_log"] < steps[0]["per_log"]
                                and curvature < 0)}


def examples_hash(examples: Sequence[tasks.Example]) -> str:
    """A short sha256 of the examples' families, prompts and answers (each cell's training rows
    have their own `data_hash`)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.family, e.prompt, e.answer]).encode())
    return h.hexdigest()[:16]


def change(cells: Sequence[Mapping[str, Any]], metric: str = "heldout_graded") -> dict:
    """`metric` at the most families minus at the fewest, paired over the seeds that have both
    (each seed's subsets are nested in one family order): report.paired's mean, 95%
    half-width, p and n, with the two counts. Says whether the curve's shape is resolved at all
    at these seeds."""
    split, name = metric.split("_", 1)
    counts = sorted({c["count"] for c in cells})
    at = {k: {c["seed"]: c[split][name] for c in cells if c["count"] == k} for k in counts}
    return {"from": counts[0], "to": counts[-1], **report.paired(at[counts[-1]], at[counts[0]])}


# ---- the run --------------------------------------------------------------------------------


def check(config) -> list[int]:
    """Refuses what the study cannot run; returns the resolved counts."""
    if config.seeds < 1:
        raise cli.UserError(f"seeds must be at least 1, got {config.seeds}")
    if config.steps < 1 or config.rows < config.batch:
        raise cli.UserError(f"need steps >= 1 and rows >= batch, got steps={config.steps}, "
                            f"rows={config.rows}, batch={config.batch}")
    counts = resolve_counts(config.counts, len(train_families(config)))
    if len(counts) < 2:
        raise cli.UserError("a diversity study needs at least 2 distinct family counts")
    return counts


# What a cell does not depend on: which cells there are.
GRID_KEYS = ("variant", "counts", "seeds")


def cell_key(count: int, seed: int) -> str:
    return f"{count:03d}-s{seed}"


def run(config, workdir: str, pretrain_run: Callable[[Any, str], Any],
        log: Callable[[str], None] = print) -> dict:
    """The whole study (module docstring). Returns what diversity.json holds."""
    counts = check(config)
    families = train_families(config)
    heldout = eval_examples(heldout_families(config), config)
    pre = pretraining.cached(config.pretrain, pretrain_run, config.cache_dir)
    provenance.write(workdir, provenance.collect(config, extra={
        "pretrain": {"workdir": pre.workdir, "step": pre.step,
                     "cache_key": pretraining.cache_key(config.pretrain)},
        "train_families": list(families), "heldout_families": sorted({e.family for e in heldout}),
        "counts": counts, "data_hashes": {"heldout_eval": examples_hash(heldout)}}))
    optimizer = train.make_optimizer(config.optimizer, config.steps)
    trainer = make_trainer(pre.model, optimizer, config.batch, config.steps)
    e = config.eval
    settings = provenance.config_hash(config, drop=GRID_KEYS)
    done = store.Store(os.path.join(workdir, CELLS))
    cells = []
    for seed in range(config.seeds):
        order = family_order(families, seed)
        for count in counts:
            cell = done.read(cell_key(count, seed), settings)
            if cell is not None:
                cells.append(cell)
                continue
            loop.raise_if_stopped(f"the cell of {count} families, seed {seed}")
            subset = order[:count]
            start = time.time()
            rows = training_rows.sample_demonstrations(subset, config.rows, config.data.seq_len,
                                                    (config.tasks.difficulty,), seed)
            params = trainer(pre.params, {k: jnp.asarray(v) for k, v in rows.batch().items()},
                             jax.random.key(seed))
            scores = {}
            for split, examples in (("heldout", heldout),
                                    ("seen", eval_examples(subset[:e.seen_families], config))):
                result = evaluation.evaluate(pre.model, params, examples,
                                             batch_size=e.batch_size,
                                             max_new_tokens=e.max_new_tokens)
                scores[split] = {**{m: result["overall"][m] for m in METRICS},
                                 "families": {f: r["exact_match"]
                                              for f, r in result["families"].items()}}
            cell = {"count": count, "seed": seed, "families": list(subset), **scores,
                    "data_hash": training_rows.rows_hash(rows), "seconds": time.time() - start,
                    "tokens": config.steps * config.batch * config.data.seq_len}
            cell = done.write(cell_key(count, seed), settings, cell)
            cells.append(cell)
            log(f"diversity: {count} families, seed {seed}: held-out exact match "
                f"{cell['heldout']['exact_match']:.3f}, graded {cell['heldout']['graded']:.3f}; "
                f"seen {cell['seen']['exact_match']:.3f} ({cell['seconds']:.0f} s)")
    summary = summarise(cells)
    study = {"cells": sorted(cells, key=lambda c: (c["count"], c["seed"])), "summary": summary,
             "gains": {m: gains(summary, f"heldout_{m}") for m in METRICS},
             "change": {m: change(cells, f"heldout_{m}") for m in METRICS},
             "heldout_families": sorted({x.family for x in heldout}),
             "steps": config.steps, "batch": config.batch}
    files.write_json(os.path.join(workdir, STUDY_FILE), study)
    return study
