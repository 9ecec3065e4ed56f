"""Emergence as a choice of metric: exact match against per-token accuracy to the power L.

Wei et al. 2022, "Emergent abilities of large language models", call an ability emergent when a
metric such as exact match stays near zero and then jumps as models grow. Schaeffer, Miranda and
Koyejo 2023, "Are emergent abilities of large language models a mirage?", sec. 2, point out that
if each of the L answer tokens is right independently with probability p, then

    exact match = p^L

so a per-token accuracy p that rises smoothly with model size N gives an exact match that sits
near 0 and then rises steeply, later the longer the answer. This module measures that on saved
evaluations; nothing here calls a model.

* `exact_match_from_per_token`: p^L.
* `compare_exact_match`: observed exact match against p^L (residuals, max abs error).
* `jump_point`, `max_relative_step`, `emergence_curves`: where exact match crosses a threshold
  (interpolated in log N) for several L, and how smooth each curve is.
* `bucket_by_length`: per-example records -> per-length-bucket exact match and token accuracy.

Shapes: S model sizes (or checkpoints), K answer lengths, M examples, B length buckets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional

import numpy as np


def _probabilities(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    outside = ~((array >= 0) & (array <= 1))  # NaN is outside too.
    if np.any(outside):
        raise ValueError(f"{name} must lie in [0, 1], got {array[outside][:3]}")
    return array


def _lengths(values) -> np.ndarray:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"answer lengths must be integers, got {array}")
        array = array.astype(np.int64)
    if np.any(array < 1):
        raise ValueError(f"answer lengths must be at least 1, got {array[array < 1][:3]}")
    return array


def exact_match_from_per_token(per_token_accuracy, length) -> np.ndarray:
    """p^L (Schaeffer et al. 2023, sec. 2): exact match if the L tokens are right independently.

    per_token_accuracy and length broadcast against each other.
    """
    p = _probabilities("per_token_accuracy", per_token_accuracy)
    return p ** _lengths(length)


# ---------------------------------------------------------------------------
# Observed exact match against p^L.


class Comparison(NamedTuple):
    predicted: np.ndarray    # [S] p^L
    residual: np.ndarray     # [S] observed - predicted
    max_abs_error: float
    mean_abs_error: float


def compare_exact_match(per_token_accuracy, exact_match, length) -> Comparison:
    """Observed exact match against p^L, per model size or checkpoint.

    per_token_accuracy, exact_match: [S]; length: scalar or [S]. A positive residual means
    errors cluster in the same answers (more answers fully right than independence predicts).
    """
    p = _probabilities("per_token_accuracy", per_token_accuracy)
    observed = _probabilities("exact_match", exact_match)
    if p.shape != observed.shape:
        raise ValueError(f"mismatched shapes: per_token_accuracy {p.shape}, "
                         f"exact_match {observed.shape}")
    predicted = exact_match_from_per_token(p, length)
    if predicted.shape != observed.shape:
        raise ValueError(f"length of shape {np.shape(length)} does not match {observed.shape}")
    residual = observed - predicted
    return Comparison(predicted=predicted, residual=residual,
                      max_abs_error=float(np.max(np.abs(residual))),
                      mean_abs_error=float(np.mean(np.abs(residual))))


# ---------------------------------------------------------------------------
# Jump points and smoothness.


def _sizes(sizes) -> np.ndarray:
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or n.size < 2:
        raise ValueError(f"sizes must be one-dimensional with at least 2 entries, got {n.shape}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(f"sizes must be positive, got {n[~(n > 0)][:3]}")
    if np.any(np.diff(n) <= 0):
        raise ValueError("sizes must be strictly increasing")
    return n


def jump_point(sizes, metric, threshold: float = 0.5) -> float:
    """The size at which `metric` first reaches `threshold`, interpolated linearly in log N.

    sizes: [S] increasing; metric: [S]. Returns sizes[0] if the first point already reaches the
    threshold (the crossing lies at or below it) and NaN if no point reaches it.
    """
    n = _sizes(sizes)
    y = np.asarray(metric, dtype=np.float64)
    if y.shape != n.shape:
        raise ValueError(f"mismatched shapes: sizes {n.shape}, metric {y.shape}")
    above = np.flatnonzero(y >= threshold)
    if above.size == 0:
        return float("nan")
    i = above[0]
    if i == 0:
        return float(n[0])
    x0, x1 = np.log(n[i - 1]), np.log(n[i])
    fraction = (threshold - y[i - 1]) / (y[i] - y[i - 1])  # y[i - 1] < threshold <= y[i].
    return float(np.exp(x0 + fraction * (x1 - x0)))


def max_relative_step(metric) -> float:
    """max_s |y[s+1] - y[s]| / (max y - min y): the largest share of the whole rise in one step.

    For sizes evenly spaced in log N a smooth (near-linear) curve of S points scores about
    1 / (S - 1); a curve that jumps in one step scores 1. A flat curve scores 0.
    """
    y = np.asarray(metric, dtype=np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError(f"metric must be one-dimensional with at least 2 entries, got {y.shape}")
    spread = y.max() - y.min()
    return float(np.max(np.abs(np.diff(y))) / spread) if spread > 0 else 0.0


class EmergenceCurves(NamedTuple):
    lengths: np.ndarray           # [K]
    exact_match: np.ndarray       # [K, S] p^L
    jump_points: np.ndarray       # [K] size where exact match first reaches the threshold.
    exact_match_step: np.ndarray  # [K] max_relative_step of each exact-match curve.
    per_token_step: float         # max_relative_step of the per-token accuracy.


def emergence_curves(sizes, per_token_accuracy, lengths: Sequence[int],
                     threshold: float = 0.5) -> EmergenceCurves:
    """Exact match p^L over model sizes for several answer lengths L, with jump points.

    sizes, per_token_accuracy: [S] (sizes increasing, ideally evenly spaced in log N);
    lengths: [K]. With p rising smoothly, p^L crosses `threshold` where p = threshold^(1/L), so
    the jump point moves to larger N as L grows while p itself has no jump (Schaeffer et al.
    2023, sec. 2).
    """
    n = _sizes(sizes)
    p = _probabilities("per_token_accuracy", per_token_accuracy)
    if p.shape != n.shape:
        raise ValueError(f"mismatched shapes: sizes {n.shape}, per_token_accuracy {p.shape}")
    ks = _lengths(lengths)
    if ks.ndim != 1 or ks.size == 0:
        raise ValueError(f"lengths must be a non-empty sequence, got {lengths!r}")
    em = p[None, :] ** ks[:, None]                                    # [K, S]
    return EmergenceCurves(
        lengths=ks, exact_match=em,
        jump_points=np.array([jump_point(n, row, threshold) for row in em]),
        exact_match_step=np.array([max_relative_step(row) for row in em]),
        per_token_step=max_relative_step(p))


# ---------------------------------------------------------------------------
# Per-example records -> per-length buckets.


class LengthBuckets(NamedTuple):
    low: np.ndarray                  # [B] smallest answer length in the bucket (inclusive).
    high: np.ndarray                 # [B] largest answer length in the bucket (inclusive).
    count: np.ndarray                # [B] examples.
    exact_match: np.ndarray          # [B] share of examples fully right.
    per_token_accuracy: np.ndarray   # [B] share of answer tokens right (pooled over tokens).
    predicted_exact_match: np.ndarray  # [B] mean over the bucket's examples of p^L_i.


def _record(record, index: int):
    if not isinstance(record, Mapping):
        raise ValueError(f"record {index} must be a mapping with 'length' and 'token_correct'")
    for key in ("length", "token_correct"):
        if key not in record:
            raise ValueError(f"record {index} has no {key!r}")
    flags = np.asarray(record["token_correct"], dtype=bool).reshape(-1)
    length = int(_lengths(record["length"]))
    if flags.size != length:
        raise ValueError(f"record {index}: token_correct has {flags.size} flags but length is "
                         f"{length}")
    exact = bool(record["exact"]) if record.get("exact") is not None else bool(flags.all())
    return length, flags, exact


def bucket_by_length(records: Sequence[Mapping], edges: Optional[Sequence[int]] = None,
                     ) -> LengthBuckets:
    """Per-length-bucket exact match, per-token accuracy and p^L from per-example records.

    Each record is a mapping with 'length' (answer length in tokens, L_i), 'token_correct' (L_i
    flags: is answer token j right under teacher forcing or greedy decoding) and optionally
    'exact' (the gold scorer's exact match; all(token_correct) when absent or None). `edges`,
    increasing, makes buckets [edges[j], edges[j+1]); without it every distinct length is its own
    bucket. Empty buckets are dropped. The prediction uses the bucket's pooled per-token
    accuracy p: mean_i p^L_i.
    """
    if len(records) == 0:
        raise ValueError("no records")
    parsed = [_record(r, i) for i, r in enumerate(records)]
    lengths = np.array([length for length, _, _ in parsed])           # [M]
    correct = np.array([flags.sum() for _, flags, _ in parsed])       # [M]
    exact = np.array([e for _, _, e in parsed], dtype=np.float64)     # [M]
    if edges is None:
        bounds = [(k, k) for k in np.unique(lengths)]
    else:
        e = np.asarray(edges)
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ValueError(f"edges must be increasing with at least 2 entries, got {edges!r}")
        bounds = [(lo, hi - 1) for lo, hi in zip(e[:-1], e[1:])]
    rows = []
    for lo, hi in bounds:
        inside = (lengths >= lo) & (lengths <= hi)                    # [M]
        if not inside.any():
            continue
        p = correct[inside].sum() / lengths[inside].sum()
        rows.append((lo, hi, inside.sum(), exact[inside].mean(), p,
                     np.mean(p ** lengths[inside])))
    if not rows:
        raise ValueError(f"no record has a length inside edges {list(edges)}")
    low, high, count, em, acc, predicted = (np.array(c) for c in zip(*rows))
    return LengthBuckets(low=low.astype(np.int64), high=high.astype(np.int64),
                         count=count.astype(np.int64), exact_match=em.astype(np.float64),
                         per_token_accuracy=acc.astype(np.float64),
                         predicted_exact_match=predicted.astype(np.float64))
