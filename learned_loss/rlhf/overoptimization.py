"""Reward-model over-optimization: best-of-n curves, Gao et al. fits, length buckets.

Gao, Schulman and Hilton 2022, "Scaling laws for reward model overoptimization", optimise a
policy against a proxy reward model and score it with a gold one. Plotted against

    d = sqrt(KL(pi || pi_init))

the proxy score keeps rising while the gold score rises, peaks and falls. This module holds the
numpy/scipy pieces needed to measure that on saved samples; nothing here calls a model.

* Best-of-n (BoN) as a policy: its KL (`best_of_n_kl`), the unbiased estimate of its expected
  proxy and gold scores from N >= n samples per prompt (`best_of_n_weights`,
  `expected_best_of_n`), and the whole curve over n (`best_of_n_curve`).
* The paper's functional forms for the gold gain R(d) over the initial policy (R(0) = 0):
  `r_bon`, `r_rl`, and least-squares fits `fit_bon`, `fit_rl` returning a `Fit`.
* Length hacking: does the proxy gain survive when comparing samples of equal length?
  (`length_bucket_edges`, `length_bucket_gain`).
* The peak of a gold curve and an inverted-U check (`peak`, `is_inverted_u`).

Shapes: P prompts, N samples per prompt, M samples before and K samples after optimisation,
B length buckets, S points on a curve.

All functions are pure and take array-likes; they return Python floats or numpy arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import special

# ---------------------------------------------------------------------------
# Best-of-n.


def _check_n(n) -> np.ndarray:
    n = np.asarray(n)
    if not np.issubdtype(n.dtype, np.integer):
        raise ValueError(f"n must be an integer (or integer array), got dtype {n.dtype}")
    if np.any(n < 1):
        raise ValueError(f"n must be >= 1, got {n}")
    return n


def best_of_n_kl(n):
    """KL(best-of-n || base) = log n - (n - 1) / n, in nats.

    Stiennon et al. 2020 (appendix) and Gao et al. 2022 (sec. 2). The formula is exact when the n
    samples are almost surely distinct; in general it is an upper bound (Beirami et al. 2024).

    Args:
      n: an int >= 1, or an integer array of them.

    Returns:
      A float for a scalar `n`, else a float array shaped like `n`. ``best_of_n_kl(1) == 0``.
    """
    n = _check_n(n).astype(np.float64)
    kl = np.log(n) - (n - 1.0) / n
    return float(kl) if kl.ndim == 0 else kl


def best_of_n_weights(num_samples: int, n: int) -> np.ndarray:
    """Weights w [N] with E[score of the best of n] = sum_i w_i * score_(i).

    score_(i) is the score of the i-th smallest sample by proxy (1-indexed). Among N samples, the
    i-th smallest is the maximum of a uniformly random n-subset with probability

        w_i = C(i - 1, n - 1) / C(N, n)    (zero for i < n),

    since the subset must hold sample i and n - 1 of the i - 1 samples below it (Nakano et al.
    2021, WebGPT appendix; Gao et al. 2022 sec. 2). Averaging over all C(N, n) subsets makes the
    estimate unbiased and lower-variance than drawing disjoint groups of n.

    The binomials overflow float64 near N = 1030, so they are formed in log space with
    `scipy.special.gammaln` and normalised with a log-sum-exp; by the hockey-stick identity
    sum_i C(i - 1, n - 1) = C(N, n), so that normaliser is log C(N, n) up to rounding, and the
    weights sum to 1 to float precision.
    """
    num_samples = int(_check_n(num_samples))
    n = int(_check_n(n))
    if n > num_samples:
        raise ValueError(f"n={n} is larger than the number of samples N={num_samples}")
    i = np.arange(n, num_samples + 1, dtype=np.float64)  # ranks that can be the maximum
    # log C(i - 1, n - 1) = gammaln(i) - gammaln(n) - gammaln(i - n + 1)
    log_c = special.gammaln(i) - special.gammaln(n) - special.gammaln(i - n + 1.0)
    weights = np.zeros(num_samples)
    weights[n - 1:] = np.exp(log_c - special.logsumexp(log_c))
    return weights


def _sort_by_proxy(proxy: np.ndarray, gold: np.ndarray):
    """Sorts [..., N] by proxy ascending; among equal proxies the lowest index sorts last."""
    # np.lexsort is stable and sorts by its last key first. The secondary key, -index, puts the
    # lowest index of a tie at the highest rank, so it counts as the best of any subset holding
    # it -- the sample `np.argmax` would pick.
    neg_index = np.broadcast_to(-np.arange(proxy.shape[-1]), proxy.shape)
    order = np.lexsort((neg_index, proxy), axis=-1)
    return (np.take_along_axis(proxy, order, axis=-1),
            np.take_along_axis(gold, order, axis=-1))


def _check_scores(proxy, gold, ndim: int):
    proxy = np.asarray(proxy, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold shapes differ: {proxy.shape} vs {gold.shape}")
    if proxy.ndim != ndim or proxy.shape[-1] == 0:
        raise ValueError(f"expected a non-empty rank-{ndim} array, got shape {proxy.shape}")
    if np.isnan(proxy).any():
        raise ValueError("proxy scores contain NaN, which cannot be ranked")
    return proxy, gold


def expected_best_of_n(proxy, gold, n: int) -> tuple[float, float]:
    """Unbiased estimates of the proxy and gold scores of best-of-n, chosen by proxy.

    From N >= n i.i.d. samples of one prompt, returns sum_i w_i * proxy_(i) and
    sum_i w_i * gold_(i), with the weights of `best_of_n_weights` (Nakano et al. 2021; Gao et al.
    2022 sec. 2). Samples are ranked by proxy ascending; among samples with equal proxy the one
    with the lowest index ranks highest, i.e. the best of a subset is the one `np.argmax` over that
    subset picks. Ties only matter for the gold estimate.

    Args:
      proxy: [N] proxy reward-model scores.
      gold: [N] gold scores of the same samples.
      n: 1 <= n <= N.

    Returns:
      (expected_proxy, expected_gold) as floats. n = 1 gives the plain means; n = N gives the
      proxy maximum and the gold score of the proxy's argmax.
    """
    proxy, gold = _check_scores(proxy, gold, ndim=1)
    weights = best_of_n_weights(proxy.shape[0], n)  # [N]
    proxy_sorted, gold_sorted = _sort_by_proxy(proxy, gold)  # [N], [N]
    return float(weights @ proxy_sorted), float(weights @ gold_sorted)


def best_of_n_curve(proxy, gold, ns) -> dict[str, np.ndarray]:
    """Best-of-n proxy and gold scores over n, averaged over prompts.

    Args:
      proxy: [P, N] proxy scores, N samples for each of P prompts.
      gold: [P, N] gold scores of the same samples.
      ns: [S] values of n, each an int in [1, N].

    Returns:
      A dict of [S] arrays: ``n``; ``kl`` = `best_of_n_kl` (n); ``d`` = sqrt(kl); ``proxy`` and
      ``gold``, the mean over prompts of `expected_best_of_n`. Subtract the n = 1 value (`gains`)
      to get the R(d) that `fit_bon` expects.
    """
    proxy, gold = _check_scores(proxy, gold, ndim=2)
    ns = _check_n(ns).reshape(-1)
    proxy_sorted, gold_sorted = _sort_by_proxy(proxy, gold)  # [P, N], [P, N]
    weights = np.stack([best_of_n_weights(proxy.shape[1], int(n)) for n in ns])  # [S, N]
    kl = best_of_n_kl(ns)
    return {
        "n": ns,
        "kl": kl,
        "d": np.sqrt(kl),
        "proxy": (proxy_sorted @ weights.T).mean(axis=0),  # [S]
        "gold": (gold_sorted @ weights.T).mean(axis=0),  # [S]
    }


# ---------------------------------------------------------------------------
# Gao et al. 2022 functional forms and fits.


class Fit(NamedTuple):
    """A least-squares fit of R(d) = alpha * f(d) - beta * g(d); r2 is on the gains r."""
    alpha: float
    beta: float
    r2: float
    n_points: int


def r_bon(d, alpha, beta):
    """Best-of-n gold gain, Gao et al. 2022: R_bon(d) = d * (alpha - beta * d)."""
    d = np.asarray(d, dtype=np.float64)
    return d * (alpha - beta * d)


def r_rl(d, alpha, beta):
    """RL gold gain, Gao et al. 2022: R_RL(d) = d * (alpha - beta * log d).

    d * log d is taken as 0 at d = 0 (its limit), so R_RL(0) = 0.
    """
    d = np.asarray(d, dtype=np.float64)
    return alpha * d - beta * special.xlogy(d, d)


def gains(scores, baseline):
    """R = scores - baseline: the gain over the initial policy (the d = 0 score) the fits take."""
    return np.asarray(scores, dtype=np.float64) - baseline


def _fit_linear(d, r, basis) -> Fit:
    """Least squares of r ~ alpha * basis[0] - beta * basis[1], with no intercept."""
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    if d.shape != r.shape:
        raise ValueError(f"d and r shapes differ: {d.shape} vs {r.shape}")
    if d.size < 3:
        raise ValueError(f"need at least 3 points to fit 2 parameters, got {d.size}")
    if not (np.isfinite(d).all() and np.isfinite(r).all()):
        raise ValueError("d and r must be finite")
    if (d < 0).any():
        raise ValueError("d = sqrt(KL) must be >= 0")
    design = np.stack(basis(d), axis=1)  # [S, 2]
    coef, _, rank, _ = np.linalg.lstsq(design, r, rcond=None)
    if rank < 2:
        raise ValueError("d needs at least two distinct nonzero values (and, for R_RL, not "
                         "only d = 1) to identify alpha and beta")
    residual = r - design @ coef
    ss_res = float(residual @ residual)
    ss_tot = float(((r - r.mean()) ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:  # constant r: 1 if it is fitted exactly (only possible for r == 0), else 0
        r2 = 1.0 if ss_res == 0 else 0.0
    return Fit(alpha=float(coef[0]), beta=float(-coef[1]), r2=r2, n_points=int(d.size))


def fit_bon(d, r) -> Fit:
    """Fits R_bon(d) = d * (alpha - beta * d) (Gao et al. 2022) by least squares.

    The form is linear in (alpha, beta) -- r = alpha * d - beta * d^2 -- so the least-squares
    problem that `scipy.optimize.curve_fit` would iterate on is solved exactly in one
    `np.linalg.lstsq` call (the tests check the two agree). There is no intercept: R(0) = 0.

    Args:
      d: [S] sqrt(KL) values, >= 0.
      r: [S] gold gains over the initial policy (see `gains`).

    Returns:
      `Fit(alpha, beta, r2, n_points)`, with r2 = 1 - SS_res / SS_tot and
      SS_tot = sum (r - mean r)^2 (so r2 may be negative for a fit through the origin). When
      SS_tot = 0, r2 is 1 if SS_res = 0 and 0 otherwise.

    Raises:
      ValueError: fewer than 3 points, non-finite or negative values, mismatched shapes, or d
      that cannot identify both parameters.
    """
    return _fit_linear(d, r, lambda x: (x, x * x))


def fit_rl(d, r) -> Fit:
    """Fits R_RL(d) = d * (alpha - beta * log d) (Gao et al. 2022) by least squares.

    Linear in (alpha, beta) -- r = alpha * d - beta * d log d, with 0 log 0 = 0 -- and solved
    exactly as in `fit_bon`, whose docstring gives the r2 convention and the errors.
    """
    return _fit_linear(d, r, lambda x: (x, special.xlogy(x, x)))


# ---------------------------------------------------------------------------
# Length hacking.


def length_bucket_edges(lengths, num_buckets: int) -> np.ndarray:
    """Interior quantile edges splitting `lengths` into about `num_buckets` equal-count buckets.

    Returns the sorted unique quantiles at 1/B, ..., (B-1)/B (so B - 1 edges, fewer when
    lengths repeat). With `np.digitize`, bucket b holds edges[b-1] <= length < edges[b]; the
    first and last buckets are open-ended.
    """
    num_buckets = int(_check_n(num_buckets))
    lengths = np.asarray(lengths, dtype=np.float64).reshape(-1)
    if lengths.size == 0 or not np.isfinite(lengths).all():
        raise ValueError("lengths must be non-empty and finite")
    levels = np.linspace(0.0, 1.0, num_buckets + 1)[1:-1]
    return np.unique(np.quantile(lengths, levels))


def length_bucket_gain(lengths_before, proxy_before, lengths_after, proxy_after,
                       edges) -> dict:
    """Splits a proxy-reward gain into the part seen at fixed length and the rest.

    Proxy reward models often prefer longer answers, so optimising against one can raise the
    proxy mostly by lengthening samples (Singhal et al. 2023, "A long way to go"). Bucketing
    samples by length (bucket = `np.digitize(length, edges)`) and comparing mean proxy within each
    bucket separates the two:

        total  = mean(proxy_after) - mean(proxy_before)
        within = sum_b w_b * (mean_after_b - mean_before_b),   w_b = K_b / sum_b' K_b',

    over the buckets b that hold samples both before and after, with K_b the number of `after`
    samples in bucket b. fraction_within = within / total. Near 0: the gain is mostly a shift to
    longer (higher-proxy) lengths, i.e. length hacking. Near 1: the policy improved at fixed
    length. It can leave [0, 1] when the parts have opposite signs.

    Args:
      lengths_before: [M] sample lengths of the initial policy.
      proxy_before: [M] their proxy scores.
      lengths_after: [K] sample lengths of the optimised policy.
      proxy_after: [K] their proxy scores.
      edges: [B - 1] sorted bucket edges (`length_bucket_edges`).

    Returns:
      A dict with floats ``total_gain``, ``within_gain``, ``fraction_within`` (nan when the total
      is 0), ``mean_length_before``, ``mean_length_after``; and [B] arrays ``count_before``,
      ``count_after``, ``mean_before``, ``mean_after`` (nan for empty buckets). ``within_gain`` is
      nan when no bucket holds samples from both.
    """
    lb, pb, la, pa = (np.asarray(x, dtype=np.float64).reshape(-1)
                      for x in (lengths_before, proxy_before, lengths_after, proxy_after))
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    if lb.shape != pb.shape or la.shape != pa.shape:
        raise ValueError("each lengths array must match its proxy array")
    if lb.size == 0 or la.size == 0:
        raise ValueError("need samples both before and after")
    if np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be strictly increasing")
    num_buckets = edges.size + 1

    def per_bucket(lengths, proxy):
        bucket = np.digitize(lengths, edges)  # [M] in [0, B)
        count = np.bincount(bucket, minlength=num_buckets)
        total = np.bincount(bucket, weights=proxy, minlength=num_buckets)
        with np.errstate(invalid="ignore", divide="ignore"):
            return count, np.where(count > 0, total / count, np.nan)

    count_before, mean_before = per_bucket(lb, pb)  # [B], [B]
    count_after, mean_after = per_bucket(la, pa)  # [B], [B]
    shared = (count_before > 0) & (count_after > 0)
    if shared.any():
        weights = count_after[shared] / count_after[shared].sum()
        within = float(weights @ (mean_after[shared] - mean_before[shared]))
    else:
        within = float("nan")
    total = float(pa.mean() - pb.mean())
    return {
        "total_gain": total,
        "within_gain": within,
        "fraction_within": within / total if total != 0 else float("nan"),
        "mean_length_before": float(lb.mean()),
        "mean_length_after": float(la.mean()),
        "count_before": count_before,
        "count_after": count_after,
        "mean_before": mean_before,
        "mean_after": mean_after,
    }


# ---------------------------------------------------------------------------
# Curve shape.


def peak(d, gold) -> dict:
    """The highest gold score along d (sorted ascending): {d_peak, gold_peak, index}.

    `index` is the first argmax.
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    gold = np.asarray(gold, dtype=np.float64).reshape(-1)
    if d.shape != gold.shape or d.size == 0 or not np.isfinite(gold).all():
        raise ValueError("d and gold must be non-empty, finite and of equal shape")
    if np.any(np.diff(d) < 0):
        raise ValueError("d must be sorted ascending")
    index = int(np.argmax(gold))
    return {"d_peak": float(d[index]), "gold_peak": float(gold[index]), "index": index}


def is_inverted_u(d, gold, min_drop: float = 0.0) -> bool:
    """True if gold rises to a peak after the first point and ends strictly below it.

    Over-optimization shows as gold rising then falling in d (Gao et al. 2022): the peak is not at
    the first point and gold[-1] <= gold_peak - min_drop, with gold[-1] < gold_peak.
    """
    top = peak(d, gold)
    drop = top["gold_peak"] - float(np.asarray(gold, dtype=np.float64).reshape(-1)[-1])
    return top["index"] > 0 and drop > 0 and drop >= min_drop
