"""Reports that compare objectives: WORKDIR/report.md, a self-contained WORKDIR/report.html and
WORKDIR/findings.json.

Everything is read from the workdir (nothing is trained or scored again), so a report can be
regenerated from the workdir alone, and the same inputs give byte-identical files: rows and
plots are in a fixed order, numbers are printed at fixed precision, bootstraps are seeded, and
PNGs carry no timestamp.

Inputs (`load`):
  cells/*.json          one fine-tuning run (an objective x noise x seed), with keys
                        objective, noise, seed; metrics {exact_match, graded, kl, length};
                        compute {seconds, tokens}; families {family: exact match};
                        curve [{step, <metric>...}] (learning curve on held-out families);
                        optionally data_seen {noisy_demonstrations, clean_demonstrations,
                        gold_answers_in_pairs, gold_scored_prompts, labeler_queries, tokens,
                        meta_training {seconds, tokens, outer_steps}} (what the arm saw) and
                        per_prompt {input_id, family, exact_match} (read by
                        statistics.prompt_bootstrap, not printed).
  meta/NAME/metrics.jsonl   meta-training curves (meta_loss, meta_valid/...), optional.
  overoptimization.json     best-of-n and RL gold/proxy against d = sqrt(KL) with the fits of
                        Gao et al. 2022 (learned_loss/rlhf/pipeline.py), optional.
  provenance.json       the run's provenance (learned_loss/core/provenance.py); of its last start
  the
                        report reads config.statistics.correction ('holm', the default, or
                        'bh') and extra.evaluation_families and extra.families_by_role
                        ({arm: {role: [families]}}) for the scope sentence.

Statistics (learned_loss/studies/statistics.py): mean and a 95% Student-t interval over seeds. The
tests: every arm against the baseline (MLE) on each noise kind, and the PAIRINGS of which both
arms ran, each a paired t-test of exact match over the seeds both have; all of a report's tests
are corrected together (Holm 1979 by default) and stated as generated findings, which the
report leads with. With an `mle_clean` arm (MLE on the same demonstrations without corruption,
same budget), the fraction of its gap over MLE that each arm recovers, bootstrapped over seeds.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from learned_loss.core import errors, files, hosts
from learned_loss.core import metrics as metrics_lib
from learned_loss.rlhf import overoptimization
from learned_loss.report import studies as study_report
from learned_loss.report.studies import pyplot
from learned_loss.studies import arms, statistics, sweep, tuning
from learned_loss.data.tasks import roles as task_roles
from learned_loss.studies.statistics import mean_ci, paired  # noqa: F401 (re-exported)

# (key in a cell's `metrics` or `compute`, column title, printed digits).
COLUMNS = (("exact_match", "exact match", 3), ("graded", "graded", 3), ("kl", "KL to ref", 3),
           ("length", "length", 2), ("seconds", "seconds", 0), ("tokens", "tokens", 0))
BASELINE = "mle"
CLEAN = "mle_clean"  # MLE on the same demonstrations without corruption, same budget.
# Tested beside every arm against the baseline, where both arms ran: (a, b) tests a - b. Each
# asks whether a learned arm beats the hand-made method it replaces, or an arm beats the MLE
# control that sees its extra clean data (each arm's `controls` in the table of arms).
PAIRINGS = arms.PAIRINGS
# (key in a cell's data_seen, column title); then meta_training's seconds and tokens.
DATA_SEEN = (("noisy_demonstrations", "noisy demonstrations"),
             ("clean_demonstrations", "clean demonstrations"),
             ("gold_answers_in_pairs", "gold answers in pairs"),
             ("gold_scored_prompts", "gold-scored prompts"),
             ("labeler_queries", "labeler queries"), ("tokens", "tokens"))
META_SEEN = (("seconds", "meta-training seconds"), ("tokens", "meta-training tokens"))
# The roles of provenance extra.families_by_role (learned_loss/data/tasks/roles.py: meta roles
# may not use the evaluation families, task roles may), as the report names them.
ROLE_WORDS = {"meta_train": "meta-training", "meta_valid": "meta-validation",
              "fitness": "fitness", "tuning": "tuning", "pretrain_mix": "pre-training mix",
              "finetune": "fine-tuning", "clean_validation": "clean validation",
              "pairs": "preference pairs", "reward_model": "reward model",
              "rl_prompts": "RL prompts"}
META_KEYS = ("meta_loss", "meta_valid/nll", "meta_valid/fitness")
REPORT_MD, REPORT_HTML, FINDINGS, PLOTS = "report.md", "report.html", "findings.json", "plots"
Section, Table = study_report.Section, study_report.Table


class ReportError(errors.UserError):
    """The workdir holds nothing to report, or a file in it is malformed."""


@dataclasses.dataclass
class Inputs:
    cells: list[dict]
    meta: dict[str, list[dict]]  # meta-training name -> metrics records
    overoptimization: dict | None
    provenance: dict | None
    sections: list = dataclasses.field(default_factory=list)  # study_report.Section
    tuning: list = dataclasses.field(default_factory=list)  # the tables of tuning.json


def _read_json(path: str) -> Any:
    try:
        return files.read_json(path)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e}); re-run the cell that wrote it") from e


def check_cell(cell: Mapping[str, Any], path: str) -> None:
    missing = [k for k in ("objective", "noise", "seed", "metrics") if k not in cell]
    if missing:
        raise ReportError(f"{path} lacks {missing}; it was not written by a compare run")


def load(workdir: str) -> Inputs:
    """Reads the report's inputs from `workdir` (see the module docstring)."""
    paths = files.glob(os.path.join(workdir, "cells"), "*.json")
    if not paths and not study_report.study_files(workdir):
        raise ReportError(f"no cells in {workdir}/cells and no study results; run "
                          f"experiments/compare_objectives.py (or a study such as "
                          f"experiments/scaling.py) with --workdir={workdir} first")
    try:
        sections = study_report.sections(workdir)
    except study_report.StudyError as e:
        raise ReportError(str(e)) from e
    cells = []
    for path in paths:
        cell = _read_json(path)
        check_cell(cell, path)
        cells.append(cell)
    meta = {}
    for run_dir in files.glob(os.path.join(workdir, "meta"), "*"):
        if files.exists(os.path.join(run_dir, metrics_lib.METRICS_FILE)):
            meta[os.path.basename(run_dir)] = metrics_lib.read_metrics(run_dir)
    over = os.path.join(workdir, "overoptimization.json")
    prov = os.path.join(workdir, "provenance.json")
    tuned = os.path.join(workdir, tuning.FILE)
    return Inputs(cells, meta, _read_json(over) if files.exists(over) else None,
                  _read_json(prov) if files.exists(prov) else None, sections,
                  _read_json(tuned) if files.exists(tuned) else [])


def _last_start(inputs: Inputs) -> dict:
    starts = (inputs.provenance or {}).get("starts", [])
    return starts[-1] if starts else {}


# ---- statistics ------------------------------------------------------------------------------


def value(cell: Mapping[str, Any], key: str) -> float:
    """A cell's figure from `metrics` or `compute` (nan when absent)."""
    for section in ("metrics", "compute"):
        if key in cell.get(section, {}):
            return float(cell[section][key])
    return math.nan


def per_seed(cells: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The cells with each learned arm's artifacts averaged: one cell per (noise, objective,
    fine-tuning seed), whose metrics, compute, per-family scores and curve are the means over
    the arm's meta-training seeds (the paired unit stays the fine-tuning seed); per-prompt
    correctness is dropped from a merged cell."""
    groups: dict[tuple, list[Mapping]] = {}
    for c in cells:
        groups.setdefault((c["noise"], c["objective"], c["seed"]), []).append(c)
    out = []
    for _, members in sorted(groups.items()):
        if len(members) == 1:
            out.append(dict(members[0]))
            continue
        merged = {k: v for k, v in members[0].items() if k != "per_prompt"}
        for section in ("metrics", "compute", "families"):
            merged[section] = {k: float(np.mean([float(m[section][k]) for m in members]))
                               for k in members[0].get(section, {})}
        merged["curve"] = [dict(point, exact_match=float(np.mean(
            [m["curve"][i]["exact_match"] for m in members])))
            for i, point in enumerate(members[0].get("curve", []))]
        merged["meta_seeds"] = len(members)
        out.append(merged)
    return out


def artifact_rows(cells: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per (noise, objective) with several meta-training seeds: each artifact's mean exact
    match (and t-interval) over the fine-tuning seeds, and the standard deviation of those
    means across artifacts."""
    groups: dict[tuple[str, str], dict[int, list[float]]] = {}
    for c in cells:
        groups.setdefault((c["noise"], c["objective"]), {}).setdefault(
            int(c.get("meta_seed", 0)), []).append(value(c, "exact_match"))
    rows = []
    for (noise, objective), by_meta in sorted(groups.items()):
        if len(by_meta) < 2:
            continue
        means = {m: mean_ci(v) for m, v in sorted(by_meta.items())}
        spread = float(np.std([mean for mean, _ in means.values()], ddof=1))
        rows.append({"noise": noise, "objective": objective, "artifacts": means,
                     "spread": spread})
    return rows


def _groups(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping]]:
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for c in cells:
        groups.setdefault((c["noise"], c["objective"]), []).append(c)
    return groups


def _by_seed(members: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    return {c["seed"]: value(c, "exact_match") for c in members}


def arm_order(cells: Sequence[Mapping[str, Any]], baseline: str = BASELINE
              ) -> list[tuple[str, str]]:
    """Every (noise, objective) in the report's order: noise kinds by name; within one, the
    baseline first, then the arms by their mean paired difference in exact match from it,
    largest first (by name where there is none)."""
    groups = _groups(cells)

    def key(k):
        noise, objective = k
        if objective == baseline:
            return noise, 0, 0.0, objective
        effect = math.nan
        if (noise, baseline) in groups:
            effect = paired(_by_seed(groups[k]), _by_seed(groups[(noise, baseline)]))["mean"]
        return noise, 1 + math.isnan(effect), 0.0 if math.isnan(effect) else -effect, objective

    return sorted(groups, key=key)


def comparison_tests(cells: Sequence[Mapping[str, Any]], baseline: str = BASELINE,
                     best: Mapping[str, str] | None = None) -> list[dict]:
    """Every test of the report, in its order: per noise kind, each arm against `baseline`
    (in arm_order), then the PAIRINGS of which both arms ran, then each learned arm against
    the best hand-made baseline of that noise kind (`best`, chosen on the tuning families)
    where both ran; each statistics.paired of exact match with 'a', 'b' and 'group' (the noise
    kind)."""
    groups = _groups(cells)
    order = arm_order(cells, baseline)
    tests = []
    for noise in sorted({n for n, _ in order}):
        ran = [o for n, o in order if n == noise]
        pairs = [(o, baseline) for o in ran if o != baseline and baseline in ran]
        pairs += [(a, b) for a, b in PAIRINGS if a in ran and b in ran]
        hand = (best or {}).get(noise)
        if hand in ran:
            pairs += [(a, hand) for a in ran if arms.BY_NAME[a].meta_trainer
                      and (a, hand) not in pairs]
        tests += [dict(a=a, b=b, group=noise, **paired(_by_seed(groups[(noise, a)]),
                                                         _by_seed(groups[(noise, b)])))
                  for a, b in pairs]
    return tests


def correction(inputs: Inputs) -> str:
    """The multiplicity correction the run's config asks for (config.statistics.correction)."""
    method = _last_start(inputs).get("config", {}).get("statistics", {}).get("correction", "holm")
    if method not in statistics.METHODS:
        raise ReportError(f"the run's config.statistics.correction is {method!r}; choose one "
                          f"of {list(statistics.METHODS)}")
    return method


def summary_rows(cells: Sequence[Mapping[str, Any]], found: Sequence[Mapping[str, Any]],
                 baseline: str = BASELINE) -> list[dict]:
    """One row per (noise, objective) in arm_order: mean and 95% CI of each column over
    seeds, and the finding of its test against `baseline` ('vs_baseline')."""
    groups = _groups(cells)
    against = {(f["group"], f["a"]): f for f in found if f["b"] == baseline}
    rows = []
    for noise, objective in arm_order(cells, baseline):
        members = groups[(noise, objective)]
        row: dict[str, Any] = {"noise": noise, "objective": objective, "seeds": len(members)}
        for key, _, _ in COLUMNS:
            row[key] = mean_ci([value(c, key) for c in members])
        if (noise, objective) in against:
            row["vs_baseline"] = against[(noise, objective)]
        rows.append(row)
    return rows


def headroom_rows(cells: Sequence[Mapping[str, Any]], baseline: str = BASELINE,
                  clean: str = CLEAN) -> list[dict]:
    """Per noise kind with both `baseline` and `clean`: each other arm's statistics.headroom,
    and the gap clean - baseline as a paired test ('gap_test')."""
    groups = _groups(cells)
    rows = []
    for noise, objective in arm_order(cells, baseline):
        if (objective in (baseline, clean) or (noise, baseline) not in groups
                or (noise, clean) not in groups):
            continue
        base, top = _by_seed(groups[(noise, baseline)]), _by_seed(groups[(noise, clean)])
        rows.append({"noise": noise, "objective": objective,
                     **statistics.headroom(_by_seed(groups[(noise, objective)]), base, top),
                     "gap_test": paired(top, base)})
    return rows


def data_seen_rows(cells: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One row per (noise, objective) in arm_order: each kind of data_seen and meta_training's
    seconds and tokens averaged over the seeds that record it (nan where none does); no rows
    when no cell records data_seen."""
    if not any("data_seen" in c for c in cells):
        return []
    groups = _groups(cells)
    rows = []
    for noise, objective in arm_order(cells):
        seen = [c.get("data_seen") or {} for c in groups[(noise, objective)]]
        meta = [s.get("meta_training") or {} for s in seen]
        rows.append({"noise": noise, "objective": objective,
                     "seen": {k: mean_ci([float(s[k]) for s in seen if k in s])[0]
                              for k, _ in DATA_SEEN},
                     "meta": {k: mean_ci([float(m[k]) for m in meta if k in m])[0]
                              for k, _ in META_SEEN}})
    return rows


def family_rows(cells: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict]]:
    """(families, rows): per (noise, objective) in arm_order the mean and 95% t half-width
    over seeds of each held-out family's exact match."""
    families = sorted({f for c in cells for f in c.get("families", {})})
    groups = _groups(cells)
    rows = []
    for noise, objective in arm_order(cells):
        members = groups[(noise, objective)]
        means = {f: mean_ci([float(c["families"][f]) for c in members
                             if f in c.get("families", {})]) for f in families}
        rows.append({"noise": noise, "objective": objective, "families": means})
    return families, rows


def mean_curves(cells: Sequence[Mapping[str, Any]], metric: str = "exact_match"
                ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(noise, objective) -> (steps [S], mean of `metric` over the seeds at each step [S])."""
    by_step: dict[tuple[str, str], dict[int, list[float]]] = {}
    for c in cells:
        for point in c.get("curve", []):
            if metric in point:
                by_step.setdefault((c["noise"], c["objective"]), {}).setdefault(
                    int(point["step"]), []).append(float(point[metric]))
    return {k: (np.asarray(sorted(v)), np.asarray([np.mean(v[s]) for s in sorted(v)]))
            for k, v in sorted(by_step.items())}


# ---- scope -----------------------------------------------------------------------------------


def _role(role: str) -> tuple[str, str]:
    """('meta' | 'task' | 'other', the role's name in words)."""
    if role in task_roles.META_ROLES:
        return "meta", ROLE_WORDS[role]
    if role in task_roles.TASK_ROLES:
        return "task", ROLE_WORDS[role]
    return "other", role


def scope(provenance: Mapping[str, Any] | None, arms: Sequence[str]) -> str:
    """What the arms were scored on and which roles each arm gave those families, from the
    run's provenance (extra.evaluation_families, extra.families_by_role). States only what
    the records show: without them, that the inputs were clean test inputs."""
    starts = (provenance or {}).get("starts", [])
    extra = starts[-1].get("extra", {}) if starts else {}
    evaluation = sorted(extra.get("evaluation_families") or [])
    if not evaluation:
        return "Scored on clean test inputs."
    text = f"Scored on the clean test inputs of {', '.join(evaluation)} (evaluation families)."
    by_role = extra.get("families_by_role")
    if not by_role:
        return text
    uses: dict[str, dict[str, list[str]]] = {"meta": {}, "task": {}, "other": {}}
    for arm, roles in sorted(by_role.items()):
        for role, families in sorted(roles.items()):
            if set(families) & set(evaluation):
                kind, words = _role(role)
                uses[kind].setdefault(words, []).append(arm)

    def listing(found):
        return ", ".join(f"{words} ({', '.join(sorted(set(users)))})"
                         for words, users in sorted(found.items()))

    unrecorded = sorted(set(arms) - set(by_role))
    who = "No arm with recorded roles" if unrecorded else "No arm"
    text += (f" Meta roles on them: {listing(uses['meta'])}" if uses["meta"] else
             f" {who} gave them a meta role "
             f"({', '.join(ROLE_WORDS[r] for r in task_roles.META_ROLES)})")
    text += f"; their task roles: {listing(uses['task'])}." if uses["task"] else "."
    if uses["other"]:
        text += f" Other roles on them: {listing(uses['other'])}."
    if unrecorded:
        text += f" No roles are recorded for {', '.join(unrecorded)}."
    return text


# ---- plots (PNG bytes, deterministic) --------------------------------------------------------


def _png(fig) -> bytes:
    return study_report.png(fig)


def plot_curves(curves: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                ylabel: str) -> bytes:
    noises = sorted({noise for noise, _ in curves})
    fig, axes = pyplot().subplots(1, len(noises), figsize=(5 * len(noises), 3.6), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for (n, objective), (steps, ys) in curves.items():
            if n == noise:
                ax.plot(steps, ys, marker=".", label=objective)
        ax.set_title(f"noise: {noise}")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def meta_keys(meta: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The META_KEYS some meta-training record has a point for."""
    return [k for k in META_KEYS if any(k in r for records in meta.values() for r in records)]


def plot_meta(meta: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str]) -> bytes:
    fig, axes = pyplot().subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, records in sorted(meta.items()):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), marker=".", label=name)
        ax.set_title(key)
        ax.set_xlabel("outer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_overoptimization(over: Mapping[str, Any]) -> bytes:
    """Gold and proxy gain against d = sqrt(KL): best-of-n and each RL run, with the fits
    R_bon(d) = d (alpha - beta d) and R_RL(d) = d (alpha - beta log d) (Gao et al. 2022)."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 3.8))
    series = [("best-of-n", over.get("best_of_n"), overoptimization.r_bon)]
    series += [(name, run, overoptimization.r_rl) for name, run in sorted(over.get("rl", {}).items())]
    for ax, which in zip(axes, ("gold", "proxy")):
        for name, run, form in series:
            if not run or which not in run or "d" not in run:
                continue
            d = np.asarray(run["d"], np.float64)
            gain = np.asarray(run[which], np.float64) - float(run[which][0])
            line, = ax.plot(d, gain, ".", label=name)
            fit = run.get(f"fit_{which}")
            if fit and "alpha" in fit:  # A failed fit is {'error': why}: the points only.
                grid = np.linspace(1e-3, max(d.max(), 1e-3), 100)
                ax.plot(grid, form(grid, fit["alpha"], fit["beta"]), color=line.get_color(),
                        lw=1, label=f"{name} fit (R^2 {fit['r2']:.2f})")
        ax.set_xlabel("d = sqrt(KL to the initial policy)")
        ax.set_ylabel(f"{which} gain")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_exact_match(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Per noise kind, each arm's mean exact match with its 95% t-interval over seeds."""
    noises = sorted({r["noise"] for r in rows})
    fig, axes = pyplot().subplots(1, len(noises), figsize=(5 * len(noises), 3.8), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        mine = [r for r in rows if r["noise"] == noise]
        x = np.arange(len(mine))
        ax.bar(x, [r["exact_match"][0] for r in mine], yerr=[r["exact_match"][1] for r in mine],
               capsize=3)
        ax.set_xticks(x, [r["objective"] for r in mine], rotation=30, fontsize=8)
        ax.set_title(f"noise: {noise}")
        ax.set_ylabel("exact match (95% t-interval)")
    fig.tight_layout()
    return _png(fig)


def plot_families(families: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Each (noise, objective)'s mean exact match per family with its 95% t-interval."""
    fig, ax = pyplot().subplots(figsize=(max(6, 1.2 * len(families) + 2), 3.8))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(families))
    for i, row in enumerate(rows):
        ax.bar(x + i * width, [row["families"][f][0] for f in families], width,
               yerr=[row["families"][f][1] for f in families], capsize=2,
               label=f"{row['objective']} ({row['noise']})")
    ax.set_xticks(x + 0.4 - width / 2, families, rotation=30, fontsize=8)
    ax.set_ylabel("exact match (95% t-interval)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _png(fig)


# ---- the comparison's sections ---------------------------------------------------------------


def _fmt(pair: tuple[float, float], digits: int) -> str:
    mean, half = pair
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _fmt_paired(p: Mapping[str, Any]) -> str:
    if math.isnan(p["mean"]):
        return f"– (n {p['n']})"
    return f"{p['mean']:+.3f} ± {p['ci95']:.3f} (n {p['n']})"


def _fmt_count(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _fmt_interval(pair: tuple[float, float]) -> str:
    lo, hi = pair
    if math.isnan(lo) or math.isnan(hi):
        return "–"
    return f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "unbounded"


def table(rows: Sequence[Mapping[str, Any]], method: str) -> Table:
    """The summary table: each column's mean ± 95% CI, the paired difference from MLE with
    its raw and adjusted p, and the seeds."""
    header = (["noise", "objective"] + [title for _, title, _ in COLUMNS]
              + ["exact match vs MLE (paired)", "p", f"adjusted p ({statistics.NAMES[method]})",
                 "seeds"])
    body = []
    for r in rows:
        vs = r.get("vs_baseline")
        tested = ([_fmt_paired(vs), statistics.format_p(vs["p"]),
                   statistics.format_p(vs["p_adjusted"])] if vs else ["", "", ""])
        body.append([r["noise"], r["objective"]] + [_fmt(r[k], d) for k, _, d in COLUMNS]
                    + tested + [str(r["seeds"])])
    return Table(header, body)


def findings_section(inputs: Inputs, found: Sequence[Mapping[str, Any]], method: str
                     ) -> Section:
    tested = sum(not math.isnan(f["p"]) for f in found)
    if found:
        how = (f"Exact match, paired over seeds (two-sided paired t-test): {len(found)} "
               f"comparisons ({tested} with a p-value), each arm against {BASELINE} on each "
               f"noise kind and the declared pairings where both arms ran, corrected together "
               f"by {statistics.NAMES[method]} at alpha {statistics.ALPHA}.")
    else:
        how = f"No comparison: no noise kind has {BASELINE} and another arm, nor a pairing."
    names = sorted({c["objective"] for c in inputs.cells})
    return Section("Findings", [scope(inputs.provenance, names), how] + [f["text"] for f in found],
                   [], {}, [])


def headroom_section(rows: Sequence[Mapping[str, Any]]) -> Section:
    body = [[r["noise"], r["objective"],
             "–" if math.isnan(r["fraction"]) else f"{r['fraction']:.3f}",
             _fmt_interval(r["ci95"]), _fmt_paired(r["gap_test"]), str(r["n"])] for r in rows]
    text = (f"The fraction of the gap between {BASELINE} and {CLEAN} ({BASELINE} on the same "
            f"demonstrations without corruption, same budget) an arm recovers: mean(arm - "
            f"{BASELINE}) / mean({CLEAN} - {BASELINE}) in exact match over the seeds all three "
            f"have (1: as good as clean data; 0: no better than {BASELINE}), with a paired "
            f"percentile bootstrap over seeds; the gap with its 95% t-interval.")
    header = ["noise", "objective", "headroom recovered", "95% interval (bootstrap)",
              f"gap {CLEAN} - {BASELINE}", "seeds"]
    return Section("Headroom recovered", [text], [Table(header, body)], {}, [])


def tuning_section(tables: Sequence[Mapping[str, Any]], best: Mapping[str, str]) -> Section:
    text = ("The hand-made baselines' settings, each tried for the tuning seeds on the tuning "
            "families (never an evaluation family) and scored by exact match on their clean "
            "test inputs (mean ± 95% t-interval); the best mean is the setting the arm ran "
            "with, and the best hand-made baseline of a noise kind is the one with the best "
            "tuning score: each learned arm is tested against it.")
    chosen = [f"Best hand-made baseline on {noise}: {method}." for noise, method in best.items()]
    return Section("Tuning of the hand-made baselines", [text] + chosen,
                   [Table(list(tuning.HEADER), tuning.table_rows(tables))], {}, [])


def data_seen_section(rows: Sequence[Mapping[str, Any]]) -> Section:
    header = (["noise", "objective"] + [title for _, title in DATA_SEEN]
              + [title for _, title in META_SEEN])
    body = [[r["noise"], r["objective"]] + [_fmt_count(r["seen"][k]) for k, _ in DATA_SEEN]
            + [_fmt_count(r["meta"][k]) for k, _ in META_SEEN] for r in rows]
    text = "What each arm saw, averaged over seeds ('–': not recorded)."
    learns = "; ".join(f"{name}: {arms.BY_NAME[name].data}"
                       for name in dict.fromkeys(r["objective"] for r in rows)
                       if name in arms.BY_NAME)
    paragraphs = [text] + ([f"What each arm learns from: {learns}."] if learns else [])
    return Section("Data seen per arm", paragraphs, [Table(header, body)], {}, [])


def artifacts_section(rows: Sequence[Mapping[str, Any]]) -> Section:
    body = [[r["noise"], r["objective"],
             "; ".join(f"m{m}: {_fmt(pair, 3)}" for m, pair in r["artifacts"].items()),
             f"{r['spread']:.3f}"] for r in rows]
    text = ("Each learned arm's artifacts, one per meta-training seed, each crossed with every "
            "fine-tuning seed: the mean exact match of each over the fine-tuning seeds (95% "
            "t-interval), and the standard deviation of those means across artifacts. The "
            "tables and tests above pair by fine-tuning seed on the mean over the artifacts.")
    header = ["noise", "objective", "exact match per artifact", "sd across artifacts"]
    return Section("Across meta-training seeds", [text], [Table(header, body)], {}, [])


def comparison_sections(inputs: Inputs) -> tuple[list[Section], dict]:
    """The comparison's sections, findings first, and findings.json's content. A learned arm
    with several artifacts enters the tests by the mean over them (`per_seed`); their spread
    gets a section of its own."""
    method = correction(inputs)
    cells = per_seed(inputs.cells)
    best = tuning.best_baselines(inputs.tuning)
    found = statistics.findings(comparison_tests(cells, best=best), method)
    rows = summary_rows(cells, found)
    summary_images = {"exact_match.png": plot_exact_match(rows)}
    curves = mean_curves(cells)
    if curves:
        summary_images["learning_curves.png"] = plot_curves(curves, "held-out exact match")
    text = ("Mean ± 95% t-interval over seeds; the paired difference in exact match from "
            f"{BASELINE} over the same seeds, with its raw p and its p adjusted over all of "
            f"the report's tests. Within a noise kind {BASELINE} comes first, then the arms by "
            "that difference, largest first.")
    out = [findings_section(inputs, found, method),
           Section("Summary", [text], [table(rows, method)], summary_images, [])]
    spread = artifact_rows(inputs.cells)
    if spread:
        out.append(artifacts_section(spread))
    headroom = headroom_rows(cells)
    if headroom:
        out.append(headroom_section(headroom))
    if inputs.tuning:
        out.append(tuning_section(inputs.tuning, best))
    seen = data_seen_rows(cells)
    if seen:
        out.append(data_seen_section(seen))
    families, family = family_rows(cells)
    if families:
        body = [[r["noise"], r["objective"]] + [f"{r['families'][f][0]:.3f}" for f in families]
                for r in family]
        out.append(Section("Per family (exact match)", ["Mean over seeds; the plot shows the "
                                                       "95% t-interval."],
                           [Table(["noise", "objective"] + families, body)],
                           {"families.png": plot_families(families, family)}, []))
    keys = meta_keys(inputs.meta)
    if keys:
        out.append(Section("Meta-training", [], [], {"meta_training.png":
                                                     plot_meta(inputs.meta, keys)}, []))
    if inputs.overoptimization:
        out.append(Section("Over-optimization", [], [], {
            "overoptimization.png": plot_overoptimization(inputs.overoptimization)}, []))
    return out, statistics.findings_record(found, method)


# ---- rendering -------------------------------------------------------------------------------


def provenance_lines(inputs: Inputs) -> list[tuple[str, str]]:
    """(label, value) pairs: code, software, data, mesh and each cell's wall time."""
    out = []
    starts = (inputs.provenance or {}).get("starts", [])
    if starts:
        p = starts[-1]
        out += [("git commit", f"{p.get('git_commit')} (dirty: {p.get('git_dirty')})"),
                ("versions", ", ".join(f"{k} {v}" for k, v in sorted(p.get("versions", {}).items()))),
                ("python", str(p.get("python"))),
                ("mesh", json.dumps(p.get("mesh"), sort_keys=True)),
                ("devices", json.dumps(p.get("devices"), sort_keys=True)),
                ("data hashes", json.dumps(p.get("extra", {}).get("data_hashes", {}),
                                           sort_keys=True)),
                ("runs of this workdir", str(len(starts)))]
        verbatim = p.get("extra", {}).get("verbatim_in_pretraining")
        if verbatim:
            out.append(("test prompts found verbatim in the pre-training text",
                        f"{verbatim['in_pretraining_text']} of {verbatim['test_prompts']}"))
    for c in inputs.cells:
        out.append((f"cell {c['noise']}/{c['objective']}/seed {c['seed']}",
                    f"{value(c, 'seconds'):.1f} s"))
    for section in inputs.sections:
        out += section.timings
    return out


def _config_text(inputs: Inputs) -> str:
    return json.dumps(_last_start(inputs).get("config", {}), indent=1, sort_keys=True)


def _title(inputs: Inputs) -> str:
    return "Objectives compared" if inputs.cells else "Studies"


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in body])


def markdown(inputs: Inputs, sections: Sequence[Section]) -> str:
    lines = [f"# {_title(inputs)}"]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for paragraph in section.paragraphs:
            lines += ["", paragraph]
        for t in section.tables:
            lines += [""] + _md_table(t.header, t.rows)
        for name in sorted(section.images):
            lines += ["", f"![{name}]({PLOTS}/{name})"]
    lines += ["", "## Provenance", ""]
    lines += [f"- {k}: {v}" for k, v in provenance_lines(inputs)]
    lines += ["", "```json", _config_text(inputs), "```", ""]
    return "\n".join(lines)


def _html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
                      for row in body) + "</table>")


def _html_img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def render_html(inputs: Inputs, sections: Sequence[Section]) -> str:
    """One self-contained page: inline CSS, PNGs as data URIs, no external reference."""
    esc = html.escape
    title = _title(inputs)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{title}</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:80em}"
             "table{border-collapse:collapse;font-size:.85em}"
             "td,th{border:1px solid #bbb;padding:.25em .5em;text-align:right}"
             "img{max-width:100%}pre{font-size:.75em;background:#f4f4f4;padding:1em}",
             "</style></head><body>", f"<h1>{title}</h1>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        parts += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        parts += [_html_table(t.header, t.rows) for t in section.tables]
        parts += [_html_img(name, section.images[name]) for name in sorted(section.images)]
    parts.append("<h2>Provenance</h2><ul>")
    parts += [f"<li>{esc(k)}: {esc(v)}</li>" for k, v in provenance_lines(inputs)]
    parts += ["</ul>", f"<pre>{esc(_config_text(inputs))}</pre>", "</body></html>", ""]
    return "\n".join(parts)


def write(workdir: str) -> dict[str, str]:
    """Writes WORKDIR/report.md, report.html, plots/*.png and, with cells, findings.json from
    the workdir alone. Each file is replaced atomically; on a malformed input nothing is
    written (the old report stays). In a multi-host job every host waits here until all have
    written their results, then process 0 writes the report and the others return its paths."""
    paths = {"markdown": os.path.join(workdir, REPORT_MD),
             "html": os.path.join(workdir, REPORT_HTML)}
    hosts.barrier("results written, the report next")
    if not hosts.is_writer():
        return paths
    inputs = load(workdir)
    sections, record = comparison_sections(inputs) if inputs.cells else ([], None)
    sections += inputs.sections
    md = markdown(inputs, sections).encode()
    page = render_html(inputs, sections).encode()
    files.makedirs(os.path.join(workdir, PLOTS))
    for section in sections:
        for name, png in section.images.items():
            files.write_atomic(os.path.join(workdir, PLOTS, name), png)
    if record is not None:
        paths["findings"] = os.path.join(workdir, FINDINGS)
        files.write_atomic(paths["findings"], (json.dumps(record, indent=2, sort_keys=True,
                                                     allow_nan=False) + "\n").encode())
    files.write_atomic(paths["markdown"], md)
    files.write_atomic(paths["html"], page)
    return paths


# ---- sweeps ----------------------------------------------------------------------------------


def sweep_tables(points: Sequence[Mapping[str, Any]], cells_by_point: Mapping[str, list[dict]]
                 ) -> list[tuple[str, list[str], list[list[str]]]]:
    """One table per swept key: a row per value, a column per objective with the mean ± 95%
    CI of exact match over every cell (seeds, noises and other keys' values) at that value."""
    objectives = sorted({c["objective"] for cells in cells_by_point.values() for c in cells})
    keys = sorted({k for p in points for k in p["overrides"]})
    tables = []
    for key in keys:
        by_value: dict[str, list[dict]] = {}
        for p in points:
            if key in p["overrides"] and p["name"] in cells_by_point:
                by_value.setdefault(json.dumps(p["overrides"][key]), []).extend(
                    cells_by_point[p["name"]])
        body = [[v] + [_fmt(mean_ci([value(c, "exact_match") for c in cells
                                     if c["objective"] == o]), 3) for o in objectives]
                for v, cells in sorted(by_value.items())]
        tables.append((key, [key] + objectives, body))
    return tables


def write_sweep(root: str) -> dict[str, str]:
    """ROOT/report.md and report.html of a sweep (experiments/sweep.py): a table per swept
    hyper-parameter and the unfinished points (failed, or preempted: resumable) with their exit
    codes."""
    records = sweep.read_records(root)
    if not records:
        raise ReportError(f"{root}/{sweep.SWEEP_FILE} lists no points; run experiments/sweep.py "
                          f"with --workdir={root} first")
    points = [records[k] for k in sorted(records)]
    cells_by_point = {}
    for p in points:
        if p["status"] == "done":
            cells_by_point[p["name"]] = load(os.path.join(root, "points", p["name"])).cells
    unfinished = [p for p in points if p["status"] != "done"]
    md = ["# Sweep", "", f"{len(points)} points, {len(unfinished)} unfinished. Held-out exact "
          "match, mean ± 95% t-interval over every cell at each value.", ""]
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Sweep</title>',
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:.25em .5em}</style></head><body>",
            f"<h1>Sweep</h1><p>{len(points)} points, {len(unfinished)} unfinished.</p>"]
    for key, header, body in sweep_tables(points, cells_by_point):
        md += [f"## {key}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in body] + [""]
        page += [f"<h2>{html.escape(key)}</h2><table><tr>"
                 + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        page += ["<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                 for r in body] + ["</table>"]
    if unfinished:
        lines = [f"{p['name']}: {p['status']} (exit {p.get('returncode')})" for p in unfinished]
        md += ["## Unfinished points", ""] + [f"- {line}" for line in lines] + [""]
        page += ["<h2>Unfinished points</h2><ul>"]
        page += [f"<li>{html.escape(line)}</li>" for line in lines] + ["</ul>"]
    page += ["</body></html>", ""]
    files.write_atomic(os.path.join(root, REPORT_MD), "\n".join(md).encode())
    files.write_atomic(os.path.join(root, REPORT_HTML), "\n".join(page).encode())
    return {"markdown": os.path.join(root, REPORT_MD), "html": os.path.join(root, REPORT_HTML)}
