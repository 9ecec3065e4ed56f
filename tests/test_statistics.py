"""Statistics against numbers worked out by hand and against scipy: intervals, paired tests,
Holm and Benjamini-Hochberg, the minimum detectable effect, headroom, the prompt bootstrap and
the generated findings."""

import math

import numpy as np
import pytest
from scipy import stats

from learned_loss.studies import statistics


def test_mean_ci_matches_scipy():
    x = [0.5, 0.7, 0.6, 0.65]
    mean, half = statistics.mean_ci(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x)) and half == pytest.approx((hi - lo) / 2)
    # t_{0.975, 2} = 4.303; sd 0.1; n 3. A nan is left out.
    assert statistics.mean_ci([0.5, 0.7, math.nan, 0.6])[1] == pytest.approx(
        4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    assert statistics.mean_ci([0.3]) == (0.3, 0.0)
    assert all(math.isnan(v) for v in statistics.mean_ci([]))


def test_paired_over_common_seeds():
    a, b = {0: 0.6, 1: 0.7, 2: 0.65, 5: 0.1}, {0: 0.5, 1: 0.55, 2: 0.6, 3: math.nan}
    p = statistics.paired(a, b)
    assert p["n"] == 3 and p["mean"] == pytest.approx(0.1)
    assert p["sd"] == pytest.approx(0.05)  # differences 0.1, 0.15, 0.05
    assert p["p"] == pytest.approx(stats.ttest_rel([0.6, 0.7, 0.65], [0.5, 0.55, 0.6]).pvalue)
    # A seed whose value is nan is no pair.
    assert statistics.paired({0: 0.1, 1: math.nan}, {0: 0.0, 1: 0.2})["n"] == 1
    # Identical differences: no test (nan), not a division by zero.
    assert math.isnan(statistics.paired({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})["p"])
    one = statistics.paired({0: 1.0}, {0: 0.5})
    assert (one["n"], one["ci95"]) == (1, 0.0) and math.isnan(one["p"]) and math.isnan(one["sd"])


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running max.
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Nan passes through and does not count in m (m = 2 here); capped at 1.
    out = statistics.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert statistics.holm([0.5, 0.6]) == [1.0, 1.0]
    assert statistics.holm([]) == []


def test_benjamini_hochberg_by_hand():
    # Sorted 0.001, 0.04, 0.045, 0.5 times m / rank (4, 2, 4/3, 1): 0.004, 0.08, 0.06, 0.5;
    # running minimum from the top: 0.004, 0.06, 0.06, 0.5.
    out = statistics.benjamini_hochberg([0.045, math.nan, 0.001, 0.5, 0.04])
    assert math.isnan(out[1])
    assert [out[i] for i in (0, 2, 3, 4)] == pytest.approx([0.06, 0.004, 0.5, 0.06])
    assert statistics.adjust([0.045, 0.001, 0.5, 0.04], "bh") == pytest.approx(
        [0.06, 0.004, 0.5, 0.06])
    with pytest.raises(ValueError, match=r"'holm', 'bh'"):
        statistics.adjust([0.1], "bonferroni")


def test_minimum_detectable_effect():
    sd, n, alpha = 0.05, 5, 0.05 / 4
    expected = (stats.t.ppf(1 - alpha / 2, 4) + stats.t.ppf(0.8, 4)) * sd / math.sqrt(5)
    assert statistics.minimum_detectable_effect(sd, n, alpha) == pytest.approx(expected)
    assert math.isnan(statistics.minimum_detectable_effect(sd, 1, alpha))
    # At 30 pairs the exact noncentral-t power at that difference is the 0.8 asked for.
    n = 30
    effect = statistics.minimum_detectable_effect(1.0, n, 0.05)
    crit = stats.t.ppf(0.975, n - 1)
    power = stats.nct.sf(crit, n - 1, effect * math.sqrt(n)) + stats.nct.cdf(
        -crit, n - 1, effect * math.sqrt(n))
    assert power == pytest.approx(0.8, abs=0.005)


def test_headroom_fraction_and_bootstrap():
    mle = {0: 0.5, 1: 0.5, 2: 0.5}
    clean = {0: 0.8, 1: 0.7, 2: 0.9}
    arm = {0: 0.6, 1: 0.7, 2: 0.65, 7: 0.99}  # seed 7 has no partner
    # Gains 0.1, 0.2, 0.15 (mean 0.15) over gaps 0.3, 0.2, 0.4 (mean 0.3).
    h = statistics.headroom(arm, mle, clean, resamples=500)
    assert h["fraction"] == pytest.approx(0.5) and h["gap"] == pytest.approx(0.3)
    assert h["n"] == 3 and h["ci95"][0] <= 0.5 <= h["ci95"][1] and h["ci95"][0] < h["ci95"][1]
    assert statistics.headroom(arm, mle, clean, resamples=500) == h
    # Every seed recovers exactly a third: every resample does too.
    third = {s: 0.5 + (clean[s] - 0.5) / 3 for s in mle}
    assert statistics.headroom(third, mle, clean)["ci95"] == pytest.approx((1 / 3, 1 / 3))
    # No gap: no fraction.
    assert math.isnan(statistics.headroom(arm, mle, mle)["fraction"])
    # A gap that resamples often reverse: the interval is unbounded.
    wobbly = {0: 0.8, 1: 0.2, 2: 0.55}
    assert statistics.headroom(arm, mle, wobbly)["ci95"] == (-math.inf, math.inf)


def test_prompt_bootstrap_pairs_by_input_id_within_seed():
    def cell(seed, ids, em):
        return {"seed": seed, "per_prompt": {"input_id": ids, "family": ["f"] * len(ids),
                                             "exact_match": em}}

    a = [cell(0, ["x", "y", "z"], [1, 1, 0]), cell(1, ["x", "y"], [1, 0])]
    b = [cell(0, ["z", "y", "x"], [0, 0, 1]), cell(1, ["x", "y", "w"], [0, 0, 1])]
    # Pairs: seed 0 x 0, y 1, z 0; seed 1 x 1, y 0 (w is unpaired): mean 2 / 5.
    out = statistics.prompt_bootstrap(a, b, resamples=400, seed=1)
    assert out["mean"] == pytest.approx(0.4) and (out["prompts"], out["pairs"]) == (3, 5)
    # A resample's mean lies between all-z (0) and all-x or all-y (1/2).
    assert 0.0 <= out["ci95"][0] <= 0.4 <= out["ci95"][1] <= 0.5
    assert statistics.prompt_bootstrap(a[::-1], b[::-1], resamples=400, seed=1) == out
    assert math.isnan(statistics.prompt_bootstrap(a, [cell(0, ["q"], [1])])["mean"])


def _test(p, mean=0.05, a="learned", b="mle", n=5, sd=0.03):
    return {"a": a, "b": b, "group": "swap30", "mean": mean, "ci95": 0.03, "p": p, "n": n,
            "sd": sd}


def test_a_finding_flips_when_corrected_among_more_tests():
    alone = statistics.findings([_test(0.02)])
    assert alone[0]["significant"] and alone[0]["p_adjusted"] == pytest.approx(0.02)
    assert alone[0]["text"] == ("learned beats mle on swap30 by +0.050 (95% CI ±0.030, "
                                "adjusted p 0.02, n 5 seeds).")
    among = statistics.findings([_test(0.02)] + [_test(0.5, a=f"o{i}") for i in range(3)])
    assert not among[0]["significant"] and among[0]["p_adjusted"] == pytest.approx(0.08)
    mde = statistics.minimum_detectable_effect(0.03, 5, 0.05 / 4)
    assert among[0]["text"] == (
        f"No detectable difference between learned and mle on swap30 at 5 seeds "
        f"(+0.050 ± 0.030, adjusted p 0.08); the smallest difference 5 seeds could detect is "
        f"{mde:.3f}.")
    # Benjamini-Hochberg keeps it: 0.02 * 4 / 1 = 0.08 too, but among tests at 0.021 each
    # the step-up lowers it to 0.021.
    bh = statistics.findings([_test(0.02)] + [_test(0.021, a=f"o{i}") for i in range(3)], "bh")
    assert bh[0]["significant"] and bh[0]["p_adjusted"] == pytest.approx(0.021)


def test_findings_direction_and_untested():
    out = statistics.findings([_test(0.001, mean=-0.2), _test(math.nan, n=1),
                               _test(math.nan, mean=0.0, n=3, sd=0.0)])
    assert out[0]["text"].startswith("mle beats learned on swap30 by +0.200 (")
    assert "adjusted p 0.001," in out[0]["text"]  # m = 1: the untested do not count
    assert out[1]["text"] == ("learned and mle on swap30 not tested: 1 seed in common "
                              "(a paired test needs 2).")
    assert "not tested: the difference is +0.000 at every one of the 3 seeds" in out[2]["text"]
    assert math.isnan(out[1]["p_adjusted"]) and not out[1]["significant"]
    record = statistics.findings_record(out, "holm")
    assert record["tests"] == 1 and record["findings"][1]["p_adjusted"] is None
    assert record["findings"][0]["p"] == 0.001 and record["correction"] == "holm"


def test_format_p():
    assert [statistics.format_p(p) for p in (0.012, 0.62, 1.0, 0.0004, math.nan)] == [
        "0.012", "0.62", "1.0", "< 0.001", "n/a"]
