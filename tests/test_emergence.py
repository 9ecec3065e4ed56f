"""Tests for learned_loss.studies.emergence_metrics: p^L matches exact match when tokens err
independently and not when errors cluster, jump points move to larger models as answers grow
longer while the per-token curve stays smooth, length buckets, and bad input refused by name."""

import numpy as np
import pytest

from learned_loss.studies import emergence_metrics as metrics


def _records(p, length, num, rng, *, clustered=0.0):
    """`num` examples of answer length `length`.

    Independent: each token right with probability p. With `clustered` = q, an example is fully
    right with probability q and otherwise each token is right with probability p.
    """
    knows = rng.random(num) < clustered                                 # [M]
    flags = (rng.random((num, length)) < p) | knows[:, None]           # [M, L]
    return [{"length": length, "token_correct": f, "exact": bool(f.all())} for f in flags]


def _observed(records):
    flags = np.concatenate([r["token_correct"] for r in records])
    return flags.mean(), np.mean([r["exact"] for r in records])


def test_p_to_the_l_by_hand():
    np.testing.assert_allclose(metrics.exact_match_from_per_token([0.9, 0.5], [3, 2]),
                               [0.729, 0.25])
    np.testing.assert_allclose(metrics.exact_match_from_per_token(0.8, [1, 2, 4]),
                               [0.8, 0.64, 0.4096])


def test_p_to_the_l_matches_independent_tokens():
    rng = np.random.default_rng(0)
    per_size = [_observed(_records(p, 8, 4000, rng)) for p in (0.6, 0.75, 0.85, 0.92, 0.97)]
    p, em = map(np.array, zip(*per_size))
    comparison = metrics.compare_exact_match(p, em, 8)
    assert comparison.predicted.shape == (5,)
    assert comparison.max_abs_error < 0.03
    np.testing.assert_allclose(comparison.residual, em - p ** 8)


def test_p_to_the_l_fails_for_clustered_errors():
    # Half the examples are fully right, the rest right per token with p = 0.5: the per-token
    # accuracy is 0.75, so p^8 = 0.10, but the exact match is about 0.50.
    rng = np.random.default_rng(1)
    p, em = _observed(_records(0.5, 8, 4000, rng, clustered=0.5))
    comparison = metrics.compare_exact_match([p], [em], 8)
    assert comparison.residual[0] > 0.3
    assert comparison.max_abs_error > 0.3


def test_jump_point_interpolates_in_log_n():
    sizes = [1e6, 1e7, 1e8, 1e9]
    assert metrics.jump_point(sizes, [0.1, 0.3, 0.7, 0.9]) == pytest.approx(10 ** 7.5)
    assert metrics.jump_point(sizes, [0.1, 0.3, 0.7, 0.9], threshold=0.7) == \
        pytest.approx(1e8)
    assert np.isnan(metrics.jump_point(sizes, [0.0, 0.1, 0.2, 0.3]))
    assert metrics.jump_point(sizes, [0.6, 0.7, 0.8, 0.9]) == 1e6


def test_max_relative_step():
    assert metrics.max_relative_step(np.linspace(0.0, 1.0, 11)) == pytest.approx(0.1)
    assert metrics.max_relative_step([0.0, 0.0, 0.0, 1.0]) == 1.0
    assert metrics.max_relative_step([0.3, 0.3]) == 0.0


def test_jump_moves_with_length_while_per_token_stays_smooth():
    sizes = np.geomspace(1e6, 1e10, 17)
    p = np.linspace(0.5, 0.99, 17)  # per-token accuracy, linear in log N.
    curves = metrics.emergence_curves(sizes, p, [1, 4, 16, 64])
    assert curves.exact_match.shape == (4, 17)
    np.testing.assert_allclose(curves.exact_match[2], p ** 16)
    assert np.all(np.isfinite(curves.jump_points))
    assert np.all(np.diff(curves.jump_points) > 0)
    # p^L = 0.5 where p = 0.5^(1/L), at a known log N since p is linear in log N. Interpolating
    # p^L linearly between grid points (0.25 apart in log10 N) is exact only for L = 1.
    for length, jump in zip(curves.lengths, curves.jump_points):
        fraction = (0.5 ** (1 / length) - 0.5) / 0.49
        tolerance = 1e-9 if length == 1 else 0.05
        assert np.log10(jump) == pytest.approx(6 + 4 * fraction, abs=tolerance)
    assert curves.per_token_step == pytest.approx(1 / 16)
    assert curves.exact_match_step[0] == pytest.approx(1 / 16)
    assert curves.exact_match_step[-1] > 0.5  # most of the rise in one step of 16.


def test_bucket_by_length_by_hand():
    records = [
        {"length": 2, "token_correct": [1, 1], "exact": True},
        {"length": 2, "token_correct": [1, 0], "exact": False},
        {"length": 4, "token_correct": [1, 1, 1, 0]},                 # exact from the flags.
        {"length": 4, "token_correct": [1, 1, 1, 1], "exact": None},
        {"length": 5, "token_correct": [0, 0, 0, 0, 0], "exact": False},
    ]
    every = metrics.bucket_by_length(records)
    np.testing.assert_array_equal(every.low, [2, 4, 5])
    np.testing.assert_array_equal(every.count, [2, 2, 1])
    np.testing.assert_allclose(every.exact_match, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(every.per_token_accuracy, [0.75, 0.875, 0.0])
    np.testing.assert_allclose(every.predicted_exact_match, [0.75 ** 2, 0.875 ** 4, 0.0])
    wide = metrics.bucket_by_length(records, edges=[1, 3, 6, 9])  # [6, 9) is empty: dropped.
    np.testing.assert_array_equal(wide.low, [1, 3])
    np.testing.assert_array_equal(wide.high, [2, 5])
    np.testing.assert_allclose(wide.exact_match, [0.5, 1 / 3])
    np.testing.assert_allclose(wide.per_token_accuracy, [0.75, 7 / 13])
    np.testing.assert_allclose(wide.predicted_exact_match,
                               [0.75 ** 2, (2 * (7 / 13) ** 4 + (7 / 13) ** 5) / 3])


def test_bucket_prediction_matches_independent_tokens():
    rng = np.random.default_rng(2)
    records = [r for length in (1, 3, 9) for r in _records(0.9, length, 3000, rng)]
    buckets = metrics.bucket_by_length(records)
    np.testing.assert_array_equal(buckets.low, [1, 3, 9])
    np.testing.assert_allclose(buckets.per_token_accuracy, 0.9, atol=0.01)
    np.testing.assert_allclose(buckets.exact_match, buckets.predicted_exact_match, atol=0.03)
    assert np.all(np.diff(buckets.exact_match) < 0)


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.exact_match_from_per_token(1.2, 3), "per_token_accuracy must lie in"),
    (lambda: metrics.exact_match_from_per_token(np.nan, 3), "per_token_accuracy must lie in"),
    (lambda: metrics.exact_match_from_per_token(0.5, 0), "lengths must be at least 1"),
    (lambda: metrics.exact_match_from_per_token(0.5, 2.5), "lengths must be integers"),
    (lambda: metrics.compare_exact_match([0.5, 0.6], [0.2], 2), "mismatched shapes"),
    (lambda: metrics.compare_exact_match([0.5, 0.6], [0.2, -0.1], 2),
     "exact_match must lie in"),
    (lambda: metrics.jump_point([1e7, 1e6], [0.1, 0.9]), "strictly increasing"),
    (lambda: metrics.jump_point([1e6, 1e7], [0.1, 0.5, 0.9]), "mismatched shapes"),
    (lambda: metrics.jump_point([0.0, 1e7], [0.1, 0.9]), "sizes must be positive"),
    (lambda: metrics.emergence_curves([1e6, 1e7], [0.5, 0.9], []), "lengths must be"),
    (lambda: metrics.bucket_by_length([]), "no records"),
    (lambda: metrics.bucket_by_length([{"length": 4, "token_correct": [1, 1, 1]}]),
     "token_correct has 3 flags but length is 4"),
    (lambda: metrics.bucket_by_length([{"token_correct": [1]}]), "has no 'length'"),
    (lambda: metrics.bucket_by_length([{"length": 1, "token_correct": [1]}], edges=[3, 2]),
     "edges must be increasing"),
    (lambda: metrics.bucket_by_length([{"length": 1, "token_correct": [1]}], edges=[3, 5]),
     "no record has a length inside"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
