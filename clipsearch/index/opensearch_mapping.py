"""What the OpenSearch index looks like, and how numbers cross the wire.

- `index_body(settings, ...)`: settings and mapping of a new physical index. Only settings OpenSearch 3.x
  still has (`index.knn`, `index.knn.algo_param.ef_search`); the space type lives in the field's
  method, never in the removed `index.knn.space_type`; no nmslib.
- Scores: for `space_type: innerproduct` the faiss and lucene engines both turn the inner
  product `ip` into `1 + ip` when `ip >= 0` and `1 / (1 - ip)` otherwise (faiss documents it as
  distance `d = -ip` with `1 / (1 + d)` for `d >= 0` and `1 - d` otherwise; lucene's
  MAXIMUM_INNER_PRODUCT scaling gives the same numbers). `score_to_ip` inverts it.
- Byte vectors (`data_type: byte`): a unit vector is quantised as `round(x * scale)` clipped to
  [-128, 127]; the engine's inner product of two such vectors is then about `cos * scale**2`,
  so cosine = ip / scale**2. One scale for the whole index (per-vector scales would make inner
  products incomparable): a unit vector's components have a spread of about 1/sqrt(dim), and
  `byte_scale(dim)` maps BYTE_CLIP_SIGMAS of that spread to 127, clipping the rare larger ones.
  The scale is recorded in the index's `_meta`; `bench/compression_bench.py` measures the
  recall it costs.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np

from clipsearch import schema
from clipsearch.config import OpenSearchSettings

VECTOR_FIELD = "vector"
ID_FIELD = "doc_id"  # the id again, as a sortable keyword: `ids()` pages with search_after on it
RESERVED = frozenset((VECTOR_FIELD, ID_FIELD))
BOOLEAN_FIELDS = frozenset(n for n, t in schema.FIELDS.items() if t == "boolean")
ENGINES = ("faiss", "lucene")
DATA_TYPES = ("float", "byte")
MODES = ("in_memory", "on_disk")
# The compression levels each engine accepts (opensearch-project/k-NN, 2.19.2.0 and 3.1.0.0:
# FaissMethodResolver.SUPPORTED_COMPRESSION_LEVELS, LuceneMethodResolver.SUPPORTED_COMPRESSION_LEVELS).
COMPRESSIONS = {"faiss": ("1x", "2x", "8x", "16x", "32x"), "lucene": ("1x", "4x")}
# Levels whose quantised codes are re-scored with the full vectors (k-NN 3.1.0.0,
# mapper/CompressionLevel.java: a default RescoreContext for 4x and above).
RESCORED = frozenset(("4x", "8x", "16x", "32x"))
META_FORMAT = 1
# How many "standard deviations" of a unit vector's components the int8 range covers: fewer
# means finer steps and more clipping (chosen with bench/compression_bench.py).
BYTE_CLIP_SIGMAS = 4.0

_TYPES = {"keyword": {"type": "keyword"}, "integer": {"type": "integer"}, "float": {"type": "float"},
          "boolean": {"type": "boolean"}, "text": {"type": "text"},
          # returned with the document but never searched: no index structures to pay for
          "stored": {"type": "keyword", "index": False, "doc_values": False}}


def check_options(engine: str, data_type: str, mode: str | None, compression: str | None, m: int,
                  ef_construction: int, ef_search: int, service: str = "es") -> None:
    """Refuse combinations OpenSearch would refuse, before any index is created."""
    if engine not in ENGINES:
        raise ValueError(f"OPENSEARCH_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r} (nmslib is deprecated)")
    if service == "aoss" and engine == "lucene":
        # "Vector search collections don't support the Lucene engine" (Amazon OpenSearch Service
        # developer guide, "Working with vector search collections", Limitations).
        raise ValueError("OpenSearch Serverless (OPENSEARCH_SERVICE=aoss) does not support the lucene engine: "
                         "set OPENSEARCH_ENGINE=faiss")
    if data_type not in DATA_TYPES:
        raise ValueError(f"OPENSEARCH_DATA_TYPE must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"OPENSEARCH_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    if data_type == "byte" and (mode is not None or compression is not None):
        raise ValueError("OPENSEARCH_MODE/OPENSEARCH_COMPRESSION apply to float vectors only, not data_type byte")
    if compression is not None and compression not in COMPRESSIONS[engine]:
        raise ValueError(f"OPENSEARCH_COMPRESSION {compression!r} is not offered by the {engine} engine: use one of "
                         f"{', '.join(COMPRESSIONS[engine])}")
    if mode == "on_disk" and compression == "1x":
        # AbstractMethodResolver.validateCompressionNotx1WhenOnDisk: the lucene resolver (2.19, 3.1)
        # and the faiss one of 2.19 refuse it; leave the level unset to get the mode's default.
        raise ValueError("OPENSEARCH_MODE=on_disk needs a compressed level (the default: 32x for faiss, 4x for "
                         "lucene); OPENSEARCH_COMPRESSION=1x contradicts it")
    for name, value, low in (("OPENSEARCH_M", m, 2), ("OPENSEARCH_EF_CONSTRUCTION", ef_construction, 2),
                             ("OPENSEARCH_EF_SEARCH", ef_search, 1)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")


def rescored(mode: str | None, compression: str | None) -> bool:
    """Whether the engine keeps quantised codes that the full vectors should re-score."""
    return mode == "on_disk" or compression in RESCORED


def byte_scale(dim: int, sigmas: float = BYTE_CLIP_SIGMAS) -> float:
    return round(127.0 * math.sqrt(dim) / sigmas, 3)


def physical_name(alias: str, model_id: str, dim: int, now: float | None = None) -> str:
    """`{alias}-{model slug}-{dim}-{UTC timestamp}`: lowercase, no characters OpenSearch forbids."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")[:80] or "model"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}"
    return f"{alias}-{slug}-{dim}-{stamp}"


def index_body(settings: OpenSearchSettings, *, model_id: str, dim: int) -> dict[str, Any]:
    """A new index for the model's vectors, with the settings' alias, engine, graph and storage."""
    engine, data_type, mode, compression = settings.engine, settings.data_type, settings.mode, settings.compression
    m, ef_construction, ef_search = settings.m, settings.ef_construction, settings.ef_search
    shards, replicas, alias = settings.shards, settings.replicas, settings.index
    check_options(engine, data_type, mode, compression, m, ef_construction, ef_search, settings.service)
    vector: dict[str, Any] = {
        "type": "knn_vector", "dimension": dim,
        "method": {"name": "hnsw", "engine": engine, "space_type": "innerproduct",
                   "parameters": {"m": m, "ef_construction": ef_construction}},
    }
    if data_type != "float":
        vector["data_type"] = data_type
    if mode is not None:
        vector["mode"] = mode
    if compression is not None:
        vector["compression_level"] = compression
    properties: dict[str, Any] = {VECTOR_FIELD: vector, ID_FIELD: {"type": "keyword"}}
    properties.update({name: dict(_TYPES[kind]) for name, kind in schema.FIELDS.items()})
    return {
        "settings": {"index": {
            "knn": True, "knn.algo_param.ef_search": ef_search,
            "number_of_shards": shards, "number_of_replicas": replicas,
            # A wrongly typed metadata value (say width "wide") leaves that field unindexed
            # instead of rejecting the whole document: ingest never loses a photo over it.
            "mapping.ignore_malformed": True,
        }},
        "mappings": {
            # Metadata fields outside the schema are kept and returned but not indexed: the
            # mapping stays the one above however many odd fields a source sends.
            "dynamic": False,
            # `replicas`: the serving value, restored after a load even when the load finds the
            # index paused by another one (whose -1 / 0 must not be taken for the serving values).
            "_meta": {"clipsearch": {"format": META_FORMAT, "model_id": model_id, "dim": dim, "alias": alias,
                                     "data_type": data_type, "replicas": replicas,
                                     **({"byte_scale": byte_scale(dim)} if data_type == "byte" else {})}},
            "properties": properties,
        },
    }


# -- vectors and scores ----------------------------------------------------------------------
def encode_vector(unit: np.ndarray, data_type: str, scale: float | None) -> list:
    """The JSON value uploaded for one L2-normalised float32 vector."""
    if data_type == "byte":
        return np.clip(np.rint(unit * scale), -128, 127).astype(np.int8).tolist()
    return unit.astype(np.float32).tolist()


def decode_vector(values: list, data_type: str, scale: float | None) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if data_type == "byte":
        v = v / np.float32(scale)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def score_to_ip(score: float) -> float:
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


def ip_to_score(ip: float) -> float:
    return 1.0 + ip if ip >= 0 else 1.0 / (1.0 - ip)


def to_cosine(score: float, data_type: str, scale: float | None) -> float:
    ip = score_to_ip(score)
    if data_type == "byte":
        ip /= scale * scale
    return float(min(1.0, max(-1.0, ip)))


def min_score_param(cosine: float, data_type: str, scale: float | None) -> float:
    """OpenSearch's `min_score` for a cosine threshold, a hair low: the exact cut is made on
    the converted cosines, so float rounding on either side never drops a qualifying hit."""
    ip = cosine * (scale * scale if data_type == "byte" else 1.0)
    return max(0.0, ip_to_score(ip) - 1e-6 * max(1.0, abs(ip)))


# -- filters ---------------------------------------------------------------------------------
MATCH_NONE: dict = {"match_none": {}}


def _values_for(kind: str, values: tuple) -> list:
    """The values that can equal a field of this schema type; the embedded backend compares
    types strictly too (a string never equals a number, True never equals 1)."""
    if kind == "keyword":
        return [v for v in values if isinstance(v, str)]
    if kind == "boolean":
        return [v for v in values if isinstance(v, bool)]
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if kind == "integer":  # an integer field cannot equal 2.5, and OpenSearch rejects the term
        return [int(v) for v in nums if float(v).is_integer() and abs(v) < 2**31]
    return [float(v) for v in nums if math.isfinite(v)]


def filter_clauses(conds) -> list[dict]:
    """`parse_filters` conditions as clauses for the knn query's `filter` (a bool `filter`)."""
    from clipsearch.errors import InvalidInput

    clauses = []
    for cond in conds:
        kind = schema.FIELDS.get(cond.field)
        if kind is None or cond.field not in schema.FILTERABLE:
            filterable = ", ".join(sorted(schema.FILTERABLE))
            raise InvalidInput(f"filter field {cond.field!r} is not filterable in OpenSearch; filterable fields: {filterable}")
        if cond.values is not None:
            values = _values_for(kind, cond.values)
            clauses.append({"terms": {cond.field: values}} if values else MATCH_NONE)
        elif kind in ("integer", "float"):
            clauses.append({"range": {cond.field: {op: v for op, v in cond.ranges}}})
        else:  # a range over strings or flags matches nothing, as in the embedded backend
            clauses.append(MATCH_NONE)
    return clauses


# -- documents -------------------------------------------------------------------------------
def document_problem(doc_id, metadata, vector: np.ndarray, dim: int) -> str | None:
    """Why OpenSearch would refuse this document (or clipsearch must not write it), or None."""
    from clipsearch.index.base import id_problem

    problem = id_problem(doc_id)
    if problem is not None:
        return problem
    if not isinstance(metadata, dict):
        return "metadata must be a dict"
    if RESERVED & set(metadata):
        return f"metadata may not use the reserved fields {sorted(RESERVED)}"
    for name in BOOLEAN_FIELDS & set(metadata):
        # ignore_malformed covers numbers, not booleans: OpenSearch would reject the document
        if not isinstance(metadata[name], (bool, type(None))):
            return f"{name} must be true or false, got {metadata[name]!r}"
    for name in set(schema.FIELDS) & set(metadata):
        if _has_object(metadata[name]):
            # An object where the mapping has a leaf field fails the whole document: "failed to
            # parse field [field] of type [keyword] ... Preview of field's value: '{}'"
            # (opensearch-project/OpenSearch, KeywordFieldMapperTests.testParsesKeywordNestedEmptyObjectStrict).
            return f"metadata field {name!r} holds an object; it is mapped as {schema.FIELDS[name]}"
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        return f"vector has {v.shape[0]} dimensions, the index has {dim}"
    if not np.all(np.isfinite(v)):
        return "vector contains NaN or infinity"
    if not np.any(v):
        return "vector is all zeros"
    return None


def _has_object(value) -> bool:
    """A JSON object anywhere in the value (arrays of arrays are flattened, objects are not)."""
    if isinstance(value, dict):
        return True
    return isinstance(value, (list, tuple)) and any(_has_object(v) for v in value)
