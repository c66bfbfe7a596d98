"""The fake OpenSearch's reads: `_count` and `_search` (query, knn, min_score, sort, search_after,
from/size, `_source`) over the refreshed documents. Mixed into FakeOpenSearch (fake_opensearch.py)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from fake_opensearch_query import Searcher, field_value, filter_source, typed
from fake_opensearch_rules import bad

if TYPE_CHECKING:
    from fake_opensearch import FakeIndex


class SearchApi:
    """Needs FakeOpenSearch's `indices`, `resolve` and `_interval`."""

    indices: dict

    def _visible(self, target: str) -> list[FakeIndex]:
        out = [self.indices[n] for n in self.resolve(target)]
        for idx in out:
            idx.maybe_auto_refresh(self._interval(idx))
        return out

    def count(self, target: str, body: dict) -> tuple[int, Any]:
        if set(body) - {"query"}:
            raise bad(f"request does not support [{sorted(set(body) - {'query'})[0]}]", "parsing_exception")
        q = body.get("query", {"match_all": {}})
        indices = self._visible(target)
        for idx in indices:
            Searcher(idx).validate(q)
        n = sum(1 for idx in indices for i, s in idx.visible.items() if Searcher(idx).matches(q, s, i))
        return 200, {"count": n, "_shards": {"total": len(indices), "successful": len(indices), "skipped": 0,
                                            "failed": 0}}

    def search(self, target: str, body: dict, query: dict) -> tuple[int, Any]:
        extra = set(body) - {"query", "size", "from", "_source", "min_score", "sort", "search_after", "track_total_hits"}
        if extra:
            raise bad(f"Unknown key for a START_OBJECT in [{sorted(extra)[0]}].", "parsing_exception")
        size, frm = body.get("size", 10), body.get("from", 0)
        # index.max_result_window defaults to 10000 (OpenSearch: index/IndexSettings.MAX_RESULT_WINDOW_SETTING)
        if not isinstance(size, int) or size < 0 or frm + size > 10000:
            raise bad("Result window is too large, from + size must be less than or equal to: [10000]")
        q = body.get("query", {"match_all": {}})
        hits: list[tuple[float, str, FakeIndex]] = []
        for idx in self._visible(target):
            s = Searcher(idx)
            if isinstance(q, dict) and list(q) == ["knn"]:
                hits += [(score, i, idx) for score, i in s.knn(q["knn"])]
            else:
                s.validate(q)
                hits += [(1.0, i, idx) for i, src in idx.visible.items() if s.matches(q, src, i)]
        if "min_score" in body:
            hits = [h for h in hits if h[0] >= body["min_score"]]
        sort = _sort_spec(body.get("sort"), query.get("sort"))
        if sort:
            ranked = self._sorted(hits, sort, body.get("search_after"))
        elif "search_after" in body:
            raise bad("Sort must contain at least one field.", "search_phase_execution_exception")
        else:
            ranked = [(h, None) for h in sorted(hits, key=lambda h: -h[0])]
        page = ranked[frm:frm + size]
        out = []
        for (score, doc_id, idx), values in page:
            hit: dict[str, Any] = {"_index": idx.name, "_id": doc_id, "_score": None if sort else score}
            src = filter_source(idx.visible[doc_id], body.get("_source", True))
            if src is not None:
                hit["_source"] = src
            if sort:
                hit["sort"] = values
            out.append(hit)
        return 200, {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                     "hits": {"total": {"value": len(ranked), "relation": "eq"},
                              "max_score": None if sort else max((h[0][0] for h in page), default=None),
                              "hits": out}}

    @staticmethod
    def _sorted(hits: list, sort: list[tuple[str, str]], after: Any) -> list[tuple[tuple, list]]:
        """(hit, sort values) in sort order, those after `search_after` only. Missing values sort
        last in either order (the `missing: _last` default)."""
        ranked = []
        for h in hits:
            values = []
            for fname, _ in sort:
                prop, kind = Searcher(h[2]).sort_key(fname)
                v = typed(prop, field_value(h[2].visible[h[1]], fname, h[2].props))
                values.append(int(v) if v is not None and kind in ("integer", "long") else v)
            ranked.append((h, values))

        def compare(a: list, b: list) -> int:
            for (_, order), x, y in zip(sort, a, b):
                if x == y:
                    continue
                if x is None or y is None:
                    return 1 if x is None else -1
                return (-1 if x < y else 1) * (1 if order == "asc" else -1)
            return 0

        ranked.sort(key=functools.cmp_to_key(lambda a, b: compare(a[1], b[1])))
        if after is None:
            return ranked
        if not isinstance(after, list) or len(after) != len(sort):
            raise bad("search_after has a different number of sort values than sort", "parsing_exception")
        return [r for r in ranked if compare(r[1], after) > 0]



def _sort_spec(body_sort: Any, url_sort: str | None) -> list[tuple[str, str]]:
    """[(field, "asc"|"desc")] from the body's sort or the URL's `sort=f:desc,g`."""
    if url_sort:
        out = []
        for part in url_sort.split(","):
            fname, _, order = part.partition(":")
            out.append((fname, order or "asc"))
        return out
    if body_sort is None:
        return []
    out = []
    for item in body_sort if isinstance(body_sort, list) else [body_sort]:
        if isinstance(item, str):
            out.append((item, "asc"))
        elif isinstance(item, dict) and len(item) == 1:
            (fname, spec), = item.items()
            order = spec if isinstance(spec, str) else spec.get("order", "asc")
            if order not in ("asc", "desc"):
                raise bad(f"[sort] unknown order [{order}]", "parsing_exception")
            out.append((fname, order))
        else:
            raise bad("[sort] malformed", "parsing_exception")
    return out
