"""Retrieval metrics as pure functions over ranked lists. No I/O, no model, no index.

A *ranking* is what a backend returned for one query: `(key, score)` pairs, best first (every
VectorIndex guarantees that order; the embedded exact index breaks score ties by insertion row).
A query's *relevant* set says which keys are right answers: for text->image the document of
the caption's image, for image->text all captions of that image, for zero-shot the true class.

Definitions (the ones open_clip's retrieval table and rclip's CIFAR benchmark use):

- Recall@K of one query is 1 when at least one relevant key is among its first K results,
  else 0; Recall@K of a run is the mean over its queries. Zero-shot top-1/top-5 accuracy is the
  same number with classes as the ranked keys.
- Fewer than K results (a small collection, a `min_score` cut-off) are not padded: a relevant
  key that was not returned is a miss.
- Ties, ``ties="pessimistic"`` (the default): a relevant key that scores exactly the same as
  non-relevant ones counts as ranked after all of them, whatever order the backend printed
  them in, so a metric never profits from an arbitrary tie-break. Its rank is 1 + the number of
  non-relevant keys scoring at least as high. When the list was cut at the requested k
  (``truncated=True``) and its last score still ties the best relevant score, non-relevant keys
  beyond the cut may tie too: the query counts as a miss at every K (ask for one more result
  than the largest K you report and this only happens when the tie really reaches that far).
- ``ties="order"``: trust the backend's order (its deterministic tie-break) and use positions.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

Ranking = Sequence[tuple[Hashable, float]]
TIES = ("pessimistic", "order")


def relevant_rank(
    ranking: Ranking,
    relevant: Iterable[Hashable],
    *,
    ties: str = "pessimistic",
    truncated: bool = False,
) -> int | None:
    """1-based rank of the best relevant key in `ranking`, or None when it counts as not found."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    relevant = set(relevant)
    if ties == "order":
        for position, (key, _score) in enumerate(ranking, start=1):
            if key in relevant:
                return position
        return None
    best = max((score for key, score in ranking if key in relevant), default=None)
    if best is None:
        return None
    if truncated and ranking and ranking[-1][1] >= best:
        return None  # the tie may run past the cut: unknown how many non-relevant keys share it
    ahead = sum(1 for key, score in ranking if key not in relevant and score >= best)
    return ahead + 1


def recall_at_k(ranks: Sequence[int | None], ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose relevant rank is at most K, for each K. NaN for no queries."""
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be at least 1, got {k}")
    if not ranks:
        return {k: math.nan for k in ks}
    return {k: sum(1 for r in ranks if r is not None and r <= k) / len(ranks) for k in ks}


def precision_at_k(ranking: Ranking, relevant: Iterable[Hashable], k: int) -> float:
    """Share of the first K slots that hold a relevant key, in the backend's order; missing
    slots (fewer than K results) count as wrong."""
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    relevant = set(relevant)
    return sum(1 for key, _ in ranking[:k] if key in relevant) / k


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan

