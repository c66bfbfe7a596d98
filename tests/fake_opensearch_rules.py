"""The fake OpenSearch's rules: which settings, mappings and names a cluster accepts, and its error
shapes. Used by tests/fake_opensearch.py; tests/FAKE_OPENSEARCH.md lists what is modelled.

Sources, named by every rule: "k-NN <tag>: <file>" is opensearch-project/k-NN at that tag under
src/main/java/org/opensearch/knn/; "OpenSearch: <file>" is opensearch-project/OpenSearch; "spec
<path>" is a test story of opensearch-project/opensearch-api-specification (commit fbe9edeb, under
tests/), which its CI runs against OpenSearch 2.19 and 3.1 with the k-NN plugin;
tests/test_fake_opensearch_engine.py checks this fake against what each such story establishes.
"""

from __future__ import annotations

import re
from typing import Any

# k-NN 2.19.2.0 index/KNNSettings.java defines these; k-NN 3.1.0.0 no longer does, so 3.x
# refuses them as unknown settings.
REMOVED_IN_3 = {"index.knn.space_type", "index.knn.algo_param.m", "index.knn.algo_param.ef_construction",
                "index.knn.plugin.enabled"}
# Settings fixed at creation (OpenSearch: IndexMetadata.INDEX_NUMBER_OF_SHARDS_SETTING is Final;
# k-NN KNNSettings.IS_KNN_INDEX_SETTING is IndexScope + Final).
STATIC_SETTINGS = {"index.number_of_shards": "int1", "index.knn": "bool"}
DYNAMIC_SETTINGS = {"index.number_of_replicas": "int0", "index.refresh_interval": "time",
                    "index.knn.algo_param.ef_search": "int2", "index.mapping.ignore_malformed": "bool",
                    # spec tests/default/indices/settings.yaml writes it and reads it back as 'true'
                    "index.blocks.write": "bool"}
# What GET _settings?include_defaults adds (spec tests/default/indices/settings.yaml expects
# index.store.type ''); the fake keeps no other defaults.
DEFAULT_SETTINGS = {"index.store.type": ""}
FIELD_PARAMS = {
    "keyword": {"type", "index", "doc_values", "ignore_above", "store", "null_value", "fields"},
    "text": {"type", "index", "store", "fields", "analyzer"},
    "integer": {"type", "index", "doc_values", "ignore_malformed", "store", "coerce", "null_value"},
    "long": {"type", "index", "doc_values", "ignore_malformed", "store", "coerce", "null_value"},
    "float": {"type", "index", "doc_values", "ignore_malformed", "store", "coerce", "null_value"},
    "double": {"type", "index", "doc_values", "ignore_malformed", "store", "coerce", "null_value"},
    # docs.opensearch.org "Boolean field type": boost, doc_values, index, meta, null_value, store;
    # no ignore_malformed.
    "boolean": {"type", "index", "doc_values", "store", "null_value", "boost", "meta"},
    "ip": {"type", "index", "doc_values", "ignore_malformed", "store", "null_value"},
    "object": {"type", "properties", "dynamic", "enabled"},
    "knn_vector": {"type", "dimension", "method", "data_type", "mode", "compression_level", "space_type", "model_id"},
}
NUMERIC = {"integer": (-2**31, 2**31 - 1), "long": (-2**63, 2**63 - 1), "float": None, "double": None}
URL_PARAMS = {"flat_settings", "max_num_segments", "refresh", "timeout", "master_timeout", "cluster_manager_timeout",
              "wait_for_active_shards", "pretty", "error_trace", "filter_path", "include_defaults", "ignore_unavailable",
              "allow_no_indices", "expand_wildcards", "routing", "preference", "realtime", "human", "local",
              "rest_total_hits_as_int", "typed_keys", "only_expunge_deletes", "flush", "wait_for_completion",
              "primary_only", "min_score", "terminate_after", "sort", "wait_for_status", "level", "fields",
              "completion_fields", "fielddata_fields", "include_segment_file_sizes", "include_unloaded_segments",
              "forbid_closed_indices", "groups", "write_index_only", "require_alias", "wait_for_no_initializing_shards",
              "wait_for_no_relocating_shards", "wait_for_nodes", "wait_for_events", "wait_for_active_shards"}
# k-NN 3.1.0.0 index/engine/faiss/FaissHNSWMethod.SUPPORTED_SPACES and
# lucene/LuceneHNSWMethod.SUPPORTED_SPACES; l1 and linf were nmslib's (index/SpaceType.java).
SPACES = {"faiss": {"l2", "innerproduct", "cosinesimil", "hamming"},
          "lucene": {"l2", "innerproduct", "cosinesimil", "hamming"},
          "nmslib": {"l2", "innerproduct", "cosinesimil", "l1", "linf"}}
# k-NN 2.19.2.0 and 3.1.0.0 index/engine/faiss/FaissMethodResolver.SUPPORTED_COMPRESSION_LEVELS,
# lucene/LuceneMethodResolver.SUPPORTED_COMPRESSION_LEVELS.
COMPRESSIONS = {"faiss": {"1x", "2x", "8x", "16x", "32x"}, "lucene": {"1x", "4x"}}
# k-NN 3.1.0.0 index/mapper/CompressionLevel.fromName accepts these names.
COMPRESSION_NAMES = {"1x", "2x", "4x", "8x", "16x", "32x", "64x"}


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


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


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


def check_setting(key: str, value: Any, version: str = "3.1.0") -> Any:
    kind = {**STATIC_SETTINGS, **DYNAMIC_SETTINGS}.get(key)
    if key in REMOVED_IN_3 and version_tuple(version) < (3,):
        return None if value is None else str(value)
    if key in REMOVED_IN_3 or kind is None:
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


def flat_settings(body: dict) -> dict:
    if isinstance(body.get("settings"), dict) and set(body) == {"settings"}:
        body = body["settings"]  # PUT _settings takes {"settings": {...}} too (spec tests/default/indices/settings.yaml)
    flat = _flatten("", body, {})
    return {(k if k.startswith("index.") else f"index.{k}"): v for k, v in flat.items()}


def check_mappings(m: Any, version: str = "3.1.0", service: str = "es") -> dict:
    if not isinstance(m, dict):
        raise bad("mappings must be an object", "mapper_parsing_exception")
    unknown = set(m) - {"properties", "dynamic", "_meta", "_source"}
    if unknown:
        raise bad(f"Root mapping definition has unsupported parameters:  [{', '.join(sorted(unknown))}]",
                  "mapper_parsing_exception")
    check_dynamic(m.get("dynamic", "true"))
    check_properties(m.get("properties", {}), version, service)
    return m


def check_dynamic(value: Any) -> None:
    # OpenSearch: ObjectMapper.Dynamic (true, false, strict, strict_allow_templates in 2.16+).
    if str(value).lower() not in ("true", "false", "strict", "strict_allow_templates", "false_allow_templates"):
        raise bad("Could not convert [dynamic.dynamic] to boolean", "mapper_parsing_exception")


def check_properties(props: Any, version: str, service: str) -> None:
    if not isinstance(props, dict):
        raise bad("properties must be an object", "mapper_parsing_exception")
    for name, p in props.items():
        if not isinstance(p, dict) or ("type" not in p and "properties" not in p):
            raise bad(f"No type specified for field [{name}]", "mapper_parsing_exception")
        t = p.get("type", "object")
        if t not in FIELD_PARAMS:
            raise bad(f"No handler for type [{t}] declared on field [{name}]", "mapper_parsing_exception")
        extra = set(p) - FIELD_PARAMS[t]
        if extra:
            raise bad(f"unknown parameter [{sorted(extra)[0]}] on mapper [{name}] of type [{t}]", "mapper_parsing_exception")
        if t == "object":
            check_properties(p.get("properties", {}), version, service)
        if t == "knn_vector":
            _check_knn_field(name, p, version, service)


def _check_knn_field(name: str, p: dict, version: str, service: str) -> None:
    dim = p.get("dimension")
    # k-NN 3.1.0.0 index/engine/KNNEngine.MAX_DIMENSIONS_BY_ENGINE: 16,000 for every engine.
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 16000:
        raise bad(f"Dimension value must be between 1 and 16000 for field [{name}], got [{dim}]", "mapper_parsing_exception")
    data_type = p.get("data_type", "float")
    if data_type not in ("float", "byte", "binary"):  # k-NN index/VectorDataType.java
        raise bad("Invalid value provided for [data_type] field. Supported values are [float, byte, binary]",
                  "mapper_parsing_exception")
    mode, comp = p.get("mode"), p.get("compression_level")
    if mode not in (None, "in_memory", "on_disk"):  # k-NN index/mapper/Mode.java
        raise bad(f"Invalid mode [{mode}]", "mapper_parsing_exception")
    if comp is not None and comp not in COMPRESSION_NAMES:
        raise bad(f'Invalid compression level: "[{comp}]"', "mapper_parsing_exception")
    if (mode or comp) and data_type != "float":
        raise bad("Compression and mode can not be used for non-float data types", "mapper_parsing_exception")
    method = p.get("method") or {}
    extra = set(method) - {"name", "engine", "space_type", "parameters"}
    if extra:
        raise bad(f"Unknown parameter [{sorted(extra)[0]}] in method of field [{name}]", "mapper_parsing_exception")
    engine = method.get("engine", "faiss")
    if engine == "nmslib" and version_tuple(version) >= (3,):
        # k-NN 3.1.0.0 index/mapper/KNNVectorFieldMapper.validateBlockedKNNEngine
        raise bad("nmslib engine is deprecated in OpenSearch  and cannot be used for new index creation in "
                  "OpenSearch from  3.0.0.", "mapper_parsing_exception")
    if engine == "lucene" and service == "aoss":
        # "Vector search collections don't support the Lucene engine" (Amazon OpenSearch Service
        # developer guide, "Working with vector search collections", Limitations). The
        # collection's exact answer is not documented; this one names the cause.
        raise bad("Vector search collections don't support the Lucene engine", "mapper_parsing_exception")
    if engine not in SPACES:
        raise bad(f"Invalid engine [{engine}]", "mapper_parsing_exception")
    if method.get("name", "hnsw") not in ("hnsw", "ivf") or (engine == "lucene" and method.get("name", "hnsw") != "hnsw"):
        raise bad(f"Invalid method name [{method.get('name')}] for engine [{engine}]", "mapper_parsing_exception")
    space = method.get("space_type", p.get("space_type", "l2"))  # k-NN KNNSettings.INDEX_KNN_DEFAULT_SPACE_TYPE
    if space not in SPACES[engine]:
        raise bad(f"Validation Failed: 1: space_type [{space}] is not supported with [{engine}] engine",
                  "mapper_parsing_exception")
    if (data_type == "binary") != (space == "hamming"):  # k-NN index/SpaceType.HAMMING.validateVectorDataType
        raise bad(f"Space type [{space}] is not supported with [{data_type}] data type", "mapper_parsing_exception")
    params = method.get("parameters") or {}
    # k-NN 3.1.0.0 FaissHNSWMethod / LuceneHNSWMethod: parameters m, ef_construction (both engines),
    # ef_search (faiss), encoder; each integer must be > 0.
    allowed = {"m", "ef_construction", "encoder"} | ({"ef_search"} if engine == "faiss" else set())
    extra = set(params) - allowed
    if extra:
        raise bad(f"Validation Failed: 1: Unknown parameter '{sorted(extra)[0]}' for method 'hnsw'",
                  "mapper_parsing_exception")
    for key in ("m", "ef_construction", "ef_search"):
        v = params.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(f"Validation Failed: 1: '{key}' must be an integer > 0", "mapper_parsing_exception")
    check_compression(engine, mode, comp, version)


def check_compression(engine: str, mode: str | None, comp: str | None, version: str) -> None:
    if engine not in COMPRESSIONS:
        if comp not in (None, "1x"):  # k-NN NmslibMethodResolver.SUPPORTED_COMPRESSION_LEVELS = {x1}
            raise bad(f'"{engine}" does not support "{comp}" compression', "mapper_parsing_exception")
        return
    if comp is not None and comp not in COMPRESSIONS[engine]:
        # AbstractMethodResolver.validateCompressionSupported's message
        raise bad(f'Validation Failed: 1: "{engine}" does not support "{comp}" compression;',
                  "mapper_parsing_exception")
    # AbstractMethodResolver.validateCompressionNotx1WhenOnDisk: called by LuceneMethodResolver at
    # 2.19.2.0 and 3.1.0.0, by FaissMethodResolver at 2.19.2.0 only.
    if mode == "on_disk" and comp == "1x" and (engine == "lucene" or version_tuple(version) < (3,)):
        raise bad('Validation Failed: 1: Cannot specify "x1" compression level when using "on_disk" mode;',
                  "mapper_parsing_exception")


def default_compression(engine: str, mode: str | None, comp: str | None) -> str:
    """FaissMethodResolver / LuceneMethodResolver.getDefaultCompressionLevel: on_disk means 32x
    (faiss) or 4x (lucene) when no level is given; otherwise 1x."""
    if comp:
        return comp
    if mode == "on_disk":
        return "32x" if engine == "faiss" else "4x"
    return "1x"


def check_index_name(name: str) -> None:
    # OpenSearch: MetadataCreateIndexService.validateIndexOrAliasName (lowercase, no leading -_+,
    # no \/*?"<>| ,#:, at most 255 bytes).
    if (not name or name != name.lower() or name[0] in "-_+" or name in (".", "..") or len(name.encode()) > 255
            or any(c in name for c in '\\/*?"<>| ,#:')):
        raise bad(f"Invalid index name [{name}], must be lowercase, not start with -_+, no \\/*?\"<>| ,#:",
                  "invalid_index_name_exception")
