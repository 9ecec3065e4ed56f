"""Report sections of the studies that test the package's claims (learned_loss/report/render.py puts
them after the objective comparison, or alone in a workdir that holds only studies).

Each section is read from one file of the workdir, written by its experiment:
  scaling.json   experiments/scaling.py (learned_loss/studies/scaling.py): validation NLL of
                 every (objective, size, budget) run, Kaplan and Chinchilla fits per objective.
  diversity.json experiments/diversity.py (learned_loss/studies/diversity.py): held-out
                 family scores after fine-tuning on k families at a fixed budget.
  emergence.json experiments/emergence.py (learned_loss/studies/emergence.py): exact match,
                 per-token accuracy and p^L per answer length across sizes and checkpoints.
  headroom.json  experiments/headroom.py (learned_loss/studies/headroom.py): mle_clean - mle
                 one axis at a time, and the regime chosen.

A `Section` holds a title, paragraphs, tables of strings and PNGs; learned_loss/report/render.py
renders it to Markdown and HTML alike. Everything is sorted and printed at fixed precision, so the
same file gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from learned_loss.core import errors, files

SCALING_FILE = "scaling.json"
DIVERSITY_FILE = "diversity.json"
EMERGENCE_FILE = "emergence.json"
HEADROOM_FILE = "headroom.json"


@dataclasses.dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Section:
    title: str
    paragraphs: list[str]
    tables: list[Table]
    images: dict[str, bytes]  # file name -> PNG bytes
    timings: list[tuple[str, str]]  # (run, wall time) for the provenance list


class StudyError(errors.UserError):
    """A study file in the workdir is malformed."""


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when the first figure is drawn
    (it adds about 0.4 s to the start of every entry point that imports the reports)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes without a timestamp (the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


def _interval(pair: Sequence[float]) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


# ---- scaling --------------------------------------------------------------------------------


def scaling_fit_table(fits: Mapping[str, Mapping[str, Any]]) -> Table:
    header = ["objective", "Kaplan alpha (95% CI)", "N_c", "R^2", "Kaplan extrapolation error",
              "Chinchilla E", "A", "B", "alpha (95% CI)", "beta (95% CI)",
              "Chinchilla extrapolation error"]
    rows = []
    for objective in sorted(fits):
        k = fits[objective]["kaplan"]
        row = [objective, f"{k['alpha']:.3f} {_interval(k['alpha_interval'])}",
               f"{k['n_c']:.3g}", f"{k['r2']:.3f}", _pct(k["extrapolation"]["relative_error"])]
        c = fits[objective].get("chinchilla")
        if c:
            ex = c["extrapolation"].get("relative_error", float("nan"))
            row += [f"{c['e']:.3f}", f"{c['a']:.3g}", f"{c['b']:.3g}",
                    f"{c['alpha']:.3f} {_interval(c['alpha_interval'])}",
                    f"{c['beta']:.3f} {_interval(c['beta_interval'])}", _pct(ex)]
        else:
            row += ["–"] * 6
        rows.append(row)
    return Table(header, rows)


def scaling_nll_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """One row per (size, tokens): each objective's validation NLL and learned minus MLE."""
    objectives = sorted({r["objective"] for r in rows})
    by = {(r["objective"], r["size"], r["tokens"]): r for r in rows}
    keys = sorted({(r["params"], r["size"], r["tokens"]) for r in rows})
    header = ["size", "params (non-emb.)", "tokens"] + [f"{o} NLL" for o in objectives]
    others = [o for o in objectives if o != "mle"] if "mle" in objectives else []
    header += [f"{o} - mle" for o in others]
    body = []
    for params, size, tokens in keys:
        line = [size, f"{params:,}", f"{tokens:,}"]
        line += [f"{by[(o, size, tokens)]['test_nll']:.4f}" if (o, size, tokens) in by else "–"
                 for o in objectives]
        for o in others:
            if (o, size, tokens) in by and ("mle", size, tokens) in by:
                diff = by[(o, size, tokens)]["test_nll"] - by[("mle", size, tokens)]["test_nll"]
                line.append(f"{diff:+.4f}")
            else:
                line.append("–")
        body.append(line)
    return Table(header, body)


def plot_scaling(study: Mapping[str, Any]) -> bytes:
    """Left: validation NLL against N at the largest budget, with each Kaplan fit. Right: the
    learned objective's NLL minus MLE's against N, one line per budget."""
    rows, fits = study["rows"], study["fits"]
    fig, (ax, bx) = pyplot().subplots(1, 2, figsize=(11, 4))
    for objective in sorted(fits):
        top = fits[objective]["kaplan_tokens"]
        pts = sorted((r["params"], r["test_nll"]) for r in rows
                     if r["objective"] == objective and r["tokens"] == top)
        n = np.array([p[0] for p in pts], np.float64)
        line = ax.plot(n, [p[1] for p in pts], "o", label=f"{objective} ({top:,} tokens)")[0]
        k = fits[objective]["kaplan"]
        grid = np.geomspace(n.min(), n.max(), 50)
        ax.plot(grid, (k["n_c"] / grid) ** k["alpha"], "-", color=line.get_color(),
                label=f"{objective}: L = (N_c/N)^{k['alpha']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters N",
           ylabel="validation NLL (nats/token)", title="Kaplan fit")
    ax.legend(fontsize=7)
    diffs = study.get("advantage", [])
    for tokens in sorted({d["tokens"] for d in diffs}):
        pts = sorted((d["params"], d["difference"]) for d in diffs if d["tokens"] == tokens)
        bx.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{tokens:,} tokens")
    bx.axhline(0.0, color="k", lw=0.8)
    bx.set(xscale="log", xlabel="non-embedding parameters N",
           ylabel="learned NLL - MLE NLL (below 0: learned better)",
           title="advantage of the learned objective")
    if diffs:
        bx.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def scaling_verdict(study: Mapping[str, Any]) -> str:
    """Whether the learned objective's advantage grows or shrinks with N at the largest budget
    (the slope of its NLL difference from MLE against log N)."""
    diffs = study.get("advantage", [])
    if not diffs:
        return "Only MLE was run: no comparison of objectives."
    top = max(d["tokens"] for d in diffs)
    pts = sorted((d["params"], d["difference"]) for d in diffs if d["tokens"] == top)
    if len(pts) < 2:
        return "Too few sizes to say how the advantage changes with N."
    slope = float(np.polyfit(np.log10([p[0] for p in pts]), [p[1] for p in pts], 1)[0])
    mean = float(np.mean([p[1] for p in pts]))
    if abs(mean) < 5e-5 and abs(slope) < 5e-5:
        return (f"At {top:,} tokens the learned objective's NLL is within 0.0001 nats of "
                f"MLE's at every size: no difference to scale.")
    side = "better" if mean < 0 else "worse"
    trend = ("its advantage grows" if slope < 0 else "its advantage shrinks") if mean < 0 else (
        "its deficit shrinks" if slope < 0 else "its deficit grows")
    return (f"At {top:,} tokens the learned objective is {side} than MLE by "
            f"{abs(mean):.4f} nats on average over sizes, and {trend} with scale (slope "
            f"{slope:+.4f} nats per decade of N).")


def scaling_section(study: Mapping[str, Any]) -> Section:
    for key in ("rows", "fits"):
        if key not in study:
            raise StudyError(f"{SCALING_FILE} lacks {key!r}; re-run experiments/scaling.py")
    rows = study["rows"]
    sizes = sorted({r["params"] for r in rows})
    paragraphs = [
        "Pre-training runs from scratch on the text corpus, one per (objective, model size, "
        "token budget), each with its own warm-up and cosine decay; N is the non-embedding "
        f"parameter count ({sizes[0]:,} to {sizes[-1]:,}, {sizes[-1] / sizes[0]:.0f}x), the "
        "loss the mean token NLL of the same validation windows for every run.",
        "Kaplan et al. 2020: L(N) = (N_c / N)^alpha, least squares in log space on the runs "
        "of the largest budget. Hoffmann et al. 2022: L(N, D) = E + A / N^alpha + B / D^beta, "
        "Huber loss (delta 1e-3) on log L, L-BFGS from a grid of starts. Intervals: 95% "
        "percentile bootstrap over runs. Extrapolation: the fit without the largest model, "
        "its relative error on that model's loss.",
        scaling_verdict(study)]
    timings = [(f"run {r['objective']}-{r['size']}-{r['steps']}", f"{r['seconds']:.1f} s")
               for r in sorted(rows, key=lambda r: (r["objective"], r["params"], r["tokens"]))]
    return Section("Scaling laws", paragraphs,
                   [scaling_fit_table(study["fits"]), scaling_nll_table(rows)],
                   {"scaling.png": plot_scaling(study)}, timings)


# ---- task diversity -------------------------------------------------------------------------


def _ci(pair: Sequence[float]) -> str:
    mean, half = pair
    return "–" if mean is None or math.isnan(mean) else f"{mean:.3f} ± {half:.3f}"


def diversity_table(summary: Sequence[Mapping[str, Any]]) -> Table:
    header = ["families", "seeds", "held-out exact match", "held-out graded",
              "seen exact match", "seen graded"]
    rows = [[str(r["count"]), str(r["seeds"]), _ci(r["heldout_exact_match"]),
             _ci(r["heldout_graded"]), _ci(r["seen_exact_match"]), _ci(r["seen_graded"])]
            for r in summary]
    return Table(header, rows)


def diversity_gains_table(gains: Mapping[str, Mapping[str, Any]]) -> Table:
    header = ["metric"] + [f"{s['from']} -> {s['to']}" for s in
                           next(iter(gains.values()))["steps"]] + ["curvature in ln k"]
    rows = [[f"held-out {metric.replace('_', ' ')} per ln k"]
            + [f"{s['per_log']:+.4f}" for s in g["steps"]] + [f"{g['curvature']:+.4f}"]
            for metric, g in sorted(gains.items())]
    return Table(header, rows)


def diversity_noise(change: Mapping[str, Any], metric: str) -> str:
    """Whether the change from the fewest to the most families stands out of the seed noise
    (two-sided paired t-test at 5%)."""
    shown = (f"the change in {metric} from {change['from']} to {change['to']} families, "
             f"{change['mean']:+.4f} ± {change['ci95']:.4f} (paired over {change['n']} seeds, "
             f"p {_num(change['p'], '.3f')})")
    if math.isnan(change["p"]) or change["p"] >= 0.05:
        return f"But {shown}, is within the seed noise: these seeds do not resolve the curve."
    return f"{shown[0].upper()}{shown[1:]}, stands out of the seed noise."


def diversity_verdict(gains: Mapping[str, Any]) -> str:
    steps = gains["steps"]
    metric = gains["metric"].replace("heldout_", "held-out ").replace("_", " ")
    if not steps:
        return "One count only: no curve."
    first, last = steps[0], steps[-1]
    if len(steps) < 2:
        return (f"On {metric}: {first['per_log']:+.4f} per unit of ln k from {first['from']} "
                f"to {first['to']} families; more counts are needed to see whether the gains "
                f"diminish.")
    trend = ("the gains diminish" if gains["diminishing"] else
             "the gains do not diminish")
    return (f"On {metric}, {trend}: {first['per_log']:+.4f} per unit of ln k from "
            f"{first['from']} to {first['to']} families against {last['per_log']:+.4f} from "
            f"{last['from']} to {last['to']} (curvature of a quadratic fit in ln k "
            f"{gains['curvature']:+.4f}; overall slope {gains['slope_per_log']:+.4f}).")


def plot_diversity(study: Mapping[str, Any]) -> bytes:
    summary = study["summary"]
    ks = [r["count"] for r in summary]
    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    for key, label, style in (("heldout_exact_match", "held-out exact match", "o-"),
                              ("heldout_graded", "held-out graded", "s-"),
                              ("seen_exact_match", "seen families, exact match", "^--")):
        ax.errorbar(ks, [r[key][0] for r in summary], yerr=[r[key][1] for r in summary],
                    fmt=style, capsize=3, label=label)
    ax.set(xscale="log", xlabel="training families k (log scale)", ylabel="score",
           title=f"fixed budget: {study['steps']} steps of {study['batch']} rows")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def diversity_section(study: Mapping[str, Any]) -> Section:
    for key in ("cells", "summary", "gains"):
        if key not in study:
            raise StudyError(f"diversity.json lacks {key!r}; re-run experiments/diversity.py")
    held = study.get("heldout_families", [])
    paragraphs = [
        "Fine-tuning the pre-trained model by MLE on the first k families of a seeded order of "
        f"the meta-train families, with the same {study['steps']} steps of {study['batch']} "
        "rows for every k (after Chung et al. 2022, Flan); scored by greedy decoding on the "
        f"{len(held)} held-out families, which no training path may use, and on fresh inputs "
        "of the trained families. Mean ± 95% t-interval over seeds (each seed its own family "
        "order, data and noise).",
        diversity_verdict(study["gains"]["graded"]),
        diversity_verdict(study["gains"]["exact_match"])]
    for m, c in sorted(study.get("change", {}).items()):  # Absent from older diversity.json.
        paragraphs.append(diversity_noise(c, f"held-out {m.replace('_', ' ')}"))
    timings = [(f"cell {c['count']} families seed {c['seed']}", f"{c['seconds']:.1f} s")
               for c in study["cells"]]
    return Section("Task diversity", paragraphs,
                   [diversity_table(study["summary"]), diversity_gains_table(study["gains"])],
                   {"diversity.png": plot_diversity(study)}, timings)


# ---- emergence ------------------------------------------------------------------------------


def _bucket(b: Mapping[str, Any]) -> str:
    return f"L {b['low']}-{b['high']}"


def _num(x: float, fmt: str) -> str:
    return "never" if x is None or math.isnan(x) else format(x, fmt)


def emergence_jump_table(rows: Sequence[Mapping[str, Any]], axis: str, fmt: str) -> Table:
    header = ["answer length", f"exact match reaches threshold at {axis}",
              f"per-token accuracy reaches it at {axis}", "exact match: largest one-step share",
              "per-token: largest one-step share", "largest gap, exact match vs p^L"]
    return Table(header, [[_bucket(r), _num(r["jump"], fmt), _num(r["per_token_jump"], fmt),
                           f"{r['exact_match_step']:.2f}", f"{r['per_token_step']:.2f}",
                           f"{r['p_to_the_l_max_error']:.3f}"] for r in rows])


def emergence_grid_table(sizes: Sequence[Mapping[str, Any]]) -> Table:
    buckets = sizes[0]["evals"][-1]["buckets"]
    pretrained = any(s.get("pretrain", {}).get("steps") for s in sizes)
    header = (["size", "params (non-emb.)"] + (["text NLL"] if pretrained else [])
              + [f"{_bucket(b)}: p / exact / p^L" for b in buckets])
    rows = []
    for s in sizes:
        last = s["evals"][-1]["buckets"]
        nll = [f"{s['pretrain']['test_nll']:.3f}"] if pretrained else []
        rows.append([s["size"], f"{s['params']:,}"] + nll + [
            f"{b['per_token_accuracy']:.3f} / {b['exact_match']:.3f} / "
            f"{b['predicted_exact_match']:.3f}" for b in last])
    return Table(header, rows)


def emergence_verdict(study: Mapping[str, Any]) -> str:
    a = study["analysis"]
    rows = a["across_sizes"]
    jumps = [r["jump"] for r in rows]
    shown = ", ".join(f"{_bucket(r)} at N = {_num(r['jump'], ',.0f')}" for r in rows)
    finite = [j for j in jumps if not math.isnan(j)]
    moves = (len(finite) >= 2 and all(b >= a_ for a_, b in zip(finite, finite[1:]))
             and finite[-1] > finite[0])
    never = sum(math.isnan(j) for j in jumps)
    em_step = max(r["exact_match_step"] for r in rows)
    tok_step = max(r["per_token_step"] for r in rows)
    trend = ("moves to larger models as answers get longer" if moves else
             "does not move monotonically with the answer length" if len(finite) >= 2 else
             "is reached by too few buckets to say how it moves with the answer length")
    tail = f" ({never} bucket(s) never reach it)" if never else ""
    return (f"Across sizes at the last checkpoint, exact match reaches {a['threshold']} at "
            f"{shown}: the apparent jump {trend}{tail}. The largest share of a curve's rise "
            f"that comes in one step between sizes is {em_step:.2f} for exact match and "
            f"{tok_step:.2f} for per-token accuracy; exact match stays within "
            f"{max(r['p_to_the_l_max_error'] for r in rows):.3f} of p^L.")


def plot_emergence(study: Mapping[str, Any]) -> bytes:
    sizes = study["sizes"]
    n = [s["params"] for s in sizes]
    buckets = sizes[0]["evals"][-1]["buckets"]
    largest = sizes[-1]
    steps = [e["step"] for e in largest["evals"]]
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 4))
    for j, b in enumerate(buckets):
        em = [s["evals"][-1]["buckets"][j]["exact_match"] for s in sizes]
        pl = [s["evals"][-1]["buckets"][j]["predicted_exact_match"] for s in sizes]
        p = [s["evals"][-1]["buckets"][j]["per_token_accuracy"] for s in sizes]
        line = axes[0].plot(n, em, "o-", label=_bucket(b))[0]
        axes[0].plot(n, pl, ":", color=line.get_color())
        axes[1].plot(n, p, "o-", color=line.get_color(), label=_bucket(b))
        axes[2].plot(steps, [e["buckets"][j]["exact_match"] for e in largest["evals"]], "o-",
                     color=line.get_color(), label=f"{_bucket(b)} exact")
        axes[2].plot(steps, [e["buckets"][j]["per_token_accuracy"] for e in largest["evals"]],
                     "--", color=line.get_color())
    axes[0].set(xscale="log", xlabel="non-embedding parameters N", ylabel="exact match",
                title="exact match (dotted: p^L)")
    axes[1].set(xscale="log", xlabel="non-embedding parameters N",
                ylabel="per-token accuracy p", title="per-token accuracy")
    axes[2].set(xlabel=f"training step ({largest['size']})", ylabel="score",
                title="checkpoints (dashed: per-token)")
    for ax in axes:
        ax.axhline(study["analysis"]["threshold"], color="k", lw=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def emergence_section(study: Mapping[str, Any]) -> Section:
    for key in ("sizes", "analysis"):
        if key not in study:
            raise StudyError(f"emergence.json lacks {key!r}; re-run experiments/emergence.py")
    a = study["analysis"]
    pre = study.get("pretrain_steps", 0)
    start = (f"Each size pre-trained from scratch for {pre} steps on the text corpus (its "
             "validation NLL per token in the last table), then trained by MLE on " if pre else
             "Each size trained from scratch by MLE on ")
    paragraphs = [
        f"{start}{', '.join(study.get('families', []))} (difficulties "
        f"{', '.join(str(d) for d in study.get('difficulties', []))}), scored at evenly spaced "
        "checkpoints by teacher forcing on fresh examples: per answer token (and the EOS) "
        "whether the argmax is right. Exact match is all tokens right (what greedy decoding "
        "scores); p is the pooled per-token accuracy of the bucket and p^L the mean of p^L_i "
        "over its examples (Schaeffer et al. 2023). Jumps (Wei et al. 2022) are where a curve "
        f"first reaches {a['threshold']}, interpolated in log N; a one-step share near 1 "
        "means the whole rise happens between two neighbouring points.",
        emergence_verdict(study)]
    timings = [(f"size {s['size']}", f"{s['seconds']:.1f} s") for s in study["sizes"]]
    return Section("Emergence and the metric", paragraphs,
                   [emergence_jump_table(a["across_sizes"], "N", ",.0f"),
                    emergence_jump_table(a["across_steps"], f"step ({a['largest']})", ".0f"),
                    emergence_grid_table(study["sizes"])],
                   {"emergence.png": plot_emergence(study)}, timings)


# ---- headroom -------------------------------------------------------------------------------

_AXIS_LABELS = {"rho": "fraction of answers swapped", "epochs": "passes over the training rows",
                "model": "model size", "examples": "examples a family"}


def _setting(row: Mapping[str, Any]) -> str:
    return (f"rho {row['rho']:.2f}, {row['epochs']:.1f} epochs ({row['steps']} steps), "
            f"{row['model']}, {row['examples']} a family")


def _p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.3g}"


def headroom_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    header = ["point", "setting", "params", "mle", "mle_clean", "headroom (paired)", "p",
              "adjusted p (Holm)", "seeds", "s a cell"]
    body = [[r["name"], _setting(r), str(r["params"]), _ci(r["mle"]), _ci(r["mle_clean"]),
             _ci((r["headroom"], r["headroom_ci95"])), _p(r["p"]), _p(r["p_adjusted"]),
             str(r["n"]), f"{r['seconds']:.0f}"] for r in rows]
    return Table(header, body)


def _axis_value(row: Mapping[str, Any], axis: str) -> Any:
    return row["model"] if axis == "model" else row[axis]


def plot_headroom(study: Mapping[str, Any]) -> bytes:
    """Headroom (± 95% CI) against each axis, the base point included in every panel."""
    rows = study["points"]
    axes = [a for a in _AXIS_LABELS if any(r["axis"] == a for r in rows)]
    fig, panels = pyplot().subplots(1, max(1, len(axes)), figsize=(3.2 * max(1, len(axes)), 3.2),
                                    squeeze=False)
    for ax, axis in zip(panels[0], axes):
        line = sorted((r for r in rows if r["axis"] in (axis, "base")),
                      key=lambda r: _axis_value(r, axis) if axis != "model" else r["params"])
        xs = [str(_axis_value(r, axis)) if axis == "model" else _axis_value(r, axis)
              for r in line]
        ax.errorbar(xs, [r["headroom"] for r in line], yerr=[r["headroom_ci95"] for r in line],
                    fmt="o-", capsize=3)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(xlabel=_AXIS_LABELS[axis], ylabel="mle_clean - mle (exact match)")
        if axis == "epochs":
            ax.set_xscale("log")
    fig.tight_layout()
    return png(fig)


def headroom_section(study: Mapping[str, Any]) -> Section:
    for key in ("points", "choice", "base"):
        if key not in study:
            raise StudyError(f"headroom.json lacks {key!r}; re-run experiments/headroom.py")
    rows = study["points"]
    by_name = {r["name"]: r for r in rows}
    paragraphs = [
        f"Exact match on clean test inputs of the {len(study['families'])} evaluation families "
        f"after MLE on noisy demonstrations (mle) and on the same inputs' gold answers "
        f"(mle_clean), from scratch, batch {study['batch']}; headroom is their difference "
        f"paired over {study['seeds']} seeds (mean ± 95% t-interval; p from a paired t-test, "
        f"Holm-adjusted over all {len(rows)} points). Each point changes one setting of the "
        f"base ({_setting(by_name['base'])})."]
    choice = by_name.get(study["choice"])
    if choice is None:
        paragraphs.append(f"No point's cells took at most {study['max_cell_seconds']:.0f} s: "
                          f"no regime is chosen.")
    else:
        paragraphs.append(
            f"Regime chosen (the largest headroom among points whose cells took at most "
            f"{study['max_cell_seconds']:.0f} s): {choice['name']} ({_setting(choice)}), "
            f"headroom {_ci((choice['headroom'], choice['headroom_ci95']))} from mle "
            f"{_ci(choice['mle'])} to mle_clean {_ci(choice['mle_clean'])}.")
    timings = [(f"point {r['name']}", f"{r['seconds']:.1f} s a cell") for r in rows]
    return Section("Headroom", paragraphs, [headroom_table(rows)],
                   {"headroom.png": plot_headroom(study)}, timings)


# ---- every study ----------------------------------------------------------------------------

# file -> section builder, in report order.
STUDIES: tuple[tuple[str, Callable[[Mapping[str, Any]], Section]], ...] = (
    (SCALING_FILE, scaling_section),
    (DIVERSITY_FILE, diversity_section),
    (EMERGENCE_FILE, emergence_section),
    (HEADROOM_FILE, headroom_section),
)


def study_files(workdir: str) -> list[str]:
    return [name for name, _ in STUDIES if files.exists(os.path.join(workdir, name))]


def sections(workdir: str) -> list[Section]:
    """The sections of every study file in `workdir`, in report order."""
    out = []
    for name, build in STUDIES:
        path = os.path.join(workdir, name)
        if not files.exists(path):
            continue
        try:
            study = files.read_json(path)
        except json.JSONDecodeError as e:
            raise StudyError(f"{path} is not valid JSON ({e}); re-run its experiment") from e
        out.append(build(study))
    return out
