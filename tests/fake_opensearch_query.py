"""The fake OpenSearch's query DSL subset (knn with efficient filtering, bool, term, terms, range,
match_all, match_none, ids) evaluated over one index's refreshed documents, sorting, and `_source`
filtering. Sources as in fake_opensearch_rules.py."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

import numpy as np

from fake_opensearch_docs import coerce_number, parse_boolean
from fake_opensearch_rules import NUMERIC, bad

if TYPE_CHECKING:
    from fake_opensearch import FakeIndex

KNN_PARAMS = {"vector", "k", "filter", "method_parameters", "rescore", "min_score", "max_distance", "boost",
              "expand_nested_docs"}


def knn_score(space: str, doc: np.ndarray, q: np.ndarray) -> float:
    """The score a k-NN query reports (k-NN 3.1.0.0 index/SpaceType.scoreTranslation, in float32):
    l2 and l1/linf: 1 / (1 + distance), the l2 distance squared; innerproduct: 1 + ip when
    ip >= 0 else 1 / (1 - ip); cosinesimil: (2 - (1 - cos)) / 2."""
    f = np.float32
    if space == "l2":
        return float(f(1) / (f(1) + f(np.sum((doc - q) ** 2))))
    if space in ("l1", "linf"):
        diff = np.abs(doc - q)
        return float(f(1) / (f(1) + f(diff.sum() if space == "l1" else diff.max())))
    if space == "innerproduct":
        ip = f(np.dot(doc, q))
        return float(f(1) + ip if ip >= 0 else f(1) / (f(1) - ip))
    if space == "cosinesimil":
        cos = f(np.dot(doc, q) / (np.linalg.norm(doc) * np.linalg.norm(q)))
        return float(max((f(2) - (f(1) - cos)) / f(2), f(0)))
    raise bad(f"the fake does not score space_type [{space}] (tests/FAKE_OPENSEARCH.md)")


def field_prop(props: dict, name: str) -> dict | None:
    """The mapping of `name`, following object properties and multi-fields (`title.keyword`)."""
    if name in props:
        return props[name]
    head, _, rest = name.partition(".")
    parent = props.get(head)
    if not rest or parent is None:
        return None
    if rest in parent.get("fields", {}):
        return parent["fields"][rest]
    return field_prop(parent.get("properties", {}), rest)


def field_value(src: dict, name: str, props: dict) -> Any:
    if name in src:
        return src[name]
    head, _, rest = name.partition(".")
    if not rest:
        return None
    if rest in props.get(head, {}).get("fields", {}):
        return src.get(head)  # a multi-field indexes its parent's value
    inner = src.get(head)
    return field_value(inner, rest, props.get(head, {}).get("properties", {})) if isinstance(inner, dict) else None


def typed(prop: dict, value: Any):
    """The indexed value of a field, or None when the field is absent or was malformed."""
    t = prop.get("type")
    if isinstance(value, list):
        value = next((v for v in value if v is not None), None)
    if value is None or isinstance(value, dict):
        return None
    if t == "keyword":
        if prop.get("ignore_above") is not None and len(str(value)) > prop["ignore_above"]:
            return None
        return str(value).lower() if isinstance(value, bool) else str(value)
    if t == "boolean":
        return parse_boolean(value)
    if t in NUMERIC:
        x = coerce_number(t, value, prop.get("coerce", True))
        return None if x is None else (float(np.float32(x)) if t == "float" else float(x))
    return None


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
            return self._bool(body, src, doc_id)
        if kind in ("term", "terms", "range"):
            return self._leaf(kind, body, src)
        raise bad(f"unknown query [{kind}]", "parsing_exception")

    def _bool(self, body: Any, src: dict, doc_id: str) -> bool:
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

    def _leaf(self, kind: str, body: Any, src: dict) -> bool:
        if not isinstance(body, dict) or len(body) != 1:
            raise bad(f"[{kind}] query requires exactly one field", "parsing_exception")
        (fname, spec), = body.items()
        prop = field_prop(self.idx.props, fname)
        if prop is None:  # unmapped: nothing matches
            return False
        if prop.get("index") is False:
            raise bad(f"Cannot search on field [{fname}] since it is not indexed.", "query_shard_exception")
        if prop.get("type") == "text":
            raise bad(f"the fake does not analyse text: {kind} queries on text field [{fname}] are not modelled")
        value = field_value(src, fname, self.idx.props)
        if kind == "range":
            return self._range(prop, fname, spec, value)
        wanted = [spec["value"] if isinstance(spec, dict) else spec] if kind == "term" else spec
        if not isinstance(wanted, list):
            raise bad("[terms] query does not support [values] as a non-array", "parsing_exception")
        wanted = [self._query_value(prop, w) for w in wanted]
        values = value if isinstance(value, list) else [value]
        return any(typed(prop, v) in wanted for v in values if typed(prop, v) is not None)

    @staticmethod
    def _range(prop: dict, fname: str, spec: Any, value: Any) -> bool:
        if not isinstance(spec, dict) or set(spec) - {"gt", "gte", "lt", "lte"}:
            raise bad("[range] query malformed", "parsing_exception")
        if prop.get("type") not in NUMERIC:
            raise bad(f"range on [{fname}] of type [{prop.get('type')}] is not modelled", "query_shard_exception")
        x = typed(prop, value)
        if x is None:
            return False
        ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        return all(ops[op](x, float(v)) for op, v in spec.items())

    @staticmethod
    def _query_value(prop: dict, w: Any):
        t = prop.get("type")
        if t == "keyword":
            return str(w).lower() if isinstance(w, bool) else str(w)
        if t == "boolean":
            b = parse_boolean(w) if w != "" else None
            if b is None:
                raise bad(f"Can't parse boolean value [{w}], expected [true] or [false]", "query_shard_exception")
            return b
        try:
            x = float(w)
        except (TypeError, ValueError):
            raise bad(f"failed to create query: For input string: \"{w}\"", "query_shard_exception") from None
        if NUMERIC.get(t) is not None:
            if isinstance(w, bool) or not x.is_integer():
                raise bad(f"failed to create query: Value [{w}] has a decimal part", "query_shard_exception")
            return x
        return float(np.float32(x)) if t == "float" else x

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
        q, k = self._knn_params(prop, params)
        flt = params.get("filter")
        if flt is not None:
            self.validate(flt)
        method = prop.get("method") or {}
        space = method.get("space_type", prop.get("space_type", "l2"))
        scored = []
        for doc_id, src in self.idx.visible.items():
            if fname not in src or (flt is not None and not self.matches(flt, src, doc_id)):
                continue
            scored.append((knn_score(space, np.asarray(src[fname], dtype=np.float32), q), doc_id))
        scored.sort(key=lambda t: -t[0])  # stable: ties keep insertion order
        if k is not None:
            return scored[:k]
        return [s for s in scored if s[0] >= params["min_score"]]

    @staticmethod
    def _knn_params(prop: dict, params: Any) -> tuple[np.ndarray, int | None]:
        # k-NN 3.1.0.0 index/query/parser/KNNQueryBuilderParser: the fields a knn query takes.
        if not isinstance(params, dict):
            raise bad("[knn] query malformed", "parsing_exception")
        extra = set(params) - KNN_PARAMS
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
        # k-NN 3.1.0.0 index/query/KNNQueryBuilder: exactly one of k, distance or score;
        # 0 < k <= K_MAX (10000); RescoreParser.validate: oversample_factor in [1, 100]
        # (query/rescore/RescoreContext.MIN/MAX_OVERSAMPLE_FACTOR).
        if len(given) != 1:
            raise bad("[knn] requires exactly one of k, distance or score to be set", "illegal_argument_exception")
        if "max_distance" in params:
            raise bad("the fake does not model radial search by max_distance (tests/FAKE_OPENSEARCH.md)")
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
        q = np.asarray(vec, dtype=np.float32)
        if prop.get("data_type") == "byte" and (np.any(q != np.rint(q)) or np.any(q < -128) or np.any(q > 127)):
            raise bad("[knn] byte vectors take integers in [-128, 127]", "illegal_argument_exception")
        # Quantised codes (mode/compression_level) are not modelled: the fake scores the full
        # vectors, as if every candidate were re-scored (tests/FAKE_OPENSEARCH.md).
        return q, k

    def sort_key(self, fname: str) -> tuple[dict, str]:
        """The mapping and kind of a sort field, or a 400: an unmapped field (OpenSearch's "No
        mapping found for [..] in order to sort on"); text fields are not modelled."""
        prop = field_prop(self.idx.props, fname)
        if prop is None:
            raise bad(f"No mapping found for [{fname}] in order to sort on", "query_shard_exception")
        if prop.get("type") not in ("keyword", "boolean") and prop.get("type") not in NUMERIC:
            raise bad(f"sorting on [{fname}] of type [{prop.get('type')}] is not modelled (text fields need "
                      "fielddata)", "illegal_argument_exception")
        return prop, prop["type"]


def filter_source(src: dict, spec: Any) -> dict | None:
    """`_source` as a search or get returns it: true, false, a pattern or list of patterns, or
    {"includes", "excludes"} each a pattern or a list (spec tests/default/_core/search/_source.yaml
    gives `includes: director`, `excludes: year` as strings)."""
    if spec is False:
        return None
    if spec is True or spec is None:
        return dict(src)
    if isinstance(spec, (str, list)):
        spec = {"includes": spec}
    if not isinstance(spec, dict) or set(spec) - {"includes", "excludes"}:
        raise bad("[_source] malformed", "parsing_exception")
    inc, exc = spec.get("includes") or [], spec.get("excludes") or []
    inc, exc = ([inc] if isinstance(inc, str) else inc), ([exc] if isinstance(exc, str) else exc)
    if not all(isinstance(p, str) for p in inc + exc):
        raise bad("[_source] patterns must be strings", "parsing_exception")
    return {k: v for k, v in src.items() if (not inc or any(fnmatch.fnmatchcase(k, p) for p in inc))
            and not any(fnmatch.fnmatchcase(k, p) for p in exc)}
