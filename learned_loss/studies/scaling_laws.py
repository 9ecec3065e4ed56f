"""Scaling-law fits: Kaplan power laws, Chinchilla parametric fits, bootstrap, extrapolation.

Pure numpy/scipy analysis of finished runs; nothing here trains a model.

* Kaplan et al. 2020, "Scaling laws for neural language models", eq. 1.1:

      L(N) = (N_c / N)^alpha

  is a straight line in log-log space, log L = alpha log N_c - alpha log N, so `fit_kaplan` is an
  ordinary least-squares regression of log L on log N (slope -alpha, intercept alpha log N_c).

* Hoffmann et al. 2022, "Training compute-optimal large language models" (Chinchilla),
  approach 3 (sec. 3.3 and appendix D.2):

      L(N, D) = E + A / N^alpha + B / D^beta

  fitted as the paper does: with a = log A, b = log B, e = log E,

      log L_hat = LSE(a - alpha log N, b - beta log D, e)

  and `fit_chinchilla` minimises sum_i Huber_delta(log L_hat_i - log L_i), delta = 1e-3, with
  L-BFGS from every point of a grid of starting values, keeping the best.

* `bootstrap_exponents`: percentile intervals on the exponents from refits on runs resampled
  with replacement (Efron and Tibshirani 1993, ch. 13).

* `extrapolation_check`: fit on all but the largest model, predict the largest model's runs.

Shapes: R runs (one (N, D, L) point each), G starting points, K bootstrap resamples.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import threadpoolctl
from scipy import optimize

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2.

# Starting values (a, b, e, alpha, beta) of the paper's grid (appendix D.2): 6 * 6 * 5 * 5 * 5
# = 4500 points, about a minute per fit of 36 runs on one core.
PAPER_GRID = (np.arange(0.0, 30.0, 5.0), np.arange(0.0, 30.0, 5.0), np.arange(-1.0, 1.5, 0.5),
              np.arange(0.0, 2.5, 0.5), np.arange(0.0, 2.5, 0.5))
# A coarser default: 3^5 = 243 points, a few seconds per fit.
DEFAULT_GRID = ((0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (-1.0, 0.0, 1.0), (0.2, 0.6, 1.0),
                (0.2, 0.6, 1.0))


# ---------------------------------------------------------------------------
# Input checks.


def _positive(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array[~np.isfinite(array)][:3]}")
    if np.any(array <= 0):
        raise ValueError(f"{name} must be positive, got {array[array <= 0][:3]}")
    return array


def _check_runs(num_params: int, **columns) -> list[np.ndarray]:
    """Validated float64 columns of equal length R with R >= num_params."""
    arrays = [_positive(name, values) for name, values in columns.items()]
    lengths = {name: len(a) for name, a in zip(columns, arrays)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"mismatched lengths: {lengths}")
    count = len(arrays[0])
    if count < num_params:
        raise ValueError(f"need at least {num_params} points to fit {num_params} parameters, "
                         f"got {count}")
    return arrays


# ---------------------------------------------------------------------------
# Kaplan et al. 2020: L(N) = (N_c / N)^alpha.


class KaplanFit(NamedTuple):
    alpha: float
    n_c: float
    r2: float  # of the regression of log L on log N.

    def predict(self, n) -> np.ndarray:
        """L(N) = (N_c / N)^alpha."""
        return (self.n_c / np.asarray(n, dtype=np.float64)) ** self.alpha


def fit_kaplan(n, loss) -> KaplanFit:
    """Least squares of log L on log N (Kaplan et al. 2020, eq. 1.1). n, loss: [R]."""
    n, loss = _check_runs(2, n=n, loss=loss)
    if np.unique(n).size < 2:
        raise ValueError("n must hold at least 2 distinct model sizes")
    x, y = np.log(n), np.log(loss)                                    # [R], [R]
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(residual ** 2) / total if total > 0 else 1.0
    alpha = -slope
    # log L = alpha log N_c - alpha log N; a flat line (alpha = 0) has no N_c.
    with np.errstate(over="ignore"):  # a near-flat line puts N_c beyond float range: inf.
        n_c = float(np.exp(intercept / alpha)) if alpha != 0 else float("nan")
    return KaplanFit(alpha=float(alpha), n_c=n_c, r2=float(r2))


# ---------------------------------------------------------------------------
# Hoffmann et al. 2022: L(N, D) = E + A / N^alpha + B / D^beta.


class ChinchillaFit(NamedTuple):
    e: float
    a: float
    b: float
    alpha: float
    beta: float
    loss: float  # sum of Huber(log L_hat - log L) at the optimum.

    def predict(self, n, d) -> np.ndarray:
        """L(N, D) = E + A / N^alpha + B / D^beta."""
        n = np.asarray(n, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        return self.e + self.a / n ** self.alpha + self.b / d ** self.beta


def _chinchilla_objective(theta, log_n, log_d, log_loss, delta):
    """Sum of Huber_delta(LSE(a - alpha log N, b - beta log D, e) - log L) and its gradient.

    theta = (a, b, e, alpha, beta); log_n, log_d, log_loss: [R].
    """
    a, b, e, alpha, beta = theta
    t_n, t_d = a - alpha * log_n, b - beta * log_d                    # [R], [R]
    top = np.maximum(np.maximum(t_n, t_d), e)                         # [R]
    w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = w_n + w_d + w_e                                           # [R]
    r = top + np.log(total) - log_loss                                # [R] log L_hat - log L
    huber = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    # d Huber / d r = clip(r); d LSE / d term = softmax weight w / total.
    dr = np.clip(r, -delta, delta) / total                            # [R]
    g_n, g_d = dr * w_n, dr * w_d
    grad = np.array([g_n.sum(), g_d.sum(), (dr * w_e).sum(), -(g_n @ log_n), -(g_d @ log_d)])
    return float(huber.sum()), grad


def _minimise(theta0, args, delta):
    """L-BFGS-B from theta0; returns (theta, objective)."""
    # The objective is O(delta * R); scale it to O(R) so L-BFGS-B's tolerances mean something.
    def scaled(theta):
        value, grad = _chinchilla_objective(theta, *args, delta)
        return value / delta, grad / delta
    result = optimize.minimize(scaled, theta0, jac=True, method="L-BFGS-B",
                               options=dict(maxiter=1000))
    return result.x, result.fun * delta


def fit_chinchilla(n, d, loss, *, grid: Sequence[Sequence[float]] = DEFAULT_GRID,
                   init: Optional[np.ndarray] = None,
                   delta: float = HUBER_DELTA) -> ChinchillaFit:
    """Hoffmann et al. 2022 approach 3: Huber fit of log L with L-BFGS from a grid of starts.

    n, d, loss: [R] parameters, training tokens and final loss of each run. `grid` holds the
    starting values of (log A, log B, log E, alpha, beta), one sequence each, and every
    combination is tried; `init`, [G, 5], replaces the grid with explicit starting points.
    """
    n, d, loss = _check_runs(5, n=n, d=d, loss=loss)
    if np.unique(n).size < 2 or np.unique(d).size < 2:
        raise ValueError("n and d must each hold at least 2 distinct values")
    starts = (np.asarray(list(itertools.product(*grid)), dtype=np.float64) if init is None
              else np.atleast_2d(np.asarray(init, dtype=np.float64)))  # [G, 5]
    if starts.ndim != 2 or starts.shape[1] != 5 or len(starts) == 0:
        raise ValueError(f"starting points must have shape [G, 5], got {starts.shape}")
    args = (np.log(n), np.log(d), np.log(loss))
    best_theta, best_value = None, np.inf
    # L-BFGS-B makes thousands of tiny BLAS calls; on busy cores, waking BLAS threads for each
    # costs about 20 times the work (0.6 s against 0.03 s for one 36-run fit on 2 shared cores).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        for theta0 in starts:
            theta, value = _minimise(theta0, args, delta)
            if np.isfinite(value) and value < best_value:
                best_theta, best_value = theta, value
    if best_theta is None:
        raise ValueError("no starting point gave a finite fit")
    a, b, e, alpha, beta = best_theta
    return ChinchillaFit(e=float(np.exp(e)), a=float(np.exp(a)), b=float(np.exp(b)),
                         alpha=float(alpha), beta=float(beta), loss=float(best_value))


def _theta(fit: ChinchillaFit) -> np.ndarray:
    """(log A, log B, log E, alpha, beta): the fitter's parameters."""
    return np.array([np.log(fit.a), np.log(fit.b), np.log(fit.e), fit.alpha, fit.beta])


# ---------------------------------------------------------------------------
# Bootstrap intervals.


class Interval(NamedTuple):
    estimate: float  # fit on all runs.
    low: float
    high: float


def bootstrap_exponents(n, loss, d=None, *, num_resamples: int = 200, level: float = 0.95,
                        seed: int = 0, grid: Sequence[Sequence[float]] = DEFAULT_GRID,
                        full: Optional[Union[KaplanFit, ChinchillaFit]] = None,
                        ) -> dict[str, Interval]:
    """Percentile bootstrap intervals on the fitted exponents.

    Runs (rows of n, d, loss: [R]) are resampled with replacement K = num_resamples times and
    refitted: Kaplan (alpha) when d is None, else Chinchilla (alpha, beta), each refit started
    from the full-data optimum. The interval is the (1 - level) / 2 and (1 + level) / 2
    percentiles of the K refits. Resamples the model cannot be fitted to (e.g. a single model
    size) are drawn again; `seed` makes the result deterministic. `full`: the fit on all runs
    where the caller has it already (`fit_kaplan(n, loss)` or `fit_chinchilla(n, d, loss,
    grid=grid)`); otherwise it is fitted here.
    """
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be at least 2, got {num_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if d is None:
        n, loss = _check_runs(2, n=n, loss=loss)
        full = fit_kaplan(n, loss) if full is None else full
        names = ("alpha",)

        def refit(idx):
            return (fit_kaplan(n[idx], loss[idx]).alpha,)
    else:
        n, d, loss = _check_runs(5, n=n, d=d, loss=loss)
        full = fit_chinchilla(n, d, loss, grid=grid) if full is None else full
        names = ("alpha", "beta")
        start = _theta(full)
        def refit(idx):
            fit = fit_chinchilla(n[idx], d[idx], loss[idx], init=start)
            return fit.alpha, fit.beta
    rng = np.random.default_rng(seed)
    samples, failures = [], 0
    while len(samples) < num_resamples:
        idx = rng.integers(0, len(n), size=len(n))                    # [R]
        try:
            samples.append(refit(idx))
        except ValueError:
            failures += 1
            if failures > 10 * num_resamples:
                raise ValueError("too few resamples could be fitted; add runs") from None
    samples = np.asarray(samples)                                     # [K, len(names)]
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    low, high = np.percentile(samples, q, axis=0)
    return {name: Interval(float(getattr(full, name)), float(lo), float(hi))
            for name, lo, hi in zip(names, low, high)}


# ---------------------------------------------------------------------------
# Extrapolation.


class Extrapolation(NamedTuple):
    held_out_n: float          # the largest model size, left out of the fit.
    observed: np.ndarray       # [H] losses of its runs.
    predicted: np.ndarray      # [H] predicted by the fit on the other runs.
    relative_error: np.ndarray  # [H] (predicted - observed) / observed.
    max_abs_relative_error: float


def extrapolation_check(n, loss, d=None, *, grid: Sequence[Sequence[float]] = DEFAULT_GRID,
                        ) -> Extrapolation:
    """Fit on every run but those of the largest model; report the error on those runs.

    Kaplan (L(N)) when d is None, else Chinchilla (L(N, D)). n, d, loss: [R].
    """
    if d is None:
        n, loss = _check_runs(2, n=n, loss=loss)
    else:
        n, d, loss = _check_runs(5, n=n, d=d, loss=loss)
    largest = n.max()
    held = n == largest                                               # [R]
    if held.all():
        raise ValueError("need at least 2 distinct model sizes to hold out the largest")
    if d is None:
        fit = fit_kaplan(n[~held], loss[~held])
        predicted = fit.predict(n[held])
    else:
        if np.count_nonzero(~held) < 5:
            raise ValueError(f"need at least 5 runs besides the largest model's to fit 5 "
                             f"parameters, got {np.count_nonzero(~held)}")
        fit = fit_chinchilla(n[~held], d[~held], loss[~held], grid=grid)
        predicted = fit.predict(n[held], d[held])
    observed = loss[held]
    relative = (predicted - observed) / observed
    return Extrapolation(held_out_n=float(largest), observed=observed, predicted=predicted,
                         relative_error=relative,
                         max_abs_relative_error=float(np.max(np.abs(relative))))
