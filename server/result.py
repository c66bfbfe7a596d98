"""The search's answer, typed; `body()` is the one place it becomes the JSON object on the wire.

    {"results": [{"id", "score", ...metadata}], "count", "k", "model", "family",
     "took_ms": {"encode", "search", "total"}, "cached", "warning"?}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clipsearch.index import Hit


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    k: int
    model: str
    # Scores are cosines for every family, but their scale is the family's (SigLIP's sit lower).
    family: str
    encode_ms: float  # 0 when the text vector came from the cache: "cached" says why
    search_ms: float
    cached: bool
    warning: str | None = None  # e.g. a random-weight stand-in model: the rankings mean nothing

    @property
    def count(self) -> int:
        return len(self.hits)

    def took_ms(self, total_ms: float) -> dict[str, float]:
        """Timings as the answer reports them; `total_ms` is the whole request's (parsing and
        validation included, and the cache lookup's microseconds when nothing was encoded)."""
        return {"encode": round(self.encode_ms, 3), "search": round(self.search_ms, 3), "total": round(total_ms, 3)}

    def body(self, total_ms: float) -> dict[str, Any]:
        """The JSON object answered for this search."""
        results = [{"id": h.id, "score": round(h.score, 6),
                    **{k: _json_safe(v) for k, v in h.metadata.items() if k not in ("id", "score")}} for h in self.hits]
        body: dict[str, Any] = {"results": results, "count": len(results), "k": self.k, "model": self.model,
                                "family": self.family, "took_ms": self.took_ms(total_ms), "cached": self.cached}
        if self.warning is not None:
            body["warning"] = self.warning
        return body


def _json_safe(value: Any) -> Any:
    """A float JSON cannot carry (NaN, infinity) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
