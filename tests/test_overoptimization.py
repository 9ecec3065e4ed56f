"""Tests for learned_loss.rlhf.overoptimization: best-of-n estimator, Gao et al. fits, length
buckets."""

import itertools
import math

import numpy as np
import pytest
from scipy import optimize

from learned_loss.rlhf import overoptimization as oo


# --- Best-of-n KL -------------------------------------------------------------

def test_best_of_n_kl_by_hand():
    assert oo.best_of_n_kl(1) == 0.0
    assert oo.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert oo.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75, abs=1e-15)
    kl = oo.best_of_n_kl(np.array([1, 2, 4]))
    np.testing.assert_allclose(kl, [0.0, math.log(2) - 0.5, math.log(4) - 0.75], atol=1e-15)
    assert isinstance(oo.best_of_n_kl(3), float)


@pytest.mark.parametrize("bad", [0, -1, 2.5, 2.0, True, [1, 0]])
def test_best_of_n_kl_rejects_bad_n(bad):
    with pytest.raises(ValueError):
        oo.best_of_n_kl(bad)


# --- Best-of-n estimator --------------------------------------------------------

def _brute_force(proxy, gold, n):
    """Mean over all n-subsets of the (proxy, gold) of the subset's proxy argmax."""
    picks = []
    for subset in itertools.combinations(range(len(proxy)), n):
        subset = list(subset)
        best = subset[int(np.argmax(proxy[subset]))]
        picks.append((proxy[best], gold[best]))
    return tuple(np.mean(picks, axis=0))


def test_weights_n3_k2_by_hand():
    np.testing.assert_allclose(oo.best_of_n_weights(3, 2), [0.0, 1 / 3, 2 / 3], atol=1e-15)


def test_expected_best_of_n_by_hand():
    # Sorted by proxy: (0.5, 10), (1.0, 20), (2.0, 30); weights 0, 1/3, 2/3. Subsets {0,1}, {0,2},
    # {1,2} pick golds 30, 20, 30.
    proxy = np.array([0.5, 2.0, 1.0])
    gold = np.array([10.0, 30.0, 20.0])
    p, g = oo.expected_best_of_n(proxy, gold, 2)
    assert p == pytest.approx(5 / 3, abs=1e-14)
    assert g == pytest.approx(80 / 3, abs=1e-13)


def test_n1_is_mean_and_nN_is_argmax():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=10), rng.normal(size=10)
    p, g = oo.expected_best_of_n(proxy, gold, 1)
    assert p == pytest.approx(proxy.mean(), abs=1e-14)
    assert g == pytest.approx(gold.mean(), abs=1e-14)
    p, g = oo.expected_best_of_n(proxy, gold, 10)
    assert p == pytest.approx(proxy.max(), abs=1e-14)
    assert g == pytest.approx(gold[np.argmax(proxy)], abs=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_all_subsets(seed):
    rng = np.random.default_rng(seed)
    proxy, gold = rng.normal(size=8), rng.normal(size=8)
    for n in range(1, 9):
        expected = _brute_force(proxy, gold, n)
        np.testing.assert_allclose(oo.expected_best_of_n(proxy, gold, n), expected, atol=1e-12)


def test_ties_pick_the_lowest_index_like_argmax():
    proxy = np.array([1.0, 3.0, 2.0, 3.0, 1.0, 3.0, 0.0, 2.0])
    gold = np.arange(8.0) ** 2
    for n in range(1, 9):
        expected = _brute_force(proxy, gold, n)
        np.testing.assert_allclose(oo.expected_best_of_n(proxy, gold, n), expected, atol=1e-12)


def test_proxy_is_monotone_in_n():
    rng = np.random.default_rng(3)
    proxy, gold = rng.normal(size=32), rng.normal(size=32)
    values = [oo.expected_best_of_n(proxy, gold, n)[0] for n in range(1, 33)]
    assert np.all(np.diff(values) >= -1e-12)


@pytest.mark.parametrize("n", [1, 2, 64, 256, 511, 512])
def test_weights_are_stable_for_large_n(n):
    weights = oo.best_of_n_weights(512, n)
    assert np.isfinite(weights).all()
    assert (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert (weights[:n - 1] == 0).all()


def test_expected_best_of_n_rejects_bad_inputs():
    x = np.zeros(4)
    for n in (0, 5):
        with pytest.raises(ValueError):
            oo.expected_best_of_n(x, x, n)
    with pytest.raises(ValueError):
        oo.expected_best_of_n(x, np.zeros(3), 2)
    with pytest.raises(ValueError):
        oo.expected_best_of_n(np.array([0.0, np.nan]), np.zeros(2), 1)


def test_best_of_n_curve_averages_prompts():
    rng = np.random.default_rng(4)
    proxy, gold = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    ns = [1, 2, 4, 16]
    curve = oo.best_of_n_curve(proxy, gold, ns)
    assert set(curve) == {"n", "kl", "d", "proxy", "gold"}
    np.testing.assert_array_equal(curve["n"], ns)
    np.testing.assert_allclose(curve["kl"], oo.best_of_n_kl(np.array(ns)))
    np.testing.assert_allclose(curve["d"], np.sqrt(curve["kl"]))
    for j, n in enumerate(ns):
        per_prompt = [oo.expected_best_of_n(p, g, n) for p, g in zip(proxy, gold)]
        p, g = np.mean(per_prompt, axis=0)
        assert curve["proxy"][j] == pytest.approx(p, abs=1e-12)
        assert curve["gold"][j] == pytest.approx(g, abs=1e-12)
    assert curve["proxy"][0] == pytest.approx(proxy.mean(), abs=1e-12)
    with pytest.raises(ValueError):
        oo.best_of_n_curve(proxy, gold, [17])


# --- Functional forms and fits --------------------------------------------------

def test_forms_are_zero_at_zero():
    assert oo.r_bon(0.0, 1.0, 2.0) == 0.0
    assert oo.r_rl(0.0, 1.0, 2.0) == 0.0
    assert oo.r_bon(2.0, 1.0, 0.25) == pytest.approx(2.0 * (1.0 - 0.5))
    assert oo.r_rl(math.e, 1.0, 0.5) == pytest.approx(math.e * 0.5)
    np.testing.assert_allclose(oo.gains([1.0, 2.5], 1.0), [0.0, 1.5])


@pytest.mark.parametrize("fit, form, alpha, beta, d_max", [
    (oo.fit_bon, oo.r_bon, 1.2, 0.3, 3.0),
    (oo.fit_rl, oo.r_rl, 0.8, 0.25, 12.0),
])
def test_fit_recovers_parameters(fit, form, alpha, beta, d_max):
    d = np.linspace(0.0, d_max, 25)
    exact = form(d, alpha, beta)
    result = fit(d, exact)
    assert result.alpha == pytest.approx(alpha, abs=1e-9)
    assert result.beta == pytest.approx(beta, abs=1e-9)
    assert result.r2 == pytest.approx(1.0, abs=1e-9)
    assert result.n_points == 25

    noisy = exact + 0.02 * np.random.default_rng(5).normal(size=d.shape)
    result = fit(d, noisy)
    assert result.alpha == pytest.approx(alpha, abs=0.05)
    assert result.beta == pytest.approx(beta, abs=0.05)
    assert result.r2 > 0.95
    # The linear solve is the least-squares optimum curve_fit iterates towards.
    (alpha_cf, beta_cf), _ = optimize.curve_fit(form, d, noisy, p0=(1.0, 0.1))
    assert result.alpha == pytest.approx(alpha_cf, abs=1e-6)
    assert result.beta == pytest.approx(beta_cf, abs=1e-6)


def test_fit_r2_when_r_is_constant():
    d = np.array([0.0, 1.0, 2.0])
    assert oo.fit_bon(d, np.zeros(3)).r2 == 1.0
    assert oo.fit_bon(d, np.ones(3)).r2 == 0.0


@pytest.mark.parametrize("fit", [oo.fit_bon, oo.fit_rl])
@pytest.mark.parametrize("d, r", [
    ([0.0, 1.0], [0.0, 1.0]),  # too few points
    ([0.0, 1.0, np.nan], [0.0, 1.0, 2.0]),  # non-finite d
    ([0.0, 1.0, 2.0], [0.0, np.inf, 2.0]),  # non-finite r
    ([0.0, 1.0, 2.0], [0.0, 1.0]),  # shapes differ
    ([0.0, -1.0, 2.0], [0.0, 1.0, 2.0]),  # negative d
    ([0.0, 0.0, 0.0], [0.0, 1.0, 2.0]),  # cannot identify two parameters
])
def test_fit_rejects_bad_inputs(fit, d, r):
    with pytest.raises(ValueError):
        fit(d, r)


# --- Length buckets -------------------------------------------------------------

def test_length_bucket_edges():
    np.testing.assert_allclose(oo.length_bucket_edges(np.arange(100), 4), [24.75, 49.5, 74.25])
    np.testing.assert_array_equal(oo.length_bucket_edges([5, 5, 5, 5], 4), [5.0])
    assert oo.length_bucket_edges([1, 2, 3], 1).size == 0


def test_length_only_gain_is_not_within_buckets():
    rng = np.random.default_rng(6)
    lengths_before = rng.integers(20, 120, size=4000)
    lengths_after = rng.integers(60, 200, size=4000)  # the policy only got longer
    proxy_before = 0.01 * lengths_before + 0.05 * rng.normal(size=4000)
    proxy_after = 0.01 * lengths_after + 0.05 * rng.normal(size=4000)
    edges = oo.length_bucket_edges(np.concatenate([lengths_before, lengths_after]), 40)
    out = oo.length_bucket_gain(lengths_before, proxy_before, lengths_after, proxy_after, edges)
    assert out["total_gain"] == pytest.approx(0.01 * (129.5 - 69.5), abs=0.05)
    assert abs(out["fraction_within"]) < 0.05
    assert out["mean_length_after"] > out["mean_length_before"]


def test_fixed_length_gain_is_within_buckets():
    rng = np.random.default_rng(7)
    lengths_before = rng.integers(20, 200, size=4000)
    lengths_after = rng.integers(20, 200, size=4000)  # same length distribution
    proxy_before = 0.01 * lengths_before + 0.05 * rng.normal(size=4000)
    proxy_after = 0.01 * lengths_after + 0.5 + 0.05 * rng.normal(size=4000)
    edges = oo.length_bucket_edges(lengths_before, 10)
    out = oo.length_bucket_gain(lengths_before, proxy_before, lengths_after, proxy_after, edges)
    assert out["within_gain"] == pytest.approx(0.5, abs=0.02)
    assert out["fraction_within"] == pytest.approx(1.0, abs=0.1)


def test_length_bucket_gain_by_hand():
    # Buckets (edge 10): short = {5, 8}, long = {12, 15}.
    out = oo.length_bucket_gain([5, 8, 12], [0.0, 1.0, 2.0], [8, 12, 15, 15], [1.5, 3.0, 3.0, 2.0],
                                edges=[10])
    np.testing.assert_array_equal(out["count_before"], [2, 1])
    np.testing.assert_array_equal(out["count_after"], [1, 3])
    np.testing.assert_allclose(out["mean_before"], [0.5, 2.0])
    np.testing.assert_allclose(out["mean_after"], [1.5, 8 / 3])
    assert out["total_gain"] == pytest.approx(9.5 / 4 - 1.0)
    assert out["within_gain"] == pytest.approx(0.25 * 1.0 + 0.75 * (8 / 3 - 2.0))
    assert out["fraction_within"] == pytest.approx(out["within_gain"] / out["total_gain"])
    assert out["mean_length_before"] == pytest.approx(25 / 3)
    assert out["mean_length_after"] == pytest.approx(12.5)


def test_length_bucket_gain_edge_cases():
    same = oo.length_bucket_gain([1, 2], [1.0, 1.0], [1, 2], [1.0, 1.0], edges=[1.5])
    assert math.isnan(same["fraction_within"])
    apart = oo.length_bucket_gain([1, 2], [0.0, 0.0], [8, 9], [1.0, 1.0], edges=[5])
    assert math.isnan(apart["within_gain"])
    assert np.isnan(apart["mean_after"][0])
    with pytest.raises(ValueError):
        oo.length_bucket_gain([1, 2], [0.0], [1], [0.0], edges=[5])
    with pytest.raises(ValueError):
        oo.length_bucket_gain([1], [0.0], [1], [0.0], edges=[5, 5])


# --- Peak and inverted U --------------------------------------------------------

def test_peak_and_inverted_u():
    d = [0.0, 1.0, 2.0, 3.0, 4.0]
    hump = [0.0, 1.0, 3.0, 2.0, 1.5]
    assert oo.peak(d, hump) == {"d_peak": 2.0, "gold_peak": 3.0, "index": 2}
    assert oo.is_inverted_u(d, hump, min_drop=1.5)
    assert not oo.is_inverted_u(d, hump, min_drop=2.0)
    assert not oo.is_inverted_u(d, [0.0, 1.0, 2.0, 3.0, 4.0])  # still rising
    assert not oo.is_inverted_u(d, [4.0, 3.0, 2.0, 1.0, 0.0])  # peak at the start
    assert not oo.is_inverted_u(d, [0.0, 2.0, 2.0, 2.0, 2.0])  # plateau, no drop
    with pytest.raises(ValueError):
        oo.peak([1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError):
        oo.peak([0.0, 1.0], [0.0])
