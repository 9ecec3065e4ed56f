"""What a learned objective learned: plots, and small closed forms fitted to it.

For the learned token loss, the features of every answer token of the (noisy) demonstrations are
read off a model part-way through training with the learned loss; the network's weight w(x) is
then plotted against its main features, split by clean and corrupted examples, and each
candidate of `learned.CLOSED_FORMS` (w = 2 sigmoid(bias + coef . x)) is fitted to w by least
squares (scipy.optimize.least_squares). The best fit is written as an artifact that fine-tuning
loads like the network itself, so a comparison can measure how much of the gain it keeps.

For the learned preference loss, f_theta(x) is plotted against DPO's -log sigmoid(x) (Rafailov
et al. 2023) over x = beta * delta, beside the margins an inner run under theta visits, and each
candidate of `learned.PREFERENCE_FORMS` (a tempered DPO, cDPO / robust DPO's linear term, an
IPO-like square, DiscoPOP's log-ratio modulated mixture; Lu et al. 2024) is fitted to f_theta at
those margins by least squares. The chosen fit is a `learned_preference_loss` artifact that DPO
loads like the network (`--config.dpo.learned_path`).
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import optimize, special  # noqa: E402


from learned_loss.core import files  # noqa: E402
from learned_loss.data import training_rows  # noqa: E402
from learned_loss.objectives import artifact, learned, mle  # noqa: E402


def token_table(model, params, rows: training_rows.Demonstrations, features: Sequence[str],
                reference: Any = None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every answer token of `rows` under `params`: {feature name: [N], 'corrupted': [N] bool,
    'example': [N] row index}. `reference`: the reference params (for 'ref_log_prob')."""
    columns: dict[str, list] = {name: [] for name in features}
    corrupted, example = [], []
    apply = jax.jit(lambda p, x: model.apply(p, x).logits)
    for start in range(0, len(rows), batch_size):
        batch = {k: jnp.asarray(v[start:start + batch_size]) for k, v in rows.batch().items()}
        if "ref_log_prob" in features:
            batch["ref_log_probs"] = mle.token_log_likelihood(
                apply(reference, batch["inputs"]), batch["targets"])
        x = np.asarray(learned.token_features(apply(params, batch["inputs"]), batch, features))
        mask = np.asarray(batch["mask"]) > 0  # [b, T]
        for i, name in enumerate(features):
            columns[name].append(x[..., i][mask])
        rows_index = np.broadcast_to(np.arange(start, start + mask.shape[0])[:, None],
                                     mask.shape)[mask]
        example.append(rows_index)
        corrupted.append(rows.corrupted[rows_index])
    table = {name: np.concatenate(v) for name, v in columns.items()}
    table["corrupted"] = np.concatenate(corrupted)
    table["example"] = np.concatenate(example)
    return table


def network_weights(theta: Mapping[str, Any], table: Mapping[str, np.ndarray],
                    features: Sequence[str]) -> np.ndarray:
    """[N] the learned network's weights 2 sigmoid(g_theta(x)) on the table's features."""
    x = jnp.stack([jnp.asarray(table[name]) for name in features], axis=-1)
    return np.asarray(2.0 * jax.nn.sigmoid(learned.mlp(theta, x)))


def fit_closed_forms(table: Mapping[str, np.ndarray], weights: np.ndarray) -> list[dict]:
    """Least-squares fit of each closed form to `weights`; sorted by mean squared error.

    Returns [{form, theta {'bias', 'coef'}, mse, r2}]; forms whose features the table lacks are
    skipped.
    """
    total = float(np.var(weights)) or 1e-12
    fits = []
    for form, names in learned.CLOSED_FORMS.items():
        if any(n not in table for n in names):
            continue
        x = np.stack([table[n] for n in names], axis=-1) if names else np.zeros(
            (len(weights), 0))

        def residual(p, x=x):
            return 2.0 / (1.0 + np.exp(-(p[0] + x @ p[1:]))) - weights

        solution = optimize.least_squares(residual, np.zeros(1 + x.shape[1]))
        mse = float(np.mean(solution.fun ** 2))
        fits.append({"form": form, "features": list(names),
                     "theta": {"bias": float(solution.x[0]),
                               "coef": [float(c) for c in solution.x[1:]]},
                     "mse": mse, "r2": 1.0 - mse / total})
    return sorted(fits, key=lambda f: f["mse"])


def choose(fits: Sequence[Mapping[str, Any]], tolerance: float = 0.02) -> Mapping[str, Any]:
    """The simplest form whose R^2 is within `tolerance` of the best one."""
    best = max(f["r2"] for f in fits)
    good = [f for f in fits if f["r2"] >= best - tolerance]
    return min(good, key=lambda f: len(f["features"]))


def _save_figure(fig, path: str) -> str:
    """Writes `fig` as a PNG to `path` (local or in a bucket, atomically), closes it, and
    returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return files.write_atomic(path, buffer.getvalue())


def save_closed_form(path: str, fit: Mapping[str, Any], source: str) -> None:
    """The fit as a learned_token_loss artifact (objectives.build reads `closed_form`)."""
    theta = {"bias": np.float32(fit["theta"]["bias"]),
             "coef": np.asarray(fit["theta"]["coef"], np.float32)}
    artifact.save(path, "learned_token_loss", theta,
                  {"closed_form": fit["form"], "features": fit["features"]},
                  {"fitted_to": source}, {"fit": dict(fit)})


def plot_token_loss(table: Mapping[str, np.ndarray], weights: np.ndarray,
                    fit: Mapping[str, Any] | None, path: str) -> str:
    """Weight against log_prob and answer_log_prob (clean and corrupted examples apart), and the
    per-example mean weight of clean and corrupted demonstrations."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    corrupted = table["corrupted"]
    for ax, name in zip(axes[:2], ("log_prob", "answer_log_prob")):
        if name not in table:
            ax.set_visible(False)
            continue
        for flag, colour, label in ((False, "tab:blue", "clean"), (True, "tab:red", "corrupted")):
            sel = corrupted == flag
            ax.scatter(table[name][sel] * learned.LOG_PROB_SCALE, weights[sel], s=3, alpha=0.3,
                       color=colour, label=f"{label} ({sel.sum()} tokens)")
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="MLE (w = 1)")
        ax.set_xlabel(f"{name} (nats)")
        ax.set_ylabel("learned weight w")
        ax.legend(fontsize=8, markerscale=3)
    examples = table["example"]
    ids = np.unique(examples)
    mean_w = np.array([weights[examples == i].mean() for i in ids])
    bad = np.array([table["corrupted"][examples == i][0] for i in ids])
    bins = np.linspace(0, 2, 41)
    axes[2].hist(mean_w[~bad], bins=bins, alpha=0.6, label="clean examples", color="tab:blue")
    axes[2].hist(mean_w[bad], bins=bins, alpha=0.6, label="corrupted examples", color="tab:red")
    axes[2].set_xlabel("mean weight over the example's answer")
    axes[2].legend(fontsize=8)
    title = "learned token loss"
    if fit is not None:
        title += f"; closed form '{fit['form']}' R^2 {fit['r2']:.3f}"
    fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_preference_loss(theta: Mapping[str, Any], path: str, beta_delta_max: float = 10.0,
                         margins: np.ndarray | None = None,
                         fit: Mapping[str, Any] | None = None) -> str:
    """f_theta(x) and DPO's -log sigmoid(x) over x = beta * delta; with `margins` [N], their
    histogram (the range is then theirs, widened by a quarter), with `fit`, its closed form."""
    if margins is not None and len(margins):
        lo, hi = float(np.min(margins)), float(np.max(margins))
        pad = 0.25 * max(hi - lo, 1.0)
        x = np.linspace(lo - pad, hi + pad, 401)
    else:
        x = np.linspace(-beta_delta_max, beta_delta_max, 401)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, np.asarray(learned.preference_curve(theta, jnp.asarray(x))), label="learned f")
    ax.plot(x, np.asarray(-jax.nn.log_sigmoid(jnp.asarray(x))), ls="--", label="DPO")
    if fit is not None:
        ax.plot(x, closed_form_values(fit["params"], x), ls=":",
                label=f"closed form {fit['form']} (R^2 {fit['r2']:.4f})")
    if margins is not None and len(margins):
        counts = ax.twinx()
        counts.hist(margins, bins=40, color="tab:gray", alpha=0.25)
        counts.set_ylabel("pairs (margins of the inner run)")
    ax.set_xlabel("beta * delta (log-ratio margin)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


# ---- the learned preference loss ---------------------------------------------------------------


def preference_values(theta: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """[N] f_theta at the margins x [N] (the network or a closed form), as float64."""
    return np.asarray(learned.preference_curve(theta, jnp.asarray(x, jnp.float32)), np.float64)


def closed_form_values(params: Mapping[str, float], x: np.ndarray) -> np.ndarray:
    """[N] `learned.closed_form_preference_curve` in float64 numpy (for scipy's fit)."""
    z = params["a"] * x + params["b"]
    log_gate = special.log_expit(x * np.exp(-params["log_t"]))
    exponential = params["w"] * np.exp(np.minimum(log_gate - z, 30.0))
    logistic = (1.0 - params["w"] * np.exp(log_gate)) * -special.log_expit(z)
    return logistic + exponential + params["c"] * x + params["q"] * x ** 2 + params["d"]


def fit_preference_forms(x: np.ndarray, values: np.ndarray) -> list[dict]:
    """Least-squares fit of each `learned.PREFERENCE_FORMS` candidate to f values [N] at the
    margins x [N] (each margin weighs once, so the fit follows where the inner run goes).

    Returns [{form, params (every parameter, the fixed ones at their DPO values), free, mse,
    r2, r2_beyond_dpo}], sorted by mean squared error. `r2` is the share of f's variance the
    form explains; `r2_beyond_dpo` the share of the variance of f's departure from DPO's loss,
    f(x) - (-log sigmoid(x)), since DPO's own term, which every form contains, would otherwise
    count as explained.
    """
    x, values = np.asarray(x, np.float64), np.asarray(values, np.float64)
    total = float(np.var(values)) or 1e-12
    beyond = float(np.var(values + special.log_expit(x))) or 1e-12
    fits = []
    for form, free in learned.PREFERENCE_FORMS.items():
        best = None
        for start in _starts(free):
            def params_of(p, free=free, start=start):
                return dict(start, **dict(zip(free, p)))

            solution = optimize.least_squares(
                lambda p, params_of=params_of: closed_form_values(params_of(p), x) - values,
                np.array([start[k] for k in free]), x_scale="jac")
            if best is None or solution.cost < best[0].cost:
                best = (solution, params_of(solution.x))
        mse = float(np.mean(best[0].fun ** 2))
        fits.append({"form": form, "params": {k: float(v) for k, v in best[1].items()},
                     "free": list(free), "mse": mse, "r2": 1.0 - mse / total,
                     "r2_beyond_dpo": 1.0 - mse / beyond})
    return sorted(fits, key=lambda f: f["mse"])


def _starts(free: Sequence[str]) -> list[dict]:
    """Starting points of a form's fit: DPO's parameters; a gated form (its fit has local
    minima in the gate's temperature) from a half-open gate at three temperatures."""
    start = dict(learned.PREFERENCE_FORM_INIT)
    if "w" not in free:
        return [start]
    # The gate's gradient vanishes at w = 0.
    return [dict(start, w=0.5, log_t=log_t) for log_t in (-1.0, 0.0, 1.0)]


def choose_preference_form(fits: Sequence[Mapping[str, Any]],
                           tolerance: float = 0.005) -> Mapping[str, Any]:
    """The form with the fewest free parameters whose R^2 beyond DPO is within `tolerance` of
    the best."""
    best = max(f["r2_beyond_dpo"] for f in fits)
    good = [f for f in fits if f["r2_beyond_dpo"] >= best - tolerance]
    return min(good, key=lambda f: (len(f["free"]), -f["r2_beyond_dpo"]))


def save_preference_closed_form(path: str, fit: Mapping[str, Any], source: str,
                                settings: Mapping[str, Any] | None = None) -> None:
    """The fit as a learned_preference_loss artifact (`learned.preference_curve` reads a theta
    of closed-form parameters)."""
    theta = {k: np.float32(v) for k, v in fit["params"].items()}
    artifact.save(path, "learned_preference_loss", theta,
                  dict(settings or {}, closed_form=fit["form"]), {"fitted_to": source},
                  {"fit": dict(fit)})
