"""Fine-tuning from noisy demonstrations: objectives compared cell by cell, over seeds.

A cell is (family set, noise, method, model, seed). Each trains a fresh model on the family
set's noisy train split with the method, then scores greedy exact match and the graded score on
the set's clean `test` split (inputs no run, and no meta-training, ever saw), plus the answer
negative log-likelihood there. Family sets: `train` (the families the learned objective was
meta-trained on: held-out inputs) and `transfer` (families meta-training never saw: held-out
families for the objective).

Methods (all with the same inner optimizer and batch):
  mle               maximum likelihood on the noisy demonstrations
  mle_clean_valid   MLE with the clean validation examples (what the meta-learned methods see
                    as their meta-objective) added to the training data
  mle_2x            MLE with twice the step budget
  loss_truncation   Kang and Hashimoto 2020 (objectives/loss_truncation.py)
  learned_offline   the learned token loss of a meta-training artifact, frozen
  learned_online    Meta-Weight-Net-style online meta-weighting on the clean validation examples
  learned_closed_form  a closed form fitted to learned_offline's network (interpret.py), frozen

Each cell's result is a JSON file under WORKDIR/cells/ written atomically: a re-run skips
finished cells. `summarize` gives per (set, noise, method, model) the mean and a 95% Student-t
confidence interval over seeds, and the paired difference from MLE (same seeds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from learned_loss import evaluation, objectives
from learned_loss import model as model_lib
from learned_loss.data import instruction_tasks, paths, tasks
from learned_loss.meta import base, lm_problem, outer

METHODS = ("mle", "mle_clean_valid", "mle_2x", "loss_truncation", "learned_offline",
           "learned_online")
# Also available: the closed form fitted to the offline artifact (learned_loss/meta/interpret.py).
EXTRA_METHODS = ("learned_closed_form",)


@dataclasses.dataclass(frozen=True)
class Cell:
    family_set: str
    noise: str
    method: str
    model: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.family_set}-{self.noise}-{self.method}-{self.model}-s{self.seed}"


def grid(config) -> list[Cell]:
    """Every cell of the config, in the order they run: noise kind by noise kind
    (`config.noise_order`), each over the family sets of `config.set_order`."""
    unknown = [n for n in config.noise_order if n not in config.noises]
    if unknown:
        raise ValueError(f"noise_order names {unknown}, which are not in config.noises "
                         f"{sorted(config.noises)}; add them there or drop them from the order")
    unknown = [s for s in config.set_order if s not in config.family_sets]
    if unknown:
        raise ValueError(f"set_order names {unknown}, which are not in config.family_sets "
                         f"{sorted(config.family_sets)}; add them there or drop them from the order")
    cells = []
    for noise in config.noise_order:
        for family_set in config.set_order:
            for seed in range(config.seeds):
                for method in config.methods:
                    cells.append(Cell(family_set, noise, method, config.model.variant, seed))
    for noise in config.transfer.noises:
        for seed in range(config.seeds):
            for method in config.transfer.methods:
                cells.append(Cell("train", noise, method, config.transfer.model.variant, seed))
    return cells


@dataclasses.dataclass
class Data:
    train: lm_problem.Demonstrations  # noisy
    valid: lm_problem.Demonstrations  # clean: the meta-objective of the learned methods
    test_rows: lm_problem.Demonstrations  # clean held-out inputs
    test_examples: list
    info: Any


def build_data(config, family_set: str, noise: str) -> Data:
    """The demonstrations of one (family set, noise kind)."""
    families = tuple(config.family_sets[family_set])
    spec = config.noises[noise]
    t = config.tasks
    info = instruction_tasks.build_instruction_tasks(
        paths.data_dir(config.data.data_dir), families=tasks.training_families(
            families, t.train_split, seed=t.split_seed,
            meta_valid_fraction=t.meta_valid_fraction, heldout_fraction=t.heldout_fraction),
        examples_per_family=t.examples_per_family,
        difficulty=instruction_tasks.difficulty_range(t.difficulty),
        label_noise=float(spec.rho), seed=t.seed, seq_len=config.data.seq_len,
        noise_kinds=tuple(spec.kinds), splits=dict(config.data.splits))
    seq_len = config.data.seq_len
    rows = {split: lm_problem.encode_records(instruction_tasks.load_split(info, split), seq_len)
            for split in ("train", "validation", "test")}
    test = instruction_tasks.load_split(info, "test")
    examples = sorted((instruction_tasks.to_example(test[i], gold=True)
                       for i in range(len(test))), key=lambda e: (e.family, e.prompt))
    per_family: dict[str, list] = {}
    for e in examples:
        per_family.setdefault(e.family, []).append(e)
    chosen = [e for f in sorted(per_family) for e in per_family[f][:config.eval.per_family]]
    return Data(rows["train"], rows["validation"], rows["test"], chosen, info)


def model_of(cfg) -> model_lib.Model:
    return model_lib.build(model_lib.ModelConfig.from_config(cfg))


def method_objective(config, method: str, noise: str) -> tuple[objectives.Objective, str]:
    """(objective, where its theta came from) of a method."""
    if method in ("mle", "mle_clean_valid", "mle_2x"):
        return objectives.build("mle"), ""
    if method == "loss_truncation":
        lt = config.loss_truncation
        return objectives.build({"name": "loss_truncation", "drop_fraction": lt.drop_fraction,
                                 "warmup_steps": lt.warmup_steps}), ""
    if method in ("learned_offline", "learned_closed_form"):
        field = "artifacts" if method == "learned_offline" else "closed_forms"
        paths_by_noise = dict(config.learned[field])
        path = paths_by_noise.get(noise) or paths_by_noise.get("default", "")
        if not path:
            raise ValueError(f"{method} needs learned.{field}[{noise!r}] or ['default']: "
                             f"an artifact of experiments/meta_train.py (artifacts) or of "
                             f"experiments/interpret_objective.py (closed_forms)")
        return objectives.build({"name": "learned_token_loss", "path": path}), path
    if method == "learned_online":
        return objectives.build({"name": "learned_token_loss",
                                 "features": tuple(config.learned.online_features),
                                 "hidden": config.learned.hidden}), "online"
    raise ValueError(f"unknown method {method!r}; choose among {METHODS + EXTRA_METHODS}")


def train_cells(config, cells: Sequence[Cell], data: Data, *, init_params: Any = None,
                segments: int = 1, on_segment=None) -> tuple[Any, list[Any], dict]:
    """Trains the models of `cells`, which differ only in their seed, as one program vmapped
    over the seeds (each seed its own initialisation, batches and, online, theta).

    init_params: the parameters every seed starts from (a pre-trained checkpoint; its model
    must be `config.model`); None: a fresh initialisation from each seed's key.
    segments: the run is cut into this many equal spans of steps, and after each one but the
    last `on_segment(step, model, inners)` is called with the per-cell inner states (for
    learning curves). Segments draw their own keys, so a run in several differs from a run in
    one.

    Returns (model, per-cell final inner states {'params', ..., 'reference' when the objective
    reads one}, facts shared by the cells). Online, facts['online_skipped'] is per cell.
    """
    first = cells[0]
    if any(dataclasses.replace(c, seed=first.seed) != first for c in cells):
        raise ValueError(f"cells of one group must differ only in seed: {cells}")
    model_cfg = config.model if first.model == config.model.variant else config.transfer.model
    model = model_of(model_cfg)
    objective, source = method_objective(config, first.method, first.noise)
    train_rows = data.train
    if first.method == "mle_clean_valid":
        train_rows = lm_problem.concatenate([data.train, data.valid])
    steps = config.steps * (2 if first.method == "mle_2x" else 1)
    optimizer = lm_problem.inner_optimizer(config.lr)
    problem = lm_problem.lm_problem(model, optimizer, objective, train_rows, data.valid,
                                    batch_size=config.batch_size,
                                    valid_batch_size=config.batch_size,
                                    seq_len=config.data.seq_len, init_params=init_params)
    keys = jnp.stack([jax.random.split(jax.random.key(c.seed)) for c in cells])  # [S, 2]
    theta = jax.tree.map(jnp.asarray, objective.theta)
    online = first.method == "learned_online"
    if online:
        opt = outer.make_optimizer(config.learned.online_outer)
        step = outer.online_step(problem, opt, lookahead=config.learned.lookahead)

        def init(theta, init_key):
            return theta, opt.init(theta), problem.init(init_key), jnp.zeros(())

        def advance(carry, run_key, n):
            def body(carry, k):
                theta, opt_state, inner = carry
                theta, opt_state, inner, m = step(theta, opt_state, inner, k)
                return (theta, opt_state, inner), m["skipped"]

            theta, opt_state, inner, skipped = carry
            (theta, opt_state, inner), s = jax.lax.scan(
                body, (theta, opt_state, inner), jax.random.split(run_key, n))
            return theta, opt_state, inner, skipped + s.sum()
    else:
        def init(theta, init_key):
            return theta, problem.init(init_key)

        def advance(carry, run_key, n):
            theta, inner = carry
            return theta, base.unroll(problem, theta, inner, run_key, n)[0]

    def per_cell(carry) -> list[Any]:
        inner = carry[2] if online else carry[1]
        return [jax.tree.map(lambda x, i=i: x[i], inner) for i in range(len(cells))]

    bounds = [round(steps * i / segments) for i in range(segments + 1)]
    if segments == 1:
        def whole(theta, init_key, run_key):
            return advance(init(theta, init_key), run_key, steps)

        carry = jax.jit(jax.vmap(whole, in_axes=(None, 0, 0)))(theta, keys[:, 0], keys[:, 1])
    else:
        seg_keys = jax.vmap(lambda k: jax.random.split(k, segments))(keys[:, 1])  # [S, G]
        carry = jax.jit(jax.vmap(init, in_axes=(None, 0)))(theta, keys[:, 0])
        span = jax.jit(jax.vmap(advance, in_axes=(0, 0, None)), static_argnums=2)
        for g in range(segments):
            carry = span(carry, seg_keys[:, g], bounds[g + 1] - bounds[g])
            if on_segment is not None and g < segments - 1:
                on_segment(bounds[g + 1], model, per_cell(carry))
    inners = per_cell(carry)
    facts = {"steps": steps, "theta_source": source, "train_rows": len(train_rows),
             "corrupted_rows": int(train_rows.corrupted.sum()),
             "params": model_lib.param_count(inners[0]["params"]),
             "seeds_vmapped": len(cells)}
    if online:
        facts["online_skipped"] = [float(s) for s in np.asarray(carry[3])]
    return model, inners, facts


def train_cell(config, cell: Cell, data: Data) -> tuple[Any, dict]:
    """One cell (`train_cells` of one seed). Returns ((model, final inner state), facts)."""
    model, inners, facts = train_cells(config, [cell], data)
    if "online_skipped" in facts:
        facts["online_skipped"] = facts["online_skipped"][0]
    return (model, inners[0]), facts


_answer_nll = jax.jit(lm_problem.answer_nll, static_argnums=0)


def score(config, model, params, data: Data, *, reference_params: Any = None,
          rng: jax.Array | None = None) -> dict:
    """Greedy exact match, graded score and completion length on the clean test prompts, and
    the test NLL; with `reference_params`, also the sequence-level KL to that model ('kl',
    sampled with `rng`)."""
    result = evaluation.evaluate(model, params, data.test_examples,
                                 batch_size=config.eval.batch_size,
                                 max_new_tokens=config.eval.max_new_tokens,
                                 reference_params=reference_params, rng=rng)
    rows = {k: jnp.asarray(v) for k, v in data.test_rows.batch().items()}
    overall = result["overall"]
    out = {"exact_match": overall["exact_match"], "graded": overall["graded"],
           "length": overall["length"], "test_nll": float(_answer_nll(model, params, rows)),
           "families": {f: v["exact_match"] for f, v in result["families"].items()}}
    if reference_params is not None:
        out["kl"] = overall["kl_to_reference"]
    return out


def run_cells(config, workdir: str, cells: Sequence[Cell], log=print) -> list[dict]:
    """Runs every unfinished cell, writing WORKDIR/cells/KEY.json. The unfinished seeds of one
    (family set, noise, method, model) train together (`train_cells`); a cell's `seconds` is
    its share of that group's wall time."""
    os.makedirs(os.path.join(workdir, "cells"), exist_ok=True)
    data_cache: dict[tuple[str, str], Data] = {}
    done: dict[str, dict] = {}
    for cell in cells:
        if os.path.exists(_cell_path(workdir, cell)):
            with open(_cell_path(workdir, cell)) as f:
                done[cell.key] = json.load(f)
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        if cell.key not in done:
            groups.setdefault((cell.family_set, cell.noise, cell.method, cell.model), []
                              ).append(cell)
    todo = sum(len(g) for g in groups.values())
    start, finished = time.time(), 0
    for (family_set, noise, _, _), group in groups.items():
        if (family_set, noise) not in data_cache:
            data_cache[(family_set, noise)] = build_data(config, family_set, noise)
        data = data_cache[(family_set, noise)]
        t0 = time.time()
        model, inners, facts = train_cells(config, group, data)
        for i, (cell, inner) in enumerate(zip(group, inners)):
            cell_facts = dict(facts)
            if "online_skipped" in facts:
                cell_facts["online_skipped"] = facts["online_skipped"][i]
            result = dict(dataclasses.asdict(cell), **score(config, model, inner["params"], data),
                          **cell_facts, data_hash=data.info.config_hash)
            done[cell.key] = result
        seconds = (time.time() - t0) / len(group)
        for cell in group:
            done[cell.key]["seconds"] = seconds
            evaluation.write_json(_cell_path(workdir, cell), done[cell.key])
        finished += len(group)
        eta = (time.time() - start) / finished * (todo - finished)
        scores = ", ".join(f"{done[c.key]['exact_match']:.3f}" for c in group)
        log(f"[{finished}/{todo}] {group[0].key} x{len(group)} seeds: exact match {scores} "
            f"({seconds:.0f}s a cell, ETA {eta / 60:.0f} min)")
    return [done[c.key] for c in cells]


def _cell_path(workdir: str, cell: Cell) -> str:
    return os.path.join(workdir, "cells", cell.key + ".json")


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean and the Student-t confidence interval half-width (0 with one value)."""
    x = np.asarray(values, np.float64)
    n = len(x)
    half = 0.0
    if n > 1:
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": float(x.mean()), "ci95": half, "n": n}


def summarize(results: Iterable[Mapping[str, Any]], metric: str = "exact_match") -> list[dict]:
    """Rows per (family set, noise, model, method): mean +- 95% CI of `metric` over seeds and
    the paired difference from MLE of the same seeds."""
    groups: dict[tuple, dict[int, float]] = {}
    for r in results:
        groups.setdefault((r["family_set"], r["noise"], r["model"], r["method"]), {})[
            r["seed"]] = r[metric]
    rows = []
    for (family_set, noise, model, method), by_seed in sorted(groups.items()):
        row = {"family_set": family_set, "noise": noise, "model": model, "method": method,
               **mean_ci(list(by_seed.values()))}
        base_ = groups.get((family_set, noise, model, "mle"), {})
        common = sorted(set(base_) & set(by_seed))
        if method != "mle" and common:
            diff = mean_ci([by_seed[s] - base_[s] for s in common])
            row.update(vs_mle=diff["mean"], vs_mle_ci95=diff["ci95"])
        rows.append(row)
    return rows


def write_summary(workdir: str, results: Sequence[Mapping[str, Any]]) -> dict:
    """WORKDIR/summary.json and summary.md: exact match and test NLL tables."""
    summary = {m: summarize(results, m) for m in ("exact_match", "graded", "test_nll")}
    evaluation.write_json(os.path.join(workdir, "summary.json"), summary)
    text = "".join(f"## {m}\n\n{markdown(rows, m)}\n" for m, rows in summary.items())
    tmp = os.path.join(workdir, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(workdir, "summary.md"))
    return summary


def markdown(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    lines = [f"| set | noise | model | method | {metric} (95% CI) | vs MLE (paired) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = (f"{r['vs_mle']:+.3f} ± {r['vs_mle_ci95']:.3f}" if "vs_mle" in r else "")
        lines.append(f"| {r['family_set']} | {r['noise']} | {r['model']} | {r['method']} | "
                     f"{r['mean']:.3f} ± {r['ci95']:.3f} | {vs} | {r['n']} |")
    return "\n".join(lines) + "\n"
