"""Tests for learned_loss.studies.scaling_laws: Kaplan and Chinchilla fits recover known laws
from synthetic runs, bootstrap intervals cover the truth and shrink with less noise,
extrapolation flags a bent curve, and bad input is refused by name."""

import numpy as np
import pytest

from learned_loss.studies import scaling_laws

# The law Hoffmann et al. 2022 fitted to their runs (approach 3).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
# 2^5 = 32 starting points: enough for these well-conditioned synthetic runs, and fast.
SMALL_GRID = ((0.0, 10.0), (0.0, 10.0), (-1.0, 1.0), (0.2, 0.8), (0.2, 0.8))


def _kaplan_runs(alpha, n_c, noise, seed=0, num=24):
    n = np.geomspace(1e5, 1e9, num)
    rng = np.random.default_rng(seed)
    return n, (n_c / n) ** alpha * np.exp(rng.normal(0.0, noise, num))


def _chinchilla_runs(noise, seed=0):
    """A 6 x 6 grid of (N, D): 36 runs, losses with multiplicative noise."""
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6)))
    rng = np.random.default_rng(seed)
    loss = (E + A / n ** ALPHA + B / d ** BETA) * np.exp(rng.normal(0.0, noise, n.size))
    return n, d, loss


# --- Kaplan ---------------------------------------------------------------------------------

def test_kaplan_exact_on_clean_data():
    # Kaplan et al. 2020, eq. 1.1: alpha_N = 0.076, N_c = 8.8e13.
    n, loss = _kaplan_runs(0.076, 8.8e13, noise=0.0)
    fit = scaling_laws.fit_kaplan(n, loss)
    assert fit.alpha == pytest.approx(0.076, rel=1e-9)
    assert fit.n_c == pytest.approx(8.8e13, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict(n), loss, rtol=1e-9)


def test_kaplan_recovers_law_under_noise():
    n, loss = _kaplan_runs(0.34, 1e10, noise=0.005)
    fit = scaling_laws.fit_kaplan(n, loss)
    assert fit.alpha == pytest.approx(0.34, rel=0.05)
    assert fit.n_c == pytest.approx(1e10, rel=0.05)
    assert 0.99 < fit.r2 < 1.0


def test_kaplan_r2_low_when_loss_ignores_n():
    rng = np.random.default_rng(1)
    n = np.geomspace(1e5, 1e9, 24)
    fit = scaling_laws.fit_kaplan(n, 3.0 * np.exp(rng.normal(0.0, 0.05, 24)))
    assert fit.r2 < 0.3
    assert abs(fit.alpha) < 0.02


# --- Chinchilla -----------------------------------------------------------------------------

def test_chinchilla_gradient_matches_finite_differences():
    n, d, loss = _chinchilla_runs(noise=0.01)
    args = (np.log(n), np.log(d), np.log(loss), 0.05)  # large delta: both Huber branches used.
    theta = np.array([6.5, 5.5, 0.4, 0.38, 0.25])
    _, grad = scaling_laws._chinchilla_objective(theta, *args)
    step = 1e-6
    numeric = [(scaling_laws._chinchilla_objective(theta + step * e, *args)[0]
                - scaling_laws._chinchilla_objective(theta - step * e, *args)[0]) / (2 * step)
               for e in np.eye(5)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


def test_chinchilla_exact_on_clean_data():
    n, d, loss = _chinchilla_runs(noise=0.0)
    fit = scaling_laws.fit_chinchilla(n, d, loss, grid=SMALL_GRID)
    assert fit.alpha == pytest.approx(ALPHA, abs=2e-3)
    assert fit.beta == pytest.approx(BETA, abs=2e-3)
    assert fit.e == pytest.approx(E, rel=5e-3)
    assert fit.a == pytest.approx(A, rel=0.05)
    assert fit.b == pytest.approx(B, rel=0.05)
    assert fit.loss < 1e-8
    np.testing.assert_allclose(fit.predict(n, d), loss, rtol=1e-4)


def test_chinchilla_recovers_law_under_noise():
    n, d, loss = _chinchilla_runs(noise=0.005)
    fit = scaling_laws.fit_chinchilla(n, d, loss, grid=SMALL_GRID)
    assert fit.alpha == pytest.approx(ALPHA, abs=0.05)
    assert fit.beta == pytest.approx(BETA, abs=0.05)
    assert fit.e == pytest.approx(E, rel=0.05)
    assert fit.a == pytest.approx(A, rel=0.3)
    assert fit.b == pytest.approx(B, rel=0.3)
    np.testing.assert_allclose(fit.predict(n, d), loss, rtol=0.02)


def test_chinchilla_keeps_the_best_start():
    n, d, loss = _chinchilla_runs(noise=0.005)
    from_grid = scaling_laws.fit_chinchilla(n, d, loss, grid=SMALL_GRID)
    # A start far off (exponents near 0, huge constants) alone ends no better than the grid
    # (at best at the same optimum, up to the last digits of the L-BFGS stop).
    bad = scaling_laws.fit_chinchilla(n, d, loss, init=[[25.0, 0.0, -1.0, 2.0, 0.0]])
    both = scaling_laws.fit_chinchilla(n, d, loss, init=[[25.0, 0.0, -1.0, 2.0, 0.0],
                                                    scaling_laws._theta(from_grid)])
    assert from_grid.loss <= bad.loss * (1 + 1e-9)
    assert both.loss == pytest.approx(min(bad.loss, from_grid.loss), rel=1e-6)


# --- Bootstrap ------------------------------------------------------------------------------

def test_kaplan_bootstrap_covers_truth_and_shrinks_with_less_noise():
    widths = []
    for noise in (0.02, 0.002):
        n, loss = _kaplan_runs(0.34, 1e10, noise=noise, seed=3)
        interval = scaling_laws.bootstrap_exponents(n, loss, num_resamples=200, seed=0)["alpha"]
        assert interval.low < 0.34 < interval.high
        assert interval.low <= interval.estimate <= interval.high
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 4


def test_chinchilla_bootstrap_covers_truth_and_is_deterministic():
    n, d, loss = _chinchilla_runs(noise=0.01, seed=2)
    intervals = scaling_laws.bootstrap_exponents(n, loss, d, num_resamples=30, seed=7,
                                            grid=SMALL_GRID)
    assert intervals["alpha"].low < ALPHA < intervals["alpha"].high
    assert intervals["beta"].low < BETA < intervals["beta"].high
    assert intervals["alpha"].high - intervals["alpha"].low < 0.2
    again = scaling_laws.bootstrap_exponents(n, loss, d, num_resamples=30, seed=7, grid=SMALL_GRID)
    assert again == intervals
    # The fit on all runs, when the caller has it, is used as it is: the same intervals.
    full = scaling_laws.fit_chinchilla(n, d, loss, grid=SMALL_GRID)
    assert scaling_laws.bootstrap_exponents(n, loss, d, num_resamples=30, seed=7,
                                            grid=SMALL_GRID, full=full) == intervals


def test_bootstrap_seed_changes_the_resamples():
    n, loss = _kaplan_runs(0.34, 1e10, noise=0.02)
    first = scaling_laws.bootstrap_exponents(n, loss, num_resamples=50, seed=0)
    assert first == scaling_laws.bootstrap_exponents(n, loss, num_resamples=50, seed=0)
    assert first != scaling_laws.bootstrap_exponents(n, loss, num_resamples=50, seed=1)


# --- Extrapolation --------------------------------------------------------------------------

def test_extrapolation_small_for_a_power_law():
    n, loss = _kaplan_runs(0.34, 1e10, noise=0.002, num=12)
    check = scaling_laws.extrapolation_check(n, loss)
    assert check.held_out_n == n.max()
    assert check.observed.shape == (1,)
    assert check.max_abs_relative_error < 0.01


def test_extrapolation_large_when_the_curve_bends():
    # An irreducible floor: log L flattens, and a straight line fitted to the small models
    # predicts far too low a loss for the largest.
    n = np.geomspace(1e5, 1e10, 12)
    loss = 2.0 + (1e9 / n) ** 0.3
    assert scaling_laws.fit_kaplan(n, loss).r2 > 0.9  # a fit that looks fine in-sample.
    check = scaling_laws.extrapolation_check(n, loss)
    assert check.relative_error[0] < -0.1
    assert check.max_abs_relative_error > 0.1


def test_chinchilla_extrapolation_small_on_clean_data():
    n, d, loss = _chinchilla_runs(noise=0.0)
    check = scaling_laws.extrapolation_check(n, loss, d, grid=SMALL_GRID)
    assert check.observed.shape == (6,)  # the six runs of the largest model.
    assert check.max_abs_relative_error < 1e-3


# --- Bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: scaling_laws.fit_kaplan([1e6, 1e7], [3.0]), "mismatched lengths"),
    (lambda: scaling_laws.fit_kaplan([1e6], [3.0]), "at least 2 points"),
    (lambda: scaling_laws.fit_kaplan([1e6, -1e7], [3.0, 2.0]), "n must be positive"),
    (lambda: scaling_laws.fit_kaplan([1e6, 1e7], [3.0, 0.0]), "loss must be positive"),
    (lambda: scaling_laws.fit_kaplan([1e6, 1e7], [3.0, np.nan]), "loss must be finite"),
    (lambda: scaling_laws.fit_kaplan([1e6, 1e6], [3.0, 2.0]), "2 distinct model sizes"),
    (lambda: scaling_laws.fit_chinchilla([1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1]),
     "at least 5 points to fit 5 parameters"),
    (lambda: scaling_laws.fit_chinchilla([1, 2, 3, 4, 5], [1, 2, 0, 4, 5], [5, 4, 3, 2, 1]),
     "d must be positive"),
    (lambda: scaling_laws.fit_chinchilla([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2]),
     "mismatched lengths"),
    (lambda: scaling_laws.fit_chinchilla([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1],
                                    init=[[1.0, 2.0]]), r"shape \[G, 5\]"),
    (lambda: scaling_laws.extrapolation_check([1e6, 1e6, 1e6], [3.0, 2.9, 2.8]),
     "2 distinct model sizes"),
    (lambda: scaling_laws.bootstrap_exponents([1e6, 1e7], [3.0, 2.0], num_resamples=1),
     "num_resamples"),
    (lambda: scaling_laws.bootstrap_exponents([1e6, 1e7], [3.0, 2.0], level=1.5), "level"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
