"""The fake OpenSearch's document rules: how a document is checked against its index's mapping,
which fields dynamic mapping adds, and which ids a write may carry. Used by fake_opensearch.py."""

from __future__ import annotations

import base64
import math
import os
from typing import Any

from fake_opensearch_rules import NUMERIC, ApiError, bad

MAX_ID_BYTES = 512


def check_id(doc_id: str | None) -> str | None:
    """Why a write's `_id` is invalid (None when valid). OpenSearch: action/index/IndexRequest.validate
    ("id [..] is too long, must be no longer than 512 bytes but was: N"); action/bulk/BulkRequest.validate
    collects every item's errors and fails the whole bulk request with them."""
    if doc_id is None:
        return None
    if doc_id == "":  # IndexRequest.process: "if _id is specified it must not be empty"
        return "if _id is specified it must not be empty"
    size = len(doc_id.encode("utf-8"))
    if size > MAX_ID_BYTES:
        return f"id [{doc_id}] is too long, must be no longer than 512 bytes but was: {size}"
    return None


def auto_id() -> str:
    """A random id in the shape OpenSearch generates (OpenSearch: common/UUIDs.base64UUID, 20 url-safe chars)."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def _preview(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_preview(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_preview(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _failed(name: str, type_: str, doc_id: str | None, value: Any) -> ApiError:
    # OpenSearch: index/mapper/FieldMapper.parse's message (KeywordFieldMapperTests.testParsesKeywordNestedEmptyObjectStrict)
    return bad(f"failed to parse field [{name}] of type [{type_}] in document with id '{doc_id}'. "
               f"Preview of field's value: '{_preview(value)}'", "mapper_parsing_exception")


def coerce_number(type_: str, value: Any, coerce: bool = True) -> float | int | None:
    """The number a numeric field indexes for `value`, or None when it is malformed. Numeric fields
    coerce ("converting strings to numbers or truncating floats to integers", docs.opensearch.org
    "Mapping parameters", coerce); booleans and objects are never numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, str):
        if not coerce:
            return None
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    bounds = NUMERIC[type_]
    if bounds is None:
        return float(value)
    if isinstance(value, float) and not value.is_integer() and not coerce:
        return None
    n = int(value)  # truncation toward zero, as coercion does
    return n if bounds[0] <= n <= bounds[1] else None


def parse_boolean(value: Any) -> bool | None:
    """true/false, "true"/"false", and "" as false (docs.opensearch.org "Boolean field type")."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False, "": False}.get(value) if isinstance(value, str) else None


def dynamic_type(value: Any) -> dict | None:
    """The mapping dynamic mapping adds for a new field (OpenSearch: index/mapper/DocumentParser
    .createBuilderFromDynamicValue: strings -> text with a keyword subfield, ignore_above 256;
    integers -> long; decimals -> float; booleans -> boolean; objects -> object; arrays -> their
    first non-null element; null -> nothing). Date and numeric detection in strings are not
    modelled (tests/FAKE_OPENSEARCH.md)."""
    if isinstance(value, list):
        return next((t for t in (dynamic_type(v) for v in value) if t is not None), None)
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, dict):
        return {"properties": {}}
    return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


def check_document(props: dict, dynamic: str, doc: dict, doc_id: str | None, ignore_malformed: bool) -> dict:
    """Check `doc` against a mapping's properties; returns the fields dynamic mapping adds.
    Raises ApiError (mapper_parsing_exception, strict_dynamic_mapping_exception) when OpenSearch
    would refuse the document."""
    added: dict[str, Any] = {}
    for name, value in doc.items():
        prop = props.get(name)
        if prop is None:
            if dynamic == "strict":  # OpenSearch: StrictDynamicMappingException's message
                raise ApiError(400, "strict_dynamic_mapping_exception",
                               f"mapping set to strict, dynamic introduction of [{name}] within [_doc] is not allowed")
            if dynamic != "true":
                continue  # dynamic false: kept in _source, not indexed
            new = dynamic_type(value)
            if new is None:
                continue
            if "properties" in new:
                new["properties"] = check_document({}, "true", value, doc_id, ignore_malformed)
            added[name] = new
            continue
        _check_field(name, prop, value, doc_id, ignore_malformed, dynamic)
    return added


def _check_field(name: str, prop: dict, value: Any, doc_id: str | None, ignore_malformed: bool, dynamic: str) -> None:
    t = prop.get("type", "object")
    if value is None:
        return
    if t == "object":
        if not isinstance(value, dict):
            raise bad(f"object mapping for [{name}] tried to parse field [{name}] as object, but found a concrete "
                      "value", "mapper_parsing_exception")
        added = check_document(prop.get("properties", {}), str(prop.get("dynamic", dynamic)), value, doc_id,
                               ignore_malformed)
        prop.setdefault("properties", {}).update(added)
        return
    if t == "knn_vector":
        _check_vector(name, prop, value)
        return
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, list):  # arrays of arrays are flattened
            _check_field(name, prop, v, doc_id, ignore_malformed, dynamic)
            continue
        if isinstance(v, dict):  # an object in a leaf field fails the document, ignore_malformed or not
            raise _failed(name, t, doc_id, v)
        if t in NUMERIC:
            lenient = prop.get("ignore_malformed", ignore_malformed)
            if coerce_number(t, v, prop.get("coerce", True)) is None and not lenient:
                raise _failed(name, t, doc_id, v)
        elif t == "boolean" and parse_boolean(v) is None:
            raise _failed(name, t, doc_id, v)


def _check_vector(name: str, prop: dict, v: Any) -> None:
    # k-NN index/mapper/KNNVectorFieldMapper parsing: an array of numbers of the mapped dimension,
    # finite (index/KNNVectorUtil / SpaceType.validateVector), byte vectors in [-128, 127].
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise bad(f"failed to parse field [{name}] of type [knn_vector]", "mapper_parsing_exception")
    if len(v) != prop["dimension"]:
        raise bad(f"Vector dimension mismatch. Expected: {prop['dimension']}, Given: {len(v)}",
                  "mapper_parsing_exception")
    if not all(math.isfinite(x) for x in v):
        raise bad("KNN vector values cannot be NaN or Infinity", "mapper_parsing_exception")
    if prop.get("data_type") == "byte" and not all(float(x).is_integer() and -128 <= x <= 127 for x in v):
        raise bad(f"[{name}] byte vectors take integers in [-128, 127]", "mapper_parsing_exception")
