"""The fake OpenSearch's document writes: index/create/update/delete, one at a time (`/{index}/_doc`)
or in bulk, with the engine's rules (fake_opensearch_docs.py) and OpenSearch's response shapes.
Mixed into FakeOpenSearch (fake_opensearch.py)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fake_opensearch_docs import auto_id, check_document, check_id
from fake_opensearch_rules import ApiError, bad, no_index

if TYPE_CHECKING:
    from fake_opensearch import FakeIndex

SHARDS_OK = {"total": 1, "successful": 1, "failed": 0}
# Amazon OpenSearch Serverless: "Document ID is not supported in create/index operation request",
# a 400 illegal_argument_exception per bulk item (opensearch-project/opensearch-py issue 792,
# langchain-ai/langchainjs issue 4346), from "For time series and vector search collections, you
# can't index by custom document ID" (developer guide, "What is Amazon OpenSearch Serverless?").
AOSS_CUSTOM_ID = "Document ID is not supported in create/index operation request"


class WriteApi:
    """Needs FakeOpenSearch's `indices`, `aoss`, `allow_explicit_index`, `resolve`, `create_index`
    and `_take_fault`."""

    indices: dict
    aoss: bool
    allow_explicit_index: bool

    def _write_target(self, name: str, *, create: bool) -> FakeIndex:
        names = self.resolve(name, allow_missing=True)
        if not names:
            if not create or any(c in name for c in "*?,"):
                raise no_index(name)
            # action.auto_create_index defaults to true (OpenSearch: action/support/AutoCreateIndex);
            # spec tests/default/_core/bulk.yaml creates `movies` with a bulk request.
            self.create_index(name, {}, auto=True)
            names = [name]
        if len(names) > 1:
            raise bad(f"no write index is defined for alias [{name}]. The write index may be explicitly disabled "
                      "using is_write_index=false or the alias points to multiple indices without one being "
                      "designated as a write index")
        return self.indices[names[0]]

    def write(self, op: str, index_name: str, doc_id: str | None, doc: Any) -> dict:
        """One index/create/update/delete; the bulk item (status included) it answers."""
        out: dict[str, Any] = {"_index": index_name, "_id": doc_id}
        try:
            idx = self._write_target(index_name, create=op != "delete")
            out["_index"] = idx.name
            if op == "delete":
                existed = idx.docs.pop(doc_id, None) is not None
                if existed:
                    idx.versions[doc_id] += 1
                    idx.last_write, idx.dirty = time.monotonic(), True
                return {**out, "_version": idx.versions.get(doc_id, 1), "result": "deleted" if existed else "not_found",
                        "_shards": SHARDS_OK, "status": 200 if existed else 404}
            if self.aoss and doc_id is not None and op in ("index", "create"):
                raise bad(AOSS_CUSTOM_ID)
            if op == "update":
                doc = self._updated(idx, doc_id, doc)
            if isinstance(doc, Exception) or not isinstance(doc, dict):
                raise bad(f"failed to parse: {doc}", "mapper_parsing_exception")
            doc_id = doc_id if doc_id is not None else auto_id()
            out["_id"] = doc_id
            if op == "create" and doc_id in idx.docs:
                raise ApiError(409, "version_conflict_engine_exception", f"[{doc_id}]: version conflict, document already exists")
            added = check_document(idx.props, str(idx.mappings.get("dynamic", "true")).lower(), doc, doc_id,
                                   idx.settings.get("index.mapping.ignore_malformed") == "true")
            idx.props.update(added)
            existed = doc_id in idx.docs
            idx.docs[doc_id] = doc
            idx.versions[doc_id] = idx.versions.get(doc_id, 0) + 1
            idx.last_write, idx.dirty = time.monotonic(), True
            return {**out, "_version": idx.versions[doc_id], "result": "updated" if existed else "created",
                    "_shards": SHARDS_OK, "status": 200 if existed else 201}
        except ApiError as e:
            return {**out, "status": e.status, "error": {"type": e.type, "reason": e.reason}}

    @staticmethod
    def _updated(idx: FakeIndex, doc_id: str | None, spec: Any) -> dict:
        """A partial update ({"doc": ...}); scripts are not modelled."""
        if not isinstance(spec, dict) or "doc" not in spec or set(spec) - {"doc", "_source", "doc_as_upsert"}:
            raise bad("the fake models partial updates ({\"doc\": ...}) only, not scripts or upserts")
        if doc_id not in idx.docs:
            raise ApiError(404, "document_missing_exception", f"[{doc_id}]: document missing")
        return {**idx.docs[doc_id], **spec["doc"]}

    def document(self, method: str, target: str, op: str, doc_id: str | None, body: bytes,
                 query: dict) -> tuple[int, Any]:
        problem = check_id(doc_id)
        if problem:
            raise bad(f"Validation Failed: 1: {problem};", "action_request_validation_exception")
        if method in ("GET", "HEAD") and op == "_doc" and doc_id is not None:
            idx = self._write_target(target, create=False)
            src = idx.docs.get(doc_id)  # GET by id is real-time
            if src is None:
                return 404, None if method == "HEAD" else {"_index": idx.name, "_id": doc_id, "found": False}
            return 200, None if method == "HEAD" else {"_index": idx.name, "_id": doc_id,
                                                      "_version": idx.versions[doc_id], "found": True, "_source": src}
        if method == "DELETE" and op == "_doc" and doc_id is not None:
            item = self.write("delete", target, doc_id, None)
        elif method in ("PUT", "POST") and (doc_id is not None or (op == "_doc" and method == "POST")):
            item = self.write("create" if op == "_create" else "index", target, doc_id, _json(body))
        else:
            raise bad(f"no handler found for uri [/{target}/{op}] and method [{method}]")
        if "error" in item:
            raise ApiError(item["status"], item["error"]["type"], item["error"]["reason"])
        if query.get("refresh") in ("true", "", "wait_for"):
            self.indices[item["_index"]].refresh()
        return item.pop("status"), item

    def bulk(self, path_index: str | None, body: bytes, headers, query: dict) -> tuple[int, Any]:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        # 406 "Content-Type header [..] is not supported" for a type the bulk handler cannot parse,
        # as clients report it; the exact shape of that error body is not verified (JSON and
        # NDJSON taken here; SMILE/CBOR are not modelled).
        if ctype not in ("application/json", "application/x-ndjson"):
            raise ApiError(406, "content_type_header_exception", f"Content-Type header [{ctype}] is not supported")
        parsed = self._parse_bulk(path_index, body)
        fault = self._take_fault("POST", "/_bulk", ("items",))
        items = []
        for n, (op, meta, doc) in enumerate(parsed):
            index_name = meta.get("_index") or path_index
            if fault is not None and n % fault.every == 0:
                # OpenSearchRejectedExecutionException, named by OpenSearchException.getExceptionName
                # (the "OpenSearch" prefix dropped, underscore case)
                items.append({op: {"_index": index_name, "_id": meta.get("_id"), "status": fault.status,
                                   "error": {"type": "rejected_execution_exception" if fault.status == 429
                                             else "unavailable_shards_exception",
                                             "reason": "rejected execution (fake fault)"}}})
                continue
            items.append({op: self.write(op, index_name, meta.get("_id"), doc)})
        if query.get("refresh") in ("true", "", "wait_for"):
            for item in items:
                name = next(iter(item.values()))["_index"]
                if name in self.indices:
                    self.indices[name].refresh()
        # A failed item carries "error"; a delete of a missing document is a 404 without one and
        # leaves errors false (spec tests/default/_core/bulk.yaml, "Delete document in an index").
        errors = any("error" in next(iter(it.values())) for it in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    def _parse_bulk(self, path_index: str | None, body: bytes) -> list[tuple[str, dict, Any]]:
        """The bulk body's actions, or the 400 that refuses the whole request (OpenSearch:
        action/bulk/BulkRequestParser, BulkRequest.validate)."""
        if not body:
            raise bad("Validation Failed: 1: no requests added;", "action_request_validation_exception")
        if not body.endswith(b"\n"):
            raise bad("The bulk request must be terminated by a newline [\\n]")
        lines = body.decode("utf-8").split("\n")[:-1]
        parsed: list[tuple[str, dict, Any]] = []
        i = 0
        while i < len(lines):
            try:
                action = json.loads(lines[i])
            except json.JSONDecodeError:
                raise bad(f"Malformed action/metadata line [{i + 1}], expected START_OBJECT but found [VALUE_STRING]")
            if not isinstance(action, dict) or len(action) != 1:
                raise bad(f"Malformed action/metadata line [{i + 1}], expected FIELD_NAME but found [END_OBJECT]")
            (op, meta), = action.items()
            if op not in ("index", "create", "delete", "update"):
                raise bad(f"Malformed action/metadata line [{i + 1}], expected one of [create, delete, index, update] "
                          f"but found [{op}]")
            extra = set(meta) - {"_index", "_id", "routing", "version", "version_type", "if_seq_no", "if_primary_term",
                                 "pipeline", "require_alias", "retry_on_conflict"}
            if extra:
                raise bad(f"Action/metadata line [{i + 1}] contains an unknown parameter [{sorted(extra)[0]}]")
            if "_index" in meta and not self.allow_explicit_index:
                raise bad("explicit index in bulk is not allowed")
            if not meta.get("_index") and not path_index:
                raise bad("Validation Failed: 1: index is missing;", "action_request_validation_exception")
            if op == "delete" and meta.get("_id") is None:
                raise bad("Validation Failed: 1: id is missing;", "action_request_validation_exception")
            doc: Any = None
            if op != "delete":
                i += 1
                if i >= len(lines):
                    raise bad("Validation Failed: 1: source is missing;", "action_request_validation_exception")
                try:
                    doc = json.loads(lines[i])
                except json.JSONDecodeError as exc:
                    doc = exc
            parsed.append((op, meta, doc))
            i += 1
        problems = [p for p in (check_id(meta.get("_id")) for _, meta, _ in parsed) if p]
        if problems:
            raise bad("Validation Failed: " + "".join(f"{n + 1}: {p};" for n, p in enumerate(problems)),
                      "action_request_validation_exception")
        return parsed


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"Failed to parse request body: {exc}", "parse_exception") from None
