"""The fake OpenSearch's query DSL subset (knn with efficient filtering, bool, term, terms, range,
match_all, match_none, ids) evaluated over one index's refreshed documents, and `_source` filtering."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

import numpy as np

from fake_opensearch_rules import bad

if TYPE_CHECKING:
    from fake_opensearch import FakeIndex

def _score(ip: float) -> float:
    ip = np.float32(ip)
    return float(np.float32(1) + ip if ip >= 0 else np.float32(1) / (np.float32(1) - ip))


class Searcher:
    """Evaluates the query DSL subset over one index's visible documents."""

    def __init__(self, idx: FakeIndex):
        self.idx = idx

    def matches(self, q: Any, src: dict, doc_id: str) -> bool:
        if not isinstance(q, dict) or len(q) != 1:
            raise bad("[_na] query malformed, must start with start_object", "parsing_exception")
        (kind, body), = q.items()
        if kind == "match_all":
            return True
        if kind == "match_none":
            return False
        if kind == "ids":
            return doc_id in body.get("values", [])
        if kind == "bool":
            extra = set(body) - {"filter", "must", "must_not", "should", "minimum_should_match"}
            if extra:
                raise bad(f"[bool] query does not support [{sorted(extra)[0]}]", "parsing_exception")
            lists = {k: (v if isinstance(v, list) else [v]) for k, v in body.items() if k != "minimum_should_match"}
            # lists, not generators: every clause is evaluated, so every clause is validated
            ok = all([self.matches(c, src, doc_id) for k in ("filter", "must") for c in lists.get(k, [])])
            ok = not any([self.matches(c, src, doc_id) for c in lists.get("must_not", [])]) and ok
            if lists.get("should"):
                ok = any([self.matches(c, src, doc_id) for c in lists["should"]]) and ok
            return ok
        if kind in ("term", "terms", "range"):
            if not isinstance(body, dict) or len(body) != 1:
                raise bad(f"[{kind}] query requires exactly one field", "parsing_exception")
            (fname, spec), = body.items()
            prop = self.idx.props.get(fname)
            if prop is None or prop.get("index") is False:  # unmapped or unindexed: nothing matches
                if prop is not None:
                    raise bad(f"Cannot search on field [{fname}] since it is not indexed.", "query_shard_exception")
                return False
            value = src.get(fname)
            if kind == "range":
                if not isinstance(spec, dict) or set(spec) - {"gt", "gte", "lt", "lte"}:
                    raise bad("[range] query malformed", "parsing_exception")
                if prop["type"] not in ("integer", "float"):
                    raise bad(f"range on [{fname}] of type [{prop['type']}] is not supported here", "query_shard_exception")
                x = self._typed(prop, value)
                if x is None:
                    return False
                ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
                       "lte": lambda a, b: a <= b}
                return all(ops[op](x, float(v)) for op, v in spec.items())
            wanted = [spec["value"] if isinstance(spec, dict) else spec] if kind == "term" else spec
            if not isinstance(wanted, list):
                raise bad("[terms] query does not support [values] as a non-array", "parsing_exception")
            wanted = [self._query_value(prop, fname, w) for w in wanted]
            x = self._typed(prop, value)
            return x is not None and x in wanted
        raise bad(f"unknown query [{kind}]", "parsing_exception")

    @staticmethod
    def _typed(prop: dict, value: Any):
        t = prop["type"]
        try:
            if t == "keyword":
                return None if value is None or isinstance(value, (dict, list)) else (
                    str(value).lower() if isinstance(value, bool) else str(value))
            if t == "boolean":
                return {"true": True, "false": False}.get(value) if isinstance(value, str) else (
                    value if isinstance(value, bool) else None)
            if t in ("integer", "float"):
                if isinstance(value, bool) or value is None:
                    return None
                x = float(value)
                return float(np.float32(x)) if t == "float" else (x if x.is_integer() else None)
        except (TypeError, ValueError):
            return None  # ignore_malformed kept the document, the field is not indexed
        return None

    @staticmethod
    def _query_value(prop: dict, fname: str, w: Any):
        t = prop["type"]
        if t == "keyword":
            return str(w).lower() if isinstance(w, bool) else str(w)
        if t == "boolean":
            if isinstance(w, bool):
                return w
            if w in ("true", "false"):
                return w == "true"
            raise bad(f"Can't parse boolean value [{w}], expected [true] or [false]", "query_shard_exception")
        try:
            x = float(w)
        except (TypeError, ValueError):
            raise bad(f"failed to create query: For input string: \"{w}\"", "query_shard_exception") from None
        if t == "integer":
            if isinstance(w, bool) or not x.is_integer():
                raise bad(f"failed to create query: Value [{w}] has a decimal part", "query_shard_exception")
            return x
        return float(np.float32(x))

    def validate(self, q: Any) -> None:
        """Parse errors surface whether or not any document exists, as on a real shard."""
        self.matches(q, {}, "")

    def knn(self, body: Any) -> list[tuple[float, str]]:
        if not isinstance(body, dict) or len(body) != 1:
            raise bad("[knn] query malformed, one field expected", "parsing_exception")
        (fname, params), = body.items()
        prop = self.idx.props.get(fname)
        if prop is None or prop.get("type") != "knn_vector":
            raise bad(f"Field '{fname}' is not knn_vector type.", "query_shard_exception")
        extra = set(params) - {"vector", "k", "filter", "method_parameters", "rescore", "min_score", "max_distance",
                               "boost", "expand_nested_docs"}
        if extra:
            raise bad(f"[knn] unknown token [{sorted(extra)[0]}]", "parsing_exception")
        if "vector" not in params:
            raise bad("[knn] requires query vector", "parsing_exception")
        vec = params["vector"]
        if not isinstance(vec, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vec):
            raise bad("[knn] vector must be an array of numbers", "parsing_exception")
        if len(vec) != prop["dimension"]:
            raise bad(f"Query vector has invalid dimension: {len(vec)}. Dimension should be: {prop['dimension']}",
                      "illegal_argument_exception")
        given = [p for p in ("k", "min_score", "max_distance") if p in params]
        if len(given) != 1:
            raise bad("[knn] requires exactly one of k, distance or score to be set", "illegal_argument_exception")
        k = params.get("k")
        if "k" in params and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10000):
            raise bad(f"[knn] requires 0 < k <= 10000, got [{k}]", "illegal_argument_exception")
        rescore = params.get("rescore", {})
        if rescore is not False and (not isinstance(rescore, dict) or set(rescore) - {"oversample_factor"}
                                     or not 1.0 <= float(rescore.get("oversample_factor", 1.0)) <= 100.0):
            raise bad(f"[knn] invalid rescore {rescore}", "illegal_argument_exception")
        mp = params.get("method_parameters", {})
        if set(mp) - {"ef_search"} or not isinstance(mp.get("ef_search", 2), int) or mp.get("ef_search", 2) < 1:
            raise bad(f"[knn] invalid method_parameters {mp}", "illegal_argument_exception")
        dtype = prop.get("data_type", "float")
        q = np.asarray(vec, dtype=np.float32)
        if dtype == "byte" and (np.any(q != np.rint(q)) or np.any(q < -128) or np.any(q > 127)):
            raise bad("[knn] byte vectors take integers in [-128, 127]", "illegal_argument_exception")
        flt = params.get("filter")
        if flt is not None:
            self.validate(flt)
        scored = []
        for doc_id, src in self.idx.visible.items():
            if fname not in src or (flt is not None and not self.matches(flt, src, doc_id)):
                continue
            ip = float(np.dot(np.asarray(src[fname], dtype=np.float32), q))
            scored.append((_score(ip), doc_id))
        scored.sort(key=lambda t: -t[0])  # stable: ties keep insertion order
        if "k" in params:
            return scored[:k]
        threshold = params["min_score"] if "min_score" in params else _score(-params["max_distance"])
        return [s for s in scored if s[0] >= threshold]


# -- the server ----------------------------------------------------------------------------


def _filter_source(src: dict, spec: Any) -> dict | None:
    if spec is False:
        return None
    if spec is True:
        return dict(src)
    if isinstance(spec, (str, list)):
        spec = {"includes": [spec] if isinstance(spec, str) else spec}
    if not isinstance(spec, dict) or set(spec) - {"includes", "excludes"}:
        raise bad("[_source] malformed", "parsing_exception")
    inc, exc = spec.get("includes"), spec.get("excludes", [])
    return {k: v for k, v in src.items() if (not inc or any(fnmatch.fnmatchcase(k, p) for p in inc))
            and not any(fnmatch.fnmatchcase(k, p) for p in exc)}
