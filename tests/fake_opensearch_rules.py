"""The fake OpenSearch's rules: which settings, mappings and names a 3.x cluster accepts, and its
error shapes. Used by tests/fake_opensearch.py."""

from __future__ import annotations

import re
from typing import Any

REMOVED_SETTINGS = {"index.knn.space_type", "index.knn.algo_param.m", "index.knn.algo_param.ef_construction",
                    "index.knn.plugin.enabled"}
STATIC_SETTINGS = {"index.number_of_shards": "int1", "index.knn": "bool"}
DYNAMIC_SETTINGS = {"index.number_of_replicas": "int0", "index.refresh_interval": "time",
                    "index.knn.algo_param.ef_search": "int2", "index.mapping.ignore_malformed": "bool"}
FIELD_PARAMS = {
    "keyword": {"type", "index", "doc_values", "ignore_above", "store", "null_value"},
    "integer": {"type", "index", "doc_values", "ignore_malformed", "store", "coerce", "null_value"},
    "float": {"type", "index", "doc_values", "ignore_malformed", "store", "coerce", "null_value"},
    "boolean": {"type", "index", "doc_values", "store", "null_value"},
    "text": {"type", "index", "store", "fields", "analyzer"},
    "knn_vector": {"type", "dimension", "method", "data_type", "mode", "compression_level", "space_type", "model_id"},
}
URL_PARAMS = {"flat_settings", "max_num_segments", "refresh", "timeout", "master_timeout", "cluster_manager_timeout",
              "wait_for_active_shards", "pretty", "error_trace", "filter_path", "include_defaults", "ignore_unavailable",
              "allow_no_indices", "expand_wildcards", "routing", "preference", "realtime", "human", "local",
              "rest_total_hits_as_int", "typed_keys", "only_expunge_deletes", "flush"}
SPACES = {"l2", "innerproduct", "cosinesimil", "l1", "linf", "hamming"}


class ApiError(Exception):
    def __init__(self, status: int, type_: str, reason: str):
        self.status, self.type, self.reason = status, type_, reason
        super().__init__(f"{status} {type_}: {reason}")

    def body(self) -> dict:
        err = {"type": self.type, "reason": self.reason}
        return {"error": {"root_cause": [err], **err}, "status": self.status}


def bad(reason: str, type_: str = "illegal_argument_exception") -> ApiError:
    return ApiError(400, type_, reason)


def no_index(name: str) -> ApiError:
    return ApiError(404, "index_not_found_exception", f"no such index [{name}]")


def _seconds(value: Any) -> float:
    if value is None:
        return 1.0
    s = str(value)
    if s == "-1":
        return -1.0
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", s)
    if not m:
        raise bad(f"failed to parse setting [index.refresh_interval] with value [{s}] as a time value")
    n = int(m.group(1))
    return {"ms": n / 1000, "s": n, "m": 60 * n, "h": 3600 * n, None: n / 1000}[m.group(2)]


def _flatten(prefix: str, obj: Any, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = obj
    return out


def _check_setting(key: str, value: Any) -> Any:
    kind = {**STATIC_SETTINGS, **DYNAMIC_SETTINGS}.get(key)
    if key in REMOVED_SETTINGS or kind is None:
        raise bad(f"unknown setting [{key}] please check that any required plugins are installed, or check the "
                  "breaking changes documentation for removed settings")
    if value is None:
        return None
    if kind == "bool":
        if str(value).lower() not in ("true", "false"):
            raise bad(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
        return str(value).lower()
    if kind.startswith("int"):
        try:
            n = int(str(value))
        except ValueError:
            raise bad(f"Failed to parse value [{value}] for setting [{key}]") from None
        if n < int(kind[3:]):
            raise bad(f"Failed to parse value [{value}] for setting [{key}] must be >= {kind[3:]}")
        return str(n)
    _seconds(value)
    return str(value)


def _flat_settings(body: dict) -> dict:
    flat = _flatten("", body, {})
    return {(k if k.startswith("index.") else f"index.{k}"): v for k, v in flat.items()}


def check_mappings(m: Any) -> dict:
    if not isinstance(m, dict):
        raise bad("mappings must be an object", "mapper_parsing_exception")
    unknown = set(m) - {"properties", "dynamic", "_meta", "_source"}
    if unknown:
        raise bad(f"Root mapping definition has unsupported parameters:  [{', '.join(sorted(unknown))}]",
                  "mapper_parsing_exception")
    if str(m.get("dynamic", "true")).lower() not in ("true", "false", "strict", "strict_allow_templates"):
        raise bad("Could not convert [dynamic.dynamic] to boolean", "mapper_parsing_exception")
    for name, p in m.get("properties", {}).items():
        if not isinstance(p, dict) or "type" not in p:
            raise bad(f"No type specified for field [{name}]", "mapper_parsing_exception")
        t = p["type"]
        if t not in FIELD_PARAMS:
            raise bad(f"No handler for type [{t}] declared on field [{name}]", "mapper_parsing_exception")
        extra = set(p) - FIELD_PARAMS[t]
        if extra:
            raise bad(f"unknown parameter [{sorted(extra)[0]}] on mapper [{name}] of type [{t}]", "mapper_parsing_exception")
        if t == "knn_vector":
            _check_knn_field(name, p)
    return m


def _check_knn_field(name: str, p: dict) -> None:
    dim = p.get("dimension")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 16000:
        raise bad(f"Dimension value must be between 1 and 16000 for field [{name}], got [{dim}]", "mapper_parsing_exception")
    data_type = p.get("data_type", "float")
    if data_type not in ("float", "byte", "binary"):
        raise bad("Invalid value provided for [data_type] field. Supported values are [float, byte, binary]",
                  "mapper_parsing_exception")
    mode, comp = p.get("mode"), p.get("compression_level")
    if mode not in (None, "in_memory", "on_disk"):
        raise bad(f"Invalid mode [{mode}]", "mapper_parsing_exception")
    if comp not in (None, "1x", "2x", "4x", "8x", "16x", "32x"):
        raise bad(f"Invalid compression level [{comp}]", "mapper_parsing_exception")
    if (mode or comp) and data_type != "float":
        raise bad("Compression and mode can not be used for non-float data types", "mapper_parsing_exception")
    method = p.get("method")
    if method is None:
        return
    extra = set(method) - {"name", "engine", "space_type", "parameters"}
    if extra:
        raise bad(f"Unknown parameter [{sorted(extra)[0]}] in method of field [{name}]", "mapper_parsing_exception")
    engine = method.get("engine", "faiss")
    if engine == "nmslib":
        raise bad("nmslib engine is deprecated in OpenSearch and cannot be used for new index creation starting "
                  "from version 3.0.0", "mapper_parsing_exception")
    if engine not in ("faiss", "lucene"):
        raise bad(f"Invalid engine [{engine}]", "mapper_parsing_exception")
    if method.get("name") not in ("hnsw", "ivf") or (engine == "lucene" and method["name"] != "hnsw"):
        raise bad(f"Invalid method name [{method.get('name')}] for engine [{engine}]", "mapper_parsing_exception")
    space = method.get("space_type", p.get("space_type", "l2"))
    if space not in SPACES or (engine == "lucene" and space in ("l1", "linf", "hamming")):
        raise bad(f"Validation Failed: 1: space_type [{space}] is not supported with [{engine}] engine",
                  "mapper_parsing_exception")
    if data_type == "binary" and space != "hamming":
        raise bad("Space type [hamming] is required for binary data type", "mapper_parsing_exception")
    params = method.get("parameters", {})
    allowed = {"m", "ef_construction"} | ({"encoder", "ef_search"} if engine == "faiss" else {"encoder"})
    extra = set(params) - allowed
    if extra:
        raise bad(f"Validation Failed: 1: Unknown parameter '{sorted(extra)[0]}' for method 'hnsw'",
                  "mapper_parsing_exception")
    for key, low in (("m", 2), ("ef_construction", 2)):
        v = params.get(key, low)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise bad(f"Validation Failed: 1: '{key}' must be an integer >= {low}", "mapper_parsing_exception")
    if engine == "lucene" and (comp in ("8x", "16x", "32x") or mode == "on_disk" and comp not in (None, "4x")):
        raise bad("Compression level is not supported for the lucene engine", "mapper_parsing_exception")


def check_index_name(name: str) -> None:
    if (not name or name != name.lower() or name[0] in "-_+" or name in (".", "..") or len(name.encode()) > 255
            or any(c in name for c in '\\/*?"<>| ,#:')):
        raise bad(f"Invalid index name [{name}], must be lowercase, not start with -_+, no \\/*?\"<>| ,#:",
                  "invalid_index_name_exception")


# -- queries --------------------------------------------------------------------------------
