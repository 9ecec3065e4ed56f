"""Statistics of a comparison over seeds, and the sentences a report states from them.

Pure functions on plain numbers and {seed: value} mappings; learned_loss/report/render.py and
learned_loss/studies/noisy_demonstrations.py both use them, so a finding reads the same wherever it
appears.

  mean_ci                    mean and Student-t interval over seeds (Student 1908)
  paired                     paired t-test of a - b over the seeds both have (scipy ttest_rel)
  holm, benjamini_hochberg   adjusted p-values over a family of tests (Holm 1979;
  adjust                     Benjamini and Hochberg 1995)
  minimum_detectable_effect  the smallest paired difference a test has power to detect
  headroom                   the fraction of the clean-data gap an arm recovers, bootstrapped
  prompt_bootstrap           a paired difference resampled over test prompts
  findings                   every test corrected together, each stated as one sentence
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from learned_loss.core import errors

# Multiplicity corrections by name, as a report names them.
NAMES = {"holm": "Holm 1979", "bh": "Benjamini-Hochberg 1995"}
METHODS = tuple(NAMES)
ALPHA = 0.05
POWER = 0.8


def _stats():
    """scipy.stats, imported at its first use (about 0.6 s at the start of every entry point
    that imports the reports otherwise)."""
    from scipy import stats  # pylint: disable=import-outside-toplevel

    return stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval t_{(1+level)/2, n-1} * s / sqrt(n)) over the
    finite values (Student 1908); the half-width is 0 for one value, and both are nan for none."""
    x = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), 0.0
    half = _stats().t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def _common(*by_seed: Mapping[int, float]) -> list[int]:
    """The seeds every mapping has a finite value for, sorted."""
    seeds = set.intersection(*(set(m) for m in by_seed))
    return sorted(s for s in seeds if all(math.isfinite(m[s]) for m in by_seed))


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Paired comparison of a - b over the seeds both have a finite value for: the mean
    difference and its 95% t half-width, the two-sided paired t-test p-value (Student 1908;
    scipy.stats.ttest_rel), n pairs and the sample sd of the differences. p is nan with fewer
    than 2 pairs or when every difference is the same (no spread to test against); sd is nan
    with fewer than 2 pairs."""
    seeds = _common(a, b)
    diff = np.asarray([a[s] - b[s] for s in seeds], np.float64)
    mean, half = mean_ci(list(diff))
    p = math.nan
    if len(diff) >= 2 and np.ptp(diff) > 0:
        p = float(_stats().ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    sd = float(diff.std(ddof=1)) if len(diff) >= 2 else math.nan
    return {"mean": mean, "ci95": half, "p": p, "n": len(seeds), "sd": sd}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values: with the m non-nan p-values sorted,
    p_(1) <= ... <= p_(m), the adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Rejecting where the adjusted p < alpha controls the family-wise error rate at alpha. Nan
    entries stay nan and do not count in m."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return [float(v) for v in out]


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini and Hochberg's (1995) adjusted p-values (scipy.stats.false_discovery_control,
    method 'bh'): rejecting where the adjusted p < alpha controls the false discovery rate at
    alpha for independent or positively dependent tests. Nan entries stay nan and do not count
    in m."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = _stats().false_discovery_control(p[tested], method="bh")
    return [float(v) for v in out]


def adjust(pvalues: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values by `method`: 'holm' (family-wise error) or 'bh' (false discovery)."""
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    raise errors.UserError(f"unknown correction {method!r}; choose one of {list(METHODS)}")


def minimum_detectable_effect(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest mean paired difference a two-sided paired t-test at level `alpha` on n
    pairs with difference sd `sd` detects with probability `power`:
    (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n), the one-sample sample-size formula
    (Chow, Shao and Wang 2008, Sample Size Calculations in Clinical Research, ch. 3) solved for
    the effect, with t quantiles in place of normal ones. It approximates the exact noncentral-t
    power, and at few pairs it is optimistic: at n = 5 and alpha 0.05 the exact power at this
    difference is 0.79, at n = 3 0.77. Nan for n < 2."""
    if n < 2 or math.isnan(sd):
        return math.nan
    t = _stats().t.ppf(1 - alpha / 2, n - 1) + _stats().t.ppf(power, n - 1)
    return float(t * sd / math.sqrt(n))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap samples (Efron and Tibshirani 1993, ch. 13),
    without interpolation (the samples at or outside each quantile), so that an infinite
    sample there makes that end infinite."""
    lo = np.quantile(samples, (1 - level) / 2, method="lower")
    hi = np.quantile(samples, (1 + level) / 2, method="higher")
    return float(lo), float(hi)


def headroom(arm: Mapping[int, float], mle: Mapping[int, float], clean: Mapping[int, float],
             *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The fraction of the clean-data gap an arm recovers, over the seeds all three have:
    mean(arm - mle) / mean(clean - mle), where `clean` is MLE on the same demonstrations
    without corruption and the same budget (1: as good as clean data; 0: no better than MLE).

    'ci95' is a paired percentile bootstrap (Efron and Tibshirani 1993, ch. 13): seeds are
    resampled with replacement, each keeping its three values, with numpy's default_rng(seed).
    A resample whose gap is not positive has no fraction; it counts against both ends (-inf
    below, +inf above), so when (1 - level) / 2 of the resamples or more do, it is unbounded.
    'fraction' and 'ci95' are nan when the gap is <= 0 or fewer than 2 seeds are common.
    Returns {'fraction', 'ci95': (lo, hi), 'gap': mean(clean - mle), 'n'}."""
    seeds = _common(arm, mle, clean)
    gain = np.asarray([arm[s] - mle[s] for s in seeds], np.float64)  # [n]
    gaps = np.asarray([clean[s] - mle[s] for s in seeds], np.float64)  # [n]
    gap = float(gaps.mean()) if seeds else math.nan
    out = {"fraction": math.nan, "ci95": (math.nan, math.nan), "gap": gap, "n": len(seeds)}
    if len(seeds) < 2 or not gap > 0:
        return out
    idx = np.random.default_rng(seed).integers(0, len(seeds), (resamples, len(seeds)))
    gain_b, gap_b = gain[idx].mean(1), gaps[idx].mean(1)  # [R]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = gain_b / gap_b
    undefined = gap_b <= 0
    lo, _ = _percentiles(np.where(undefined, -np.inf, ratio), level)
    _, hi = _percentiles(np.where(undefined, np.inf, ratio), level)
    out.update(fraction=float(gain.mean() / gap), ci95=(lo, hi))
    return out


def prompt_bootstrap(cells_a: Sequence[Mapping[str, Any]], cells_b: Sequence[Mapping[str, Any]],
                     resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean paired difference in exact match a - b over test prompts, with a percentile
    bootstrap over prompts (Efron and Tibshirani 1993, ch. 13).

    A cell holds 'seed' and 'per_prompt': {'input_id': [str], 'family': [str],
    'exact_match': [0/1]}. A pair is one input_id scored by both arms at one seed. Prompts are
    resampled with replacement (numpy default_rng(seed)), each keeping its pairs of every seed:
    the interval shows how much the finite test set moves the difference; it does not resample
    the seeds' training noise (paired() over seeds does). Returns {'mean', 'ci95': (lo, hi),
    'prompts', 'pairs'}; nan with no pair."""
    def scores(cells):
        return {(c["seed"], i): float(e) for c in cells
                for i, e in zip(c["per_prompt"]["input_id"], c["per_prompt"]["exact_match"])}

    a, b = scores(cells_a), scores(cells_b)
    keys = sorted(set(a) & set(b))
    ids = sorted({i for _, i in keys})
    column = {i: k for k, i in enumerate(ids)}
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids))  # [P]
    for key in keys:
        sums[column[key[1]]] += a[key] - b[key]
        counts[column[key[1]]] += 1
    out = {"mean": math.nan, "ci95": (math.nan, math.nan), "prompts": len(ids),
           "pairs": len(keys)}
    if not keys:
        return out
    idx = np.random.default_rng(seed).integers(0, len(ids), (resamples, len(ids)))  # [R, P]
    means = sums[idx].sum(1) / counts[idx].sum(1)  # [R]
    out.update(mean=float(sums.sum() / counts.sum()), ci95=_percentiles(means, level))
    return out


def format_p(p: float) -> str:
    """A p-value at two significant digits ('0.012', '0.62'), '< 0.001' below, 'n/a' for nan."""
    if math.isnan(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    text = f"{p:.2g}"
    return text if "." in text else text + ".0"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _sentence(t: Mapping[str, Any]) -> str:
    a, b, group, n = t["a"], t["b"], t["group"], t["n"]
    if math.isnan(t["p"]):
        if n < 2:
            return (f"{a} and {b} on {group} not tested: {_seeds(n)} in common "
                    f"(a paired test needs 2).")
        return (f"{a} and {b} on {group} not tested: the difference is {t['mean']:+.3f} at "
                f"every one of the {_seeds(n)}.")
    if t["significant"]:
        winner, loser = (a, b) if t["mean"] > 0 else (b, a)
        return (f"{winner} beats {loser} on {group} by {abs(t['mean']):+.3f} "
                f"(95% CI ±{t['ci95']:.3f}, adjusted p {format_p(t['p_adjusted'])}, "
                f"n {_seeds(n)}).")
    return (f"No detectable difference between {a} and {b} on {group} at {_seeds(n)} "
            f"({t['mean']:+.3f} ± {t['ci95']:.3f}, adjusted p {format_p(t['p_adjusted'])}); "
            f"the smallest difference {_seeds(n)} could detect is {t['mde']:.3f}.")


def findings(tests: Sequence[Mapping[str, Any]], method: str = "holm",
             alpha: float = ALPHA) -> list[dict]:
    """Every test corrected together, each stated as one generated sentence.

    tests: dicts {'a', 'b', 'group', 'mean', 'ci95', 'p', 'n', 'sd'} (paired(a, b) plus the two
    arms' names and the group, e.g. the noise kind). Returns the same dicts, in order, with
    'p_adjusted' (`adjust` over the whole list), 'significant' (p_adjusted < alpha), 'mde' and
    'text'. A significant test reads "A beats B on GROUP by ..." (B first when a - b < 0).
    Otherwise the sentence states the smallest difference the test could detect:
    minimum_detectable_effect at power 0.8 and the Bonferroni level alpha / m, m the number of
    tests with a p-value. That is the strictest level Holm holds any test to (the smallest
    p-value's), so a difference that large is detected whatever the other tests show; for BH it
    is conservative too. A test with no p-value (fewer than 2 pairs, or no spread) is stated as
    not tested.
    """
    adjusted = adjust([t["p"] for t in tests], method)
    m = sum(not math.isnan(t["p"]) for t in tests)
    out = []
    for t, p_adj in zip(tests, adjusted):
        row = dict(t, p_adjusted=p_adj, significant=bool(p_adj < alpha),
                   mde=minimum_detectable_effect(t["sd"], t["n"], alpha / max(m, 1)))
        row["text"] = _sentence(row)
        out.append(row)
    return out


def findings_record(found: Sequence[Mapping[str, Any]], method: str, alpha: float = ALPHA
                    ) -> dict:
    """findings.json's content: the correction, alpha, the number of tests with a p-value and
    every finding with its raw and adjusted p; nan is written as null (strict JSON)."""
    def plain(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return {"correction": method, "alpha": alpha,
            "tests": sum(not math.isnan(f["p"]) for f in found),
            "findings": [{k: plain(v) for k, v in f.items()} for f in found]}
