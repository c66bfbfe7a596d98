"""A strict fake OpenSearch (3.x with the k-NN plugin) over real HTTP on 127.0.0.1.

Only the endpoints clipsearch uses, each checking its request against the documented API and
answering in OpenSearch's shapes (errors as `{"error": {"root_cause", "type", "reason"}, "status"}`):

    GET /                          PUT|DELETE|HEAD /{index}          GET /{target}/_mapping
    GET|PUT /{target}/_settings    POST /_aliases, GET /_alias/{n}  POST [/{index}]/_bulk
    GET /{index}/_doc/{id}         GET|POST /{target}/_count         GET|POST /{target}/_search
    POST /{target}/_refresh        POST /{target}/_forcemerge

Strictness: settings OpenSearch 3.0 removed (`index.knn.space_type`, `index.knn.algo_param.m`,
...) and unknown ones are refused; so are the nmslib engine, unknown mapping parameters, bulk
bodies without the final newline or with malformed action lines, vectors of the wrong dimension,
knn queries without `vector` or `k`, and unknown query keys. Search sees only refreshed documents
(`_refresh`, or `refresh_interval` elapsed), GET by id is real-time, as in OpenSearch. knn queries
are answered by exact search with the engine's innerproduct score (`1 + ip` or `1 / (1 - ip)`),
the `filter` applied before the top k is taken (efficient filtering).

Faults on demand: `fail(status)`, `drop()` (close the connection with no answer, before or after
applying the request), `delay(seconds)`, `reject_items(status)` (partial bulk failures).
Auth on demand: basic, or SigV4 with the signature recomputed from registered secrets.

What a cluster accepts is in fake_opensearch_rules.py, the query evaluation in
fake_opensearch_query.py; this module is the server, its state and the faults.

Not modelled: shards (one per index), scoring of text queries, index auto-creation by bulk (the
fake answers 404 for a bulk item naming a missing index, as with `action.auto_create_index: false`).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from fake_opensearch_query import Searcher, _filter_source
from fake_opensearch_rules import (STATIC_SETTINGS, URL_PARAMS, ApiError, _check_setting, _flat_settings, _seconds,
                                   bad, check_index_name, check_mappings, no_index)

__all__ = ["FakeOpenSearch", "ApiError", "check_index_name"]


@dataclass
class Fault:
    kind: str  # "status" | "drop" | "drop_after" | "delay" | "items"
    times: int
    match: Callable[[str, str], bool]
    status: int = 503
    seconds: float = 0.0
    every: int = 2


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeIndex:
    name: str
    settings: dict[str, Any]  # flat "index.*" keys, values as given (strings on the way out)
    mappings: dict[str, Any]
    docs: dict[str, dict] = field(default_factory=dict)  # real-time
    visible: dict[str, dict] = field(default_factory=dict)  # as of the last refresh
    versions: dict[str, int] = field(default_factory=dict)
    last_write: float = 0.0
    dirty: bool = False
    refreshes: int = 0
    force_merges: int = 0

    @property
    def props(self) -> dict:
        return self.mappings.get("properties", {})

    def vector_fields(self) -> dict[str, dict]:
        return {n: p for n, p in self.props.items() if p.get("type") == "knn_vector"}

    def maybe_auto_refresh(self) -> None:
        interval = _seconds(self.settings.get("index.refresh_interval", "1s"))
        if self.dirty and interval >= 0 and time.monotonic() - self.last_write >= interval:
            self.refresh()

    def refresh(self) -> None:
        self.visible = {k: v for k, v in self.docs.items()}
        self.dirty = False
        self.refreshes += 1


class FakeOpenSearch:
    def __init__(self, *, basic_auth: tuple[str, str] | None = None, sigv4: tuple[str, str] | None = None,
                 version: str = "3.1.0"):
        self.indices: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.basic_auth = basic_auth
        self.sigv4 = sigv4  # (region, service)
        self.secrets: dict[str, tuple[str, str | None]] = {}  # access key -> (secret, token)
        self.signed_with: list[str] = []
        self.version = version
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "FakeOpenSearch":
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-opensearch",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenSearch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults ----------------------------------------------------------------------------
    @staticmethod
    def _matcher(path: str | None, method: str | None) -> Callable[[str, str], bool]:
        return lambda m, p: (path is None or path in p) and (method is None or m == method)

    def fail(self, status: int = 503, times: int = 1, path: str | None = None, method: str | None = None) -> None:
        """Answer the next `times` matching requests with `status` and an OpenSearch error body."""
        self.faults.append(Fault("status", times, self._matcher(path, method), status=status))

    def drop(self, times: int = 1, path: str | None = None, after: bool = False, method: str | None = None) -> None:
        """Close the connection without an answer; `after=True` applies the request first."""
        self.faults.append(Fault("drop_after" if after else "drop", times, self._matcher(path, method)))

    def delay(self, seconds: float, times: int = 1, path: str | None = None) -> None:
        self.faults.append(Fault("delay", times, self._matcher(path, None), seconds=seconds))

    def reject_items(self, status: int = 429, times: int = 1, every: int = 2) -> None:
        """In the next `times` bulk requests, reject every `every`-th item (not applied)."""
        self.faults.append(Fault("items", times, self._matcher("_bulk", None), status=status, every=every))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, method: str, path: str, kinds: tuple[str, ...]) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.kind in kinds and f.times > 0 and f.match(method, path):
                    f.times -= 1
                    return f
        return None

    # -- helpers for tests -----------------------------------------------------------------
    def add_credentials(self, access_key: str, secret: str, token: str | None = None) -> None:
        self.secrets[access_key] = (secret, token)

    def resolve(self, target: str, *, allow_missing: bool = False) -> list[str]:
        names: list[str] = []
        for part in target.split(","):
            if any(c in part for c in "*?"):
                names += [n for n in self.indices if fnmatch.fnmatchcase(n, part)]
                names += [i for a, idx in self.aliases.items() if fnmatch.fnmatchcase(a, part) for i in idx]
            elif part in self.indices:
                names.append(part)
            elif part in self.aliases and self.aliases[part]:
                names += sorted(self.aliases[part])
            elif not allow_missing:
                raise no_index(part)
        return list(dict.fromkeys(names))

    def aliases_of(self, index: str) -> list[str]:
        return sorted(a for a, idx in self.aliases.items() if index in idx)

    def doc_count(self, index: str) -> int:
        return len(self.indices[index].docs)

    # -- the API ---------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers) -> tuple[int, Any]:
        unknown = sorted(set(query) - URL_PARAMS)
        if unknown:  # e.g. a client option leaking into the URL
            raise bad(f"request [{path}] contains unrecognized parameter: [{unknown[0]}]")
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        with self.lock:
            if not parts:
                return 200, {"name": "fake", "cluster_name": "fake", "version": {"distribution": "opensearch",
                                                                               "number": self.version}}
            if parts == ["_aliases"] and method == "POST":
                return self.update_aliases(_json(body))
            if parts[0] == "_alias" and len(parts) == 2 and method == "GET":
                idx = self.aliases.get(parts[1])
                if not idx:
                    return 404, {"error": f"alias [{parts[1]}] missing", "status": 404}
                return 200, {i: {"aliases": {parts[1]: {}}} for i in sorted(idx)}
            if parts == ["_bulk"] and method in ("POST", "PUT"):
                return self.bulk(None, body, headers)
            if len(parts) == 1 and not parts[0].startswith("_"):
                if method == "PUT":
                    return self.create_index(parts[0], _json(body) if body else {})
                if method == "DELETE":
                    for n in self.resolve(parts[0]):
                        del self.indices[n]
                        for idx in self.aliases.values():
                            idx.discard(n)
                    return 200, {"acknowledged": True}
                if method == "HEAD":
                    return (200 if self.resolve(parts[0], allow_missing=True) else 404), None
            if len(parts) == 2:
                target, op = parts
                if op == "_mapping" and method == "GET":
                    names = self.resolve(target, allow_missing=any(c in target for c in "*?"))
                    return 200, {n: {"mappings": self.indices[n].mappings} for n in names}
                if op == "_settings":
                    return self.settings(target, method, query, body)
                if op == "_bulk" and method in ("POST", "PUT"):
                    return self.bulk(target, body, headers)
                if op == "_refresh" and method in ("POST", "GET"):
                    for n in self.resolve(target):
                        self.indices[n].refresh()
                    return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
                if op == "_forcemerge" and method == "POST":
                    for n in self.resolve(target):
                        self.indices[n].force_merges += 1
                    return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
                if op == "_count" and method in ("GET", "POST"):
                    return self.count(target, _json(body) if body else {})
                if op == "_search" and method in ("GET", "POST"):
                    return self.search(target, _json(body) if body else {})
            if len(parts) == 3 and parts[1] == "_doc" and method == "GET":
                return self.get_doc(parts[0], parts[2])
        raise bad(f"no handler found for uri [{path}] and method [{method}]")

    def create_index(self, name: str, body: dict) -> tuple[int, Any]:
        check_index_name(name)
        if name in self.indices or name in self.aliases:
            raise bad(f"index [{name}] already exists", "resource_already_exists_exception")
        extra = set(body) - {"settings", "mappings", "aliases"}
        if extra:
            raise bad(f"unknown key [{sorted(extra)[0]}] for create index", "parse_exception")
        settings = {k: _check_setting(k, v) for k, v in _flat_settings(body.get("settings", {})).items()}
        mappings = check_mappings(body.get("mappings", {}))
        if any(p.get("type") == "knn_vector" and "method" in p for p in mappings.get("properties", {}).values()) \
                and settings.get("index.knn") != "true":
            # OpenSearch accepts this but never builds the graphs; clipsearch must not do it.
            raise bad("a knn_vector method needs index.knn: true for approximate search")
        self.indices[name] = FakeIndex(name, settings, json.loads(json.dumps(mappings)))
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def settings(self, target: str, method: str, query: dict, body: bytes) -> tuple[int, Any]:
        names = self.resolve(target)
        if method == "GET":
            out = {}
            for n in names:
                flat = {k: v for k, v in self.indices[n].settings.items() if v is not None}
                flat.setdefault("index.number_of_shards", "1")
                flat.setdefault("index.number_of_replicas", "1")
                if query.get("flat_settings") == "true":
                    out[n] = {"settings": flat}
                else:
                    nested: dict = {}
                    for k, v in flat.items():
                        node = nested
                        *head, last = k.split(".")
                        for h in head:
                            node = node.setdefault(h, {})
                        node[last] = v
                    out[n] = {"settings": nested}
            return 200, out
        if method != "PUT":
            raise bad(f"no handler found for uri [/{target}/_settings] and method [{method}]")
        flat = _flat_settings(_json(body))
        for k, v in flat.items():
            if k in STATIC_SETTINGS:
                raise bad(f"Can't update non dynamic settings [[{k}]] for open indices")
            _check_setting(k, v)
        for n in names:
            for k, v in flat.items():
                if v is None:
                    self.indices[n].settings.pop(k, None)
                else:
                    self.indices[n].settings[k] = _check_setting(k, v)
        return 200, {"acknowledged": True}

    def update_aliases(self, body: dict) -> tuple[int, Any]:
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions or set(body) != {"actions"}:
            raise bad("Validation Failed: 1: no actions specified;", "action_request_validation_exception")
        plan = []
        for a in actions:
            if not isinstance(a, dict) or len(a) != 1:
                raise bad("[aliases] action malformed", "parsing_exception")
            (op, spec), = a.items()
            if op not in ("add", "remove", "remove_index"):
                raise bad(f"[aliases] unknown field [{op}]", "parsing_exception")
            extra = set(spec) - {"index", "indices", "alias", "aliases", "is_write_index", "must_exist"}
            if extra:
                raise bad(f"[{op}] unknown field [{sorted(extra)[0]}]", "parsing_exception")
            indices = spec.get("indices") or [spec.get("index")]
            aliases = spec.get("aliases") or [spec.get("alias")]
            for i in indices:
                if i not in self.indices:
                    raise no_index(str(i))
                for al in (aliases if op != "remove_index" else [None]):
                    if op != "remove_index" and not al:
                        raise bad("Validation Failed: 1: [alias] is required", "action_request_validation_exception")
                    if op == "add" and al in self.indices:
                        raise bad(f"Invalid alias name [{al}]: an index or data stream exists with the same name "
                                  "as the alias", "invalid_alias_name_exception")
                    if op == "remove" and i not in self.aliases.get(al, set()):
                        raise ApiError(404, "aliases_not_found_exception", f"aliases [{al}] missing")
                    plan.append((op, i, al))
        for op, i, al in plan:  # all checked: apply together, like OpenSearch's atomic update
            if op == "add":
                self.aliases.setdefault(al, set()).add(i)
            elif op == "remove":
                self.aliases[al].discard(i)
            else:
                del self.indices[i]
                for idx in self.aliases.values():
                    idx.discard(i)
        self.aliases = {a: idx for a, idx in self.aliases.items() if idx}
        return 200, {"acknowledged": True}

    def _write_target(self, name: str) -> FakeIndex:
        names = self.resolve(name, allow_missing=True)
        if not names:
            raise no_index(name)
        if len(names) > 1:
            raise bad(f"no write index is defined for alias [{name}]")
        return self.indices[names[0]]

    def bulk(self, path_index: str | None, body: bytes, headers) -> tuple[int, Any]:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("application/json", "application/x-ndjson"):
            raise ApiError(406, "content_type_header_exception", f"Content-Type header [{ctype}] is not supported")
        if not body:
            raise bad("Validation Failed: 1: no requests added;", "action_request_validation_exception")
        if not body.endswith(b"\n"):
            raise bad("The bulk request must be terminated by a newline [\\n]")
        lines = body.decode("utf-8").split("\n")[:-1]
        items, i = [], 0
        parsed: list[tuple[str, dict, Any]] = []
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
                                 "pipeline", "require_alias"}
            if extra:
                raise bad(f"Action/metadata line [{i + 1}] contains an unknown parameter [{sorted(extra)[0]}]")
            if not meta.get("_index") and not path_index:
                raise bad("Validation Failed: 1: index is missing;", "action_request_validation_exception")
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
        fault = self._take_fault("POST", "/_bulk", ("items",))
        for n, (op, meta, doc) in enumerate(parsed):
            index_name = meta.get("_index") or path_index
            if fault is not None and n % fault.every == 0:
                items.append({op: {"_index": index_name, "_id": meta.get("_id"), "status": fault.status,
                                   "error": {"type": "es_rejected_execution_exception" if fault.status == 429
                                             else "unavailable_shards_exception",
                                             "reason": "rejected execution (fake fault)"}}})
                continue
            items.append({op: self._bulk_item(op, index_name, meta.get("_id"), doc)})
        errors = any(next(iter(it.values())).get("status", 200) >= 300 for it in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    def _bulk_item(self, op: str, index_name: str, doc_id: str | None, doc: Any) -> dict:
        out: dict[str, Any] = {"_index": index_name, "_id": doc_id}
        try:
            idx = self._write_target(index_name)
            out["_index"] = idx.name
            if op == "update":
                raise bad("update is not supported by this fake")
            if op == "delete":
                existed = idx.docs.pop(doc_id, None) is not None
                idx.last_write, idx.dirty = time.monotonic(), True
                return {**out, "result": "deleted" if existed else "not_found", "status": 200 if existed else 404}
            if isinstance(doc, Exception) or not isinstance(doc, dict):
                raise bad(f"failed to parse: {doc}", "mapper_parsing_exception")
            if doc_id is None:
                raise bad("the fake needs explicit _id values")
            self._check_doc(idx, doc)
            if op == "create" and doc_id in idx.docs:
                raise ApiError(409, "version_conflict_engine_exception", f"[{doc_id}]: document already exists")
            existed = doc_id in idx.docs
            idx.docs[doc_id] = doc
            idx.versions[doc_id] = idx.versions.get(doc_id, 0) + 1
            idx.last_write, idx.dirty = time.monotonic(), True
            return {**out, "_version": idx.versions[doc_id], "result": "updated" if existed else "created",
                    "status": 200 if existed else 201}
        except ApiError as e:
            return {**out, "status": e.status, "error": {"type": e.type, "reason": e.reason}}

    @staticmethod
    def _check_doc(idx: FakeIndex, doc: dict) -> None:
        ignore = idx.settings.get("index.mapping.ignore_malformed") == "true"
        for name, prop in idx.props.items():
            if name not in doc or doc[name] is None:
                continue
            v, t = doc[name], prop["type"]
            if t == "knn_vector":
                if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                    raise bad(f"failed to parse field [{name}] of type [knn_vector]", "mapper_parsing_exception")
                if len(v) != prop["dimension"]:
                    raise bad(f"Vector dimension mismatch. Expected: {prop['dimension']}, Given: {len(v)}",
                              "mapper_parsing_exception")
                if prop.get("data_type") == "byte" and not all(float(x).is_integer() and -128 <= x <= 127 for x in v):
                    raise bad(f"[{name}] byte vectors take integers in [-128, 127]", "mapper_parsing_exception")
                if not all(math.isfinite(x) for x in v):
                    raise bad("KNN vector values cannot be NaN or Infinity", "mapper_parsing_exception")
            elif t in ("integer", "float", "boolean") and Searcher._typed(prop, v) is None \
                    and (t == "boolean" or not ignore):  # booleans have no ignore_malformed
                raise bad(f"failed to parse field [{name}] of type [{t}]", "mapper_parsing_exception")

    def get_doc(self, target: str, doc_id: str) -> tuple[int, Any]:
        idx = self._write_target(target)
        src = idx.docs.get(doc_id)
        if src is None:
            return 404, {"_index": idx.name, "_id": doc_id, "found": False}
        return 200, {"_index": idx.name, "_id": doc_id, "_version": idx.versions[doc_id], "found": True, "_source": src}

    def _visible(self, target: str) -> list[FakeIndex]:
        out = [self.indices[n] for n in self.resolve(target)]
        for idx in out:
            idx.maybe_auto_refresh()
        return out

    def count(self, target: str, body: dict) -> tuple[int, Any]:
        if set(body) - {"query"}:
            raise bad(f"request does not support [{sorted(set(body) - {'query'})[0]}]", "parsing_exception")
        q = body.get("query", {"match_all": {}})
        for idx in self._visible(target):
            Searcher(idx).validate(q)
        n = sum(1 for idx in self._visible(target) for i, s in idx.visible.items() if Searcher(idx).matches(q, s, i))
        return 200, {"count": n, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    def search(self, target: str, body: dict) -> tuple[int, Any]:
        extra = set(body) - {"query", "size", "from", "_source", "min_score", "sort", "search_after", "track_total_hits"}
        if extra:
            raise bad(f"Unknown key for a START_OBJECT in [{sorted(extra)[0]}].", "parsing_exception")
        size, frm = body.get("size", 10), body.get("from", 0)
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
        sort = body.get("sort")
        sort_values: dict[str, list] = {}
        if sort:
            (fname, order), = (sort[0].items() if isinstance(sort[0], dict) else [(sort[0], "asc")])
            order = order if isinstance(order, str) else order.get("order", "asc")
            for idx in {h[2].name: h[2] for h in hits}.values():
                if idx.props.get(fname, {}).get("type") != "keyword":
                    raise bad(f"No mapping found for [{fname}] in order to sort on", "query_shard_exception")
            hits.sort(key=lambda h: str(h[2].visible[h[1]].get(fname, "")), reverse=order == "desc")
            for h in hits:
                sort_values[h[1]] = [h[2].visible[h[1]].get(fname)]
            if "search_after" in body:
                after = str(body["search_after"][0])
                hits = [h for h in hits if (str(sort_values[h[1]][0]) > after if order == "asc"
                                            else str(sort_values[h[1]][0]) < after)]
        elif "search_after" in body:
            raise bad("Sort must contain at least one field.", "search_phase_execution_exception")
        else:
            hits.sort(key=lambda h: -h[0])
        total = len(hits)
        hits = hits[frm:frm + size]
        out = []
        for score, doc_id, idx in hits:
            hit: dict[str, Any] = {"_index": idx.name, "_id": doc_id, "_score": None if sort else score}
            src = _filter_source(idx.visible[doc_id], body.get("_source", True))
            if src is not None:
                hit["_source"] = src
            if sort:
                hit["sort"] = sort_values[doc_id]
            out.append(hit)
        return 200, {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                     "hits": {"total": {"value": total, "relation": "eq"},
                              "max_score": max((h[0] for h in hits), default=None) if not sort else None, "hits": out}}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"Failed to parse request body: {exc}", "parse_exception") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeOpenSearch

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle and delayed ACKs
        # add 40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # quiet
        pass

    def _do(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        fake.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
        fault = fake._take_fault(self.command, split.path, ("status", "drop", "drop_after", "delay"))
        if fault is not None and fault.kind == "drop":
            self._drop()
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            err = ApiError(fault.status, "es_rejected_execution_exception" if fault.status == 429 else "fake_fault",
                           f"injected HTTP {fault.status}")
            self._send(fault.status, err.body())
            return
        denied = self._auth(body)
        if denied is not None:
            self._send(*denied)
            return
        try:
            status, payload = fake.handle(self.command, split.path, query, body, self.headers)
        except ApiError as e:
            status, payload = e.status, e.body()
        if fault is not None and fault.kind == "drop_after":
            self._drop()
            return
        self._send(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _do

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _auth(self, body: bytes) -> tuple[int, dict] | None:
        fake = self.server_fake
        if fake.basic_auth is not None:
            want = "Basic " + base64.b64encode(":".join(fake.basic_auth).encode()).decode()
            if self.headers.get("Authorization") != want:
                return 401, ApiError(401, "security_exception", "Unauthorized").body()
        if fake.sigv4 is not None:
            reason = _check_sigv4(self, body, *fake.sigv4)
            if reason is not None:
                return 403, {"message": reason}
        return None


def _check_sigv4(handler: _Handler, body: bytes, region: str, service: str) -> str | None:
    """Recompute the SigV4 signature from the registered secret; None when it is right."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    fake = handler.server_fake
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                     r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})", handler.headers.get("Authorization", ""))
    if not m:
        return "Authorization header requires SigV4 (AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...)"
    access_key, day, reg, svc, signed, signature = m.groups()
    if (reg, svc) != (region, service):
        return f"Credential should be scoped to region {region!r} and service {service!r}, not {reg!r}/{svc!r}"
    if access_key not in fake.secrets:
        return "The security token included in the request is invalid."
    secret, token = fake.secrets[access_key]
    if token is not None and handler.headers.get("X-Amz-Security-Token") != token:
        return "The security token included in the request is invalid."
    if handler.headers.get("X-Amz-Content-SHA256") != hashlib.sha256(body).hexdigest():
        return "The request's X-Amz-Content-SHA256 does not match its body"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    headers = {n: handler.headers.get(n, "") for n in names}
    req = AWSRequest(method=handler.command, url=f"http://{headers['host']}{handler.path}", data=body, headers=headers)
    req.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(access_key, secret, token), service, region)
    expected = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    if expected != signature:
        return "The request signature we calculated does not match the signature you provided."
    fake.signed_with.append(access_key)
    return None
