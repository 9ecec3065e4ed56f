"""Gold scorers of the task suite: exact match and normalised edit similarity.

Both compare the prediction with the gold answer after stripping surrounding
whitespace (`str.strip()`) from each; nothing else is normalised (case, inner
spacing and punctuation all count).

  graded_score(p, a) = 1 - levenshtein(p, a) / max(len(p), len(a), 1)

with the edit distance (insert, delete, substitute; unit costs) from rapidfuzz, e.g. 'kitten'
vs 'sitting': distance 3, graded = 1 - 3/7.
"""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein


def exact_match(prediction: str, answer: str) -> float:
    """1.0 if the two agree after stripping surrounding whitespace, else 0.0."""
    return float(prediction.strip() == answer.strip())


def graded_score(prediction: str, answer: str) -> float:
    """Normalised edit similarity in [0, 1] (1 iff exact match), on stripped strings."""
    p, a = prediction.strip(), answer.strip()
    return 1.0 - Levenshtein.distance(p, a) / max(len(p), len(a), 1)


def score(prediction: str, answer: str) -> dict[str, float]:
    """{'exact_match': ..., 'graded': ...} for one prediction."""
    return {
        "exact_match": exact_match(prediction, answer),
        "graded": graded_score(prediction, answer),
    }
