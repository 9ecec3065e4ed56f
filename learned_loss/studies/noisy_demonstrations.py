"""Fine-tuning from noisy demonstrations: objectives compared cell by cell, over seeds.

The grid is every (family set, noise, method, model, seed) of the config (`grid`); each cell
trains and is scored by token_arms.py (the methods and what a seed resamples are described
there). Each cell's result is a JSON file under WORKDIR/cells/ (core/store.py) keyed by the hash
of its settings: a re-run skips finished cells and refuses ones computed under other settings.
It records the data the method saw (`data_seen`) and per-prompt correctness.
`summarize` gives per (set, noise, method, model) the mean and a 95% Student-t
confidence interval over seeds, and the paired difference from MLE (same seeds) with its paired
t-test p, raw and Holm-adjusted over every test against MLE (learned_loss/studies/statistics.py);
`write_summary` leads summary.md with the generated findings and writes findings.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Iterable, Mapping, Sequence

from learned_loss.core import errors, files, provenance, store
from learned_loss.studies import statistics, token_arms, tuning
from learned_loss.studies.token_arms import Cell


def grid(config) -> list[Cell]:
    """Every cell of the config, in the order they run: noise kind by noise kind
    (`config.noise_order`), each over the family sets of `config.set_order`."""
    unknown = [n for n in config.noise_order if n not in config.noises]
    if unknown:
        raise errors.UserError(f"noise_order names {unknown}, which are not in config.noises "
                               f"{sorted(config.noises)}; add them there or drop them from "
                               f"the order")
    unknown = [s for s in config.set_order if s not in config.family_sets]
    if unknown:
        raise errors.UserError(f"set_order names {unknown}, which are not in config.family_sets "
                               f"{sorted(config.family_sets)}; add them there or drop them from "
                               f"the order")
    cells = []
    for noise in config.noise_order:
        for family_set in config.set_order:
            for seed in range(config.seeds):
                for method in config.methods:
                    cells.append(Cell(family_set, noise, method, config.model.variant, seed))
    for noise in config.transfer.noises:
        for seed in range(config.seeds):
            for method in config.transfer.methods:
                cells.append(Cell(config.set_order[0], noise, method,
                                  config.transfer.model.variant, seed))
    return cells


def run_cells(config, workdir: str, cells: Sequence[Cell], log=print) -> list[dict]:
    """Runs every unfinished cell, writing WORKDIR/cells/KEY.json. The hand-made methods are
    tuned first (learned_loss/studies/tuning.py), and each of their cells trains with its
    tuned setting. The unfinished seeds of one (family set, noise, method, model) train
    together (`train_cells`); a cell's `seconds` is its share of that group's wall time. The
    families' roles are checked first."""
    token_arms.check_roles(config, cells)
    tables = tuning.run(config, workdir, [(c.method, c.noise) for c in cells], log=log)
    configs = {c.key: tuning.apply(config, c.method, tuning.chosen(tables, c.method, c.noise))
               for c in cells}
    data_cache: dict[tuple[str, str, int], token_arms.Data] = {}
    kept = store.Store(os.path.join(workdir, "cells"))
    settings = {cell.key: cell_settings(configs[cell.key], cell) for cell in cells}
    done: dict[str, dict] = {}
    for cell in cells:
        found = kept.read(cell.key, settings[cell.key])
        if found is not None:
            done[cell.key] = found
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        if cell.key not in done:
            groups.setdefault((cell.family_set, cell.noise, cell.method, cell.model), []
                              ).append(cell)
    todo = sum(len(g) for g in groups.values())
    start, finished = time.time(), 0
    for (family_set, noise, method, _), group in groups.items():
        for cell in group:
            if (family_set, noise, cell.seed) not in data_cache:
                data_cache[(family_set, noise, cell.seed)] = token_arms.build_data(
                    config, family_set, noise, cell.seed)
        data = [data_cache[(family_set, noise, c.seed)] for c in group]
        cfg = configs[group[0].key]
        t0 = time.time()
        model, inners, facts = token_arms.train_cells(cfg, group, data)
        for i, (cell, inner) in enumerate(zip(group, inners)):
            cell_facts = dict(facts)
            for key in token_arms.PER_CELL_FACTS:
                if key in facts:
                    cell_facts[key] = facts[key][i]
            scored = token_arms.score(cfg, model, inner["params"], data[i])
            result = dict(dataclasses.asdict(cell), **scored, **cell_facts,
                          data_hash=data[i].info.config_hash,
                          data_seen=token_arms.data_seen(cfg, method, data[i]))
            done[cell.key] = result
        seconds = (time.time() - t0) / len(group)
        for cell in group:
            done[cell.key] = kept.write(cell.key, settings[cell.key],
                                        dict(done[cell.key], seconds=seconds))
        finished += len(group)
        eta = (time.time() - start) / finished * (todo - finished)
        scores = ", ".join(f"{done[c.key]['exact_match']:.3f}" for c in group)
        log(f"[{finished}/{todo}] {group[0].key} x{len(group)} seeds: exact match {scores} "
            f"({seconds:.0f}s a cell, ETA {eta / 60:.0f} min)")
    return [done[c.key] for c in cells]


# What a cell's numbers do not depend on: which cells there are (the other family sets, noise
# kinds, methods and seeds) and the interpretation settings.
# The tuning section is there too: a tuned cell's config holds its chosen setting.
GRID_KEYS = ("variant", "family_sets", "set_order", "noises", "noise_order", "methods", "seeds",
             "transfer", "interpret", "tuning")


def cell_settings(config, cell: Cell) -> str:
    """The hash of the settings behind one cell: the config without GRID_KEYS and the sections
    its method does not read (`token_arms.unread`), plus the cell's families, noise kind and
    model."""
    drop = GRID_KEYS + token_arms.unread(cell.method)
    values = {k: v for k, v in config.to_dict().items() if k not in drop}
    values["families"] = list(config.family_sets[cell.family_set])
    values["noise"] = config.noises[cell.noise].to_dict()
    if cell.model != config.model.variant:
        values["model"] = config.transfer.model.to_dict()
    return provenance.config_hash(values)


def _group(family_set: str, noise: str, model: str) -> str:
    return f"{family_set}/{noise}/{model}"


def _by_method(results: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple, dict[int, float]]:
    """(family set, noise, model, method) -> {seed: metric}."""
    groups: dict[tuple, dict[int, float]] = {}
    for r in results:
        groups.setdefault((r["family_set"], r["noise"], r["model"], r["method"]), {})[
            r["seed"]] = r[metric]
    return groups


def vs_mle_tests(results: Iterable[Mapping[str, Any]], metric: str = "exact_match"
                 ) -> list[dict]:
    """Each method against MLE of the same family set, noise and model, paired over the seeds
    both have: statistics.paired of `metric` with 'a' (the method), 'b' ('mle') and 'group'
    ('set/noise/model'), sorted by group and method."""
    groups = _by_method(results, metric)
    tests = []
    for (family_set, noise, model, method), by_seed in sorted(groups.items()):
        base = groups.get((family_set, noise, model, "mle"))
        if method != "mle" and base is not None and set(base) & set(by_seed):
            tests.append(dict(a=method, b="mle", group=_group(family_set, noise, model),
                              **statistics.paired(by_seed, base)))
    return tests


def summarize(results: Iterable[Mapping[str, Any]], metric: str = "exact_match") -> list[dict]:
    """Rows per (family set, noise, model, method): mean +- 95% CI of `metric` over seeds and,
    against MLE of the same seeds, the paired difference ('vs_mle', 'vs_mle_ci95'), its
    paired t-test p ('vs_mle_p') and that p Holm-adjusted over all of this metric's tests
    against MLE ('vs_mle_p_adjusted')."""
    results = list(results)
    against = {(f["group"], f["a"]): f
               for f in statistics.findings(vs_mle_tests(results, metric), "holm")}
    rows = []
    for (family_set, noise, model, method), by_seed in sorted(_by_method(results,
                                                                         metric).items()):
        mean, half = statistics.mean_ci(list(by_seed.values()))
        row = {"family_set": family_set, "noise": noise, "model": model, "method": method,
               "mean": mean, "ci95": half, "n": len(by_seed)}
        test = against.get((_group(family_set, noise, model), method))
        if test is not None:
            row.update(vs_mle=test["mean"], vs_mle_ci95=test["ci95"], vs_mle_p=test["p"],
                       vs_mle_p_adjusted=test["p_adjusted"])
        rows.append(row)
    return rows


def write_summary(workdir: str, results: Sequence[Mapping[str, Any]]) -> dict:
    """WORKDIR/summary.json, findings.json and summary.md: findings on exact match (every
    test against MLE corrected together by Holm's method, each stated as a generated
    sentence), then the exact match, graded and test NLL tables."""
    summary = {m: summarize(results, m) for m in ("exact_match", "graded", "test_nll")}
    found = statistics.findings(vs_mle_tests(results), "holm")
    files.write_json(os.path.join(workdir, "summary.json"), summary)
    files.write_json(os.path.join(workdir, "findings.json"),
                     statistics.findings_record(found, "holm"))
    how = (f"Exact match on the clean test inputs, each method against mle of the same "
           f"set/noise/model, paired over seeds (two-sided paired t-test): {len(found)} "
           f"comparisons corrected together by {statistics.NAMES['holm']} at alpha "
           f"{statistics.ALPHA}.")
    text = "".join(f"{p}\n\n" for p in ["## Findings", how] + [f["text"] for f in found])
    text += "".join(f"## {m}\n\n{markdown(rows, m)}\n" for m, rows in summary.items())
    text += tuning_section(workdir)
    files.write_atomic(os.path.join(workdir, "summary.md"), text)
    return summary


def tuning_section(workdir: str) -> str:
    """summary.md's tuning section from WORKDIR/tuning.json ('' when nothing was tuned): every
    setting tried and, per noise kind, the best hand-made baseline on the tuning families."""
    path = os.path.join(workdir, tuning.FILE)
    if not files.exists(path):
        return ""
    tables = files.read_json(path)
    best = [f"Best hand-made baseline on {noise} (chosen on the tuning families): {method}."
            for noise, method in tuning.best_baselines(tables).items()]
    return "## Tuning\n\n" + tuning.markdown(tables) + "\n" + "\n\n".join(best) + "\n"


def markdown(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """A summary table: mean ± 95% CI, the paired difference from MLE with its raw and
    Holm-adjusted p, and the seeds."""
    lines = [f"| set | noise | model | method | {metric} (95% CI) | vs MLE (paired) | p | "
             f"adjusted p ({statistics.NAMES['holm']}) | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tested = ["", "", ""]
        if "vs_mle" in r:
            tested = [f"{r['vs_mle']:+.3f} ± {r['vs_mle_ci95']:.3f}",
                      statistics.format_p(r["vs_mle_p"]),
                      statistics.format_p(r["vs_mle_p_adjusted"])]
        cells = ([r["family_set"], r["noise"], r["model"], r["method"],
                  f"{r['mean']:.3f} ± {r['ci95']:.3f}"] + tested + [str(r["n"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
