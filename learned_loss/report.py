"""Reports that compare objectives: WORKDIR/report.md and a self-contained WORKDIR/report.html.

Everything is read from the workdir (nothing is trained or scored again), so a report can be
regenerated from the workdir alone, and the same inputs give byte-identical files: rows and
plots are sorted by name, numbers are printed at fixed precision, and PNGs carry no timestamp.

Inputs (`load`):
  cells/*.json          one fine-tuning run (an objective x noise x seed), with keys
                        objective, noise, seed; metrics {exact_match, graded, kl, length};
                        compute {seconds, tokens}; families {family: exact match};
                        curve [{step, <metric>...}] (learning curve on held-out families).
  meta/NAME/metrics.jsonl   meta-training curves (meta_loss, meta_valid/...), optional.
  overoptimization.json     best-of-n and RL gold/proxy against d = sqrt(KL) with the fits of
                        Gao et al. 2022 (learned_loss/rlhf_pipeline.py), optional.
  provenance.json       the run's provenance (learned_loss/provenance.py).

Statistics: mean and a 95% Student-t interval over seeds; against the baseline objective (MLE)
a paired comparison over the seeds both have: the mean difference, its 95% interval and the
two-sided paired t-test p-value (Student 1908; scipy.stats.ttest_rel).
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import html
import json
import math
import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from learned_loss import metrics as metrics_lib  # noqa: E402
from learned_loss import overoptimization, study_report, sweep  # noqa: E402

# (key in a cell's `metrics` or `compute`, column title, printed digits).
COLUMNS = (("exact_match", "exact match", 3), ("graded", "graded", 3), ("kl", "KL to ref", 3),
           ("length", "length", 2), ("seconds", "seconds", 0), ("tokens", "tokens", 0))
BASELINE = "mle"
REPORT_MD, REPORT_HTML, PLOTS = "report.md", "report.html", "plots"
SCOPE = "Scored on clean held-out inputs of families no learned objective was meta-trained on."
STATISTICS = ("Mean ± 95% t-interval over seeds; paired difference from MLE over the same "
              "seeds (two-sided paired t-test).")


class ReportError(ValueError):
    """The workdir holds nothing to report, or a file in it is malformed."""


@dataclasses.dataclass
class Inputs:
    cells: list[dict]
    meta: dict[str, list[dict]]  # meta-training name -> metrics records
    overoptimization: dict | None
    provenance: dict | None
    sections: list = dataclasses.field(default_factory=list)  # study_report.Section


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e}); re-run the cell that wrote it") from e


def check_cell(cell: Mapping[str, Any], path: str) -> None:
    missing = [k for k in ("objective", "noise", "seed", "metrics") if k not in cell]
    if missing:
        raise ReportError(f"{path} lacks {missing}; it was not written by a compare run")


def load(workdir: str) -> Inputs:
    """Reads the report's inputs from `workdir` (see the module docstring)."""
    paths = sorted(glob.glob(os.path.join(workdir, "cells", "*.json")))
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
    for path in sorted(glob.glob(os.path.join(workdir, "meta", "*", "metrics.jsonl"))):
        meta[os.path.basename(os.path.dirname(path))] = metrics_lib.read_metrics(
            os.path.dirname(path))
    over = os.path.join(workdir, "overoptimization.json")
    prov = os.path.join(workdir, "provenance.json")
    return Inputs(cells, meta, _read_json(over) if os.path.exists(over) else None,
                  _read_json(prov) if os.path.exists(prov) else None, sections)


# ---- statistics ------------------------------------------------------------------------------


def value(cell: Mapping[str, Any], key: str) -> float:
    """A cell's figure from `metrics` or `compute` (nan when absent)."""
    for section in ("metrics", "compute"):
        if key in cell.get(section, {}):
            return float(cell[section][key])
    return math.nan


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, Student-t half-width); the half-width is 0 for one value, nan for none."""
    x = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Paired comparison of a - b over the seeds both have: mean, 95% half-width, p, n.
    p is nan with fewer than 2 pairs or when every difference is the same."""
    seeds = sorted(set(a) & set(b))
    diff = np.asarray([a[s] - b[s] for s in seeds], np.float64)
    mean, half = mean_ci(list(diff))
    p = math.nan
    if len(diff) >= 2 and np.ptp(diff) > 0:
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return {"mean": mean, "ci95": half, "p": p, "n": len(seeds)}


def summary_rows(cells: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> list[dict]:
    """One row per (noise, objective): mean and 95% CI of each column over seeds, and the
    paired difference in exact match from `baseline` on the same noise and seeds."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for c in cells:
        groups.setdefault((c["noise"], c["objective"]), []).append(c)
    rows = []
    for (noise, objective), members in sorted(groups.items()):
        row: dict[str, Any] = {"noise": noise, "objective": objective, "seeds": len(members)}
        for key, _, _ in COLUMNS:
            row[key] = mean_ci([value(c, key) for c in members])
        base = groups.get((noise, baseline))
        if base is not None and objective != baseline:
            row["vs_baseline"] = paired({c["seed"]: value(c, "exact_match") for c in members},
                                        {c["seed"]: value(c, "exact_match") for c in base})
        rows.append(row)
    return rows


def family_rows(cells: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict]]:
    """(families, rows): per (noise, objective) the mean exact match of each held-out family."""
    families = sorted({f for c in cells for f in c.get("families", {})})
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for c in cells:
        groups.setdefault((c["noise"], c["objective"]), []).append(c)
    rows = []
    for (noise, objective), members in sorted(groups.items()):
        means = {f: mean_ci([float(c["families"][f]) for c in members
                             if f in c.get("families", {})])[0] for f in families}
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


# ---- plots (PNG bytes, deterministic) --------------------------------------------------------


def _png(fig) -> bytes:
    return study_report.png(fig)


def plot_curves(curves: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                ylabel: str) -> bytes:
    noises = sorted({noise for noise, _ in curves})
    fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 3.6), squeeze=False)
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


def plot_meta(meta: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    keys = ("meta_loss", "meta_valid/nll", "meta_valid/fitness")
    fig, axes = plt.subplots(1, len(keys), figsize=(15, 3.6))
    for ax, key in zip(axes, keys):
        for name, records in sorted(meta.items()):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), marker=".", label=name)
        ax.set_title(key)
        ax.set_xlabel("outer step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_overoptimization(over: Mapping[str, Any]) -> bytes:
    """Gold and proxy gain against d = sqrt(KL): best-of-n and each RL run, with the fits
    R_bon(d) = d (alpha - beta d) and R_RL(d) = d (alpha - beta log d) (Gao et al. 2022)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
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


def plot_families(families: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> bytes:
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(families) + 2), 3.8))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(families))
    for i, row in enumerate(rows):
        ax.bar(x + i * width, [row["families"][f] for f in families], width,
               label=f"{row['objective']} ({row['noise']})")
    ax.set_xticks(x + 0.4 - width / 2, families, rotation=30, fontsize=8)
    ax.set_ylabel("exact match")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _png(fig)


def plots(inputs: Inputs) -> dict[str, bytes]:
    """name -> PNG bytes of every plot the inputs support."""
    out = {}
    curves = mean_curves(inputs.cells)
    if curves:
        out["learning_curves.png"] = plot_curves(curves, "held-out exact match")
    if inputs.meta:
        out["meta_training.png"] = plot_meta(inputs.meta)
    if inputs.overoptimization:
        out["overoptimization.png"] = plot_overoptimization(inputs.overoptimization)
    families, rows = family_rows(inputs.cells)
    if families:
        out["families.png"] = plot_families(families, rows)
    return out


def all_images(inputs: Inputs) -> dict[str, bytes]:
    """The comparison's plots and every study section's."""
    out = plots(inputs) if inputs.cells else {}
    for section in inputs.sections:
        out.update(section.images)
    return out


# ---- rendering -------------------------------------------------------------------------------


def _fmt(pair: tuple[float, float], digits: int) -> str:
    mean, half = pair
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _fmt_paired(p: Mapping[str, float] | None) -> str:
    if not p:
        return ""
    pval = "n/a" if math.isnan(p["p"]) else f"{p['p']:.3f}"
    return f"{p['mean']:+.3f} ± {p['ci95']:.3f} (p {pval}, n {p['n']})"


def table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the summary table as strings."""
    header = (["noise", "objective"] + [title for _, title, _ in COLUMNS]
              + ["exact match vs MLE (paired)", "seeds"])
    body = [[r["noise"], r["objective"]] + [_fmt(r[k], d) for k, _, d in COLUMNS]
            + [_fmt_paired(r.get("vs_baseline")), str(r["seeds"])] for r in rows]
    return header, body


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
    for c in inputs.cells:
        out.append((f"cell {c['noise']}/{c['objective']}/seed {c['seed']}",
                    f"{value(c, 'seconds'):.1f} s"))
    for section in inputs.sections:
        out += section.timings
    return out


def _config_text(inputs: Inputs) -> str:
    starts = (inputs.provenance or {}).get("starts", [])
    return json.dumps(starts[-1].get("config", {}), indent=1, sort_keys=True) if starts else "{}"


def _title(inputs: Inputs) -> str:
    return "Objectives compared" if inputs.cells else "Studies"


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in body])


def markdown(inputs: Inputs, images: Sequence[str]) -> str:
    lines = [f"# {_title(inputs)}"]
    if inputs.cells:
        lines += ["", f"{SCOPE} {STATISTICS}", ""]
        lines += _md_table(*table(summary_rows(inputs.cells)))
        families, rows = family_rows(inputs.cells)
        if families:
            lines += ["", "## Per family (exact match)", ""]
            lines += _md_table(["noise", "objective"] + families,
                               [[r["noise"], r["objective"]]
                                + [f"{r['families'][f]:.3f}" for f in families] for r in rows])
        own = {name for s in inputs.sections for name in s.images}
        for name in images:
            if name not in own:
                lines += ["", f"![{name}]({PLOTS}/{name})"]
    for section in inputs.sections:
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


def render_html(inputs: Inputs, images: Mapping[str, bytes]) -> str:
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
    own = {name for s in inputs.sections for name in s.images}
    if inputs.cells:
        parts += [f"<p>{esc(SCOPE)} {esc(STATISTICS)}</p>",
                  _html_table(*table(summary_rows(inputs.cells)))]
        for name, png in sorted(images.items()):
            if name not in own:
                parts.append(f'<h2>{esc(name[:-4].replace("_", " "))}</h2>' + _html_img(name, png))
    for section in inputs.sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        parts += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        parts += [_html_table(t.header, t.rows) for t in section.tables]
        parts += [_html_img(name, images[name]) for name in sorted(section.images)]
    parts.append("<h2>Provenance</h2><ul>")
    parts += [f"<li>{esc(k)}: {esc(v)}</li>" for k, v in provenance_lines(inputs)]
    parts += ["</ul>", f"<pre>{esc(_config_text(inputs))}</pre>", "</body></html>", ""]
    return "\n".join(parts)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write(workdir: str) -> dict[str, str]:
    """Writes WORKDIR/report.md, report.html and plots/*.png from the workdir alone. Each file
    is replaced atomically; on a malformed input nothing is written (the old report stays)."""
    inputs = load(workdir)
    images = all_images(inputs)
    md = markdown(inputs, sorted(images)).encode()
    page = render_html(inputs, images).encode()
    os.makedirs(os.path.join(workdir, PLOTS), exist_ok=True)
    for name, png in images.items():
        _write_atomic(os.path.join(workdir, PLOTS, name), png)
    _write_atomic(os.path.join(workdir, REPORT_MD), md)
    _write_atomic(os.path.join(workdir, REPORT_HTML), page)
    return {"markdown": os.path.join(workdir, REPORT_MD),
            "html": os.path.join(workdir, REPORT_HTML)}


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
    hyper-parameter and the failed points with their exit codes."""
    records = sweep.read_records(root)
    if not records:
        raise ReportError(f"{root}/{sweep.SWEEP_FILE} lists no points; run experiments/sweep.py "
                          f"with --workdir={root} first")
    points = [records[k] for k in sorted(records)]
    cells_by_point = {}
    for p in points:
        if p["status"] == "done":
            cells_by_point[p["name"]] = load(os.path.join(root, "points", p["name"])).cells
    failed = [p for p in points if p["status"] != "done"]
    md = ["# Sweep", "", f"{len(points)} points, {len(failed)} failed. Held-out exact match, "
          "mean ± 95% t-interval over every cell at each value.", ""]
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Sweep</title>',
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:.25em .5em}</style></head><body>",
            f"<h1>Sweep</h1><p>{len(points)} points, {len(failed)} failed.</p>"]
    for key, header, body in sweep_tables(points, cells_by_point):
        md += [f"## {key}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in body] + [""]
        page += [f"<h2>{html.escape(key)}</h2><table><tr>"
                 + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        page += ["<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                 for r in body] + ["</table>"]
    if failed:
        md += ["## Failed points", ""]
        md += [f"- {p['name']}: exit {p.get('returncode')}" for p in failed] + [""]
        page += ["<h2>Failed points</h2><ul>"]
        page += [f"<li>{html.escape(p['name'])}: exit {p.get('returncode')}</li>" for p in failed]
        page += ["</ul>"]
    page += ["</body></html>", ""]
    _write_atomic(os.path.join(root, REPORT_MD), "\n".join(md).encode())
    _write_atomic(os.path.join(root, REPORT_HTML), "\n".join(page).encode())
    return {"markdown": os.path.join(root, REPORT_MD), "html": os.path.join(root, REPORT_HTML)}
