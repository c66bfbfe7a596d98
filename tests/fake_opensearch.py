"""A strict fake OpenSearch (2.19 or 3.x with the k-NN plugin, or an Amazon OpenSearch Serverless
vector collection) over real HTTP on 127.0.0.1.

Only the endpoints clipsearch uses, and those of the API-specification stories that
tests/test_fake_opensearch_engine.py follows, each checking its request as the engine does and
answering in OpenSearch's shapes (errors as `{"error": {"root_cause", "type", "reason"},
"status"}`). tests/FAKE_OPENSEARCH.md lists what is modelled, with sources, and what is not; the
rules live in fake_opensearch_rules.py (settings, mappings, names), fake_opensearch_docs.py
(documents), fake_opensearch_query.py (queries) and fake_opensearch_aliases.py (aliases);
fake_opensearch_write.py and fake_opensearch_search.py are the document and search endpoints. This
module is the server, its state, the routing and the faults.

    GET|HEAD /                      PUT|GET|DELETE|HEAD /{index}     GET|PUT /{index}/_mapping
    GET|PUT /{index}/_settings      POST /_aliases, /{index}/_alias/{name} and the other alias forms
    POST [/{index}]/_bulk           POST /{index}/_doc, PUT|GET|HEAD|DELETE /{index}/_doc/{id}
    GET|POST [/{index}]/_count      GET|POST /{index}/_search        POST /{index}/_refresh
    POST [/{index}]/_forcemerge     GET /{index}/_stats[/{metric}]   GET /_cluster/health/{index}
    GET /_plugins/_knn/warmup/{index}

`service="aoss"` makes it a Serverless vector collection: ids are assigned (a caller's `_id` is
refused), writes become searchable only after `refresh_seconds`, and the endpoints Serverless
lacks (refresh, force merge, settings updates, stats, warmup, `GET /`) answer 404.

Faults on demand: `fail(status)`, `drop()` (close the connection with no answer, before or after
applying the request), `delay(seconds)`, `reject_items(status)` (partial bulk failures).
Auth on demand: basic, or SigV4 with the signature recomputed from registered secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from fake_opensearch_aliases import AliasApi
from fake_opensearch_rules import (DEFAULT_SETTINGS, STATIC_SETTINGS, URL_PARAMS, ApiError, _seconds, bad,
                                   check_dynamic, check_index_name, check_mappings, check_properties, check_setting,
                                   flat_settings, no_index)
from fake_opensearch_search import SearchApi
from fake_opensearch_write import SHARDS_OK, WriteApi, _json

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
    warmups: int = 0
    segments: int = 0  # searchable segments: each refresh that publishes writes adds one
    merge_due: tuple[float, int] | None = None  # (when, max_num_segments) of a merge under way

    @property
    def props(self) -> dict:
        return self.mappings.setdefault("properties", {})

    def maybe_auto_refresh(self, interval: float) -> None:
        # OpenSearch refreshes every refresh_interval (default 1s; -1 disables it). The fake
        # publishes writes once `interval` has passed since the last one: the latest a periodic
        # refresh would, so documents are never visible earlier than on a real cluster.
        if self.dirty and interval >= 0 and time.monotonic() - self.last_write >= interval:
            self.refresh()

    def refresh(self) -> None:
        if self.dirty:
            self.segments += 1
        self.visible = {k: v for k, v in self.docs.items()}
        self.dirty = False
        self.refreshes += 1

    def segment_count(self) -> int:
        if self.merge_due is not None and time.monotonic() >= self.merge_due[0]:
            self.segments = min(self.segments, self.merge_due[1])
            self.merge_due = None
        return self.segments


class FakeOpenSearch(AliasApi, WriteApi, SearchApi):
    def __init__(self, *, basic_auth: tuple[str, str] | None = None, sigv4: tuple[str, str] | None = None,
                 version: str = "3.1.0", service: str = "es", allow_explicit_index: bool = True,
                 refresh_seconds: float = 1.0, merge_seconds: float = 0.0):
        self.indices: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.alias_options: dict[tuple[str, str], dict] = {}
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.basic_auth = basic_auth
        self.sigv4 = sigv4  # (region, service)
        self.secrets: dict[str, tuple[str, str | None]] = {}  # access key -> (secret, token)
        self.signed_with: list[str] = []
        self.version, self.service = version, service
        # The domain's advanced option rest.action.multi.allow_explicit_index (developer guide,
        # "Advanced options and API considerations"); false: a bulk body naming an index is
        # refused with "explicit index in bulk is not allowed" (OpenSearch: action/bulk/BulkRequestParser).
        self.allow_explicit_index = allow_explicit_index
        # Serverless refreshes on its own, every 10-60 s ("What is Amazon OpenSearch Serverless?",
        # Limitations; 60 s on vector collections per "Working with vector search collections").
        self.refresh_seconds = refresh_seconds
        self.merge_seconds = merge_seconds  # how long a force merge takes
        self._tasks = 0
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

    @property
    def aoss(self) -> bool:
        return self.service == "aoss"

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
            if part in ("_all", "*"):
                names += list(self.indices)
            elif any(c in part for c in "*?"):
                names += [n for n in self.indices if _glob(n, part)]
                names += [i for a, idx in self.aliases.items() if _glob(a, part) for i in idx]
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

    def drop_index(self, name: str) -> None:
        del self.indices[name]
        for idx in self.aliases.values():
            idx.discard(name)
        self.aliases = {a: idx for a, idx in self.aliases.items() if idx}

    def _interval(self, idx: FakeIndex) -> float:
        return self.refresh_seconds if self.aoss else _seconds(idx.settings.get("index.refresh_interval", "1s"))

    # -- routing ---------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers) -> tuple[int, Any]:
        unknown = sorted(set(query) - URL_PARAMS)
        if unknown:  # e.g. a client option leaking into the URL
            raise bad(f"request [{path}] contains unrecognized parameter: [{unknown[0]}]")
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        if self.aoss:
            self._serverless_check(method, parts, query)
        if parts[-1:] == ["_forcemerge"] and method == "POST":  # may block: takes the lock itself
            return self.forcemerge(parts[0] if len(parts) == 2 else "_all", query)
        with self.lock:
            return self._route(method, parts, query, body, headers)

    def _serverless_check(self, method: str, parts: list[str], query: dict) -> None:
        """What a Serverless vector collection does not offer answers 404 (tests/FAKE_OPENSEARCH.md)."""
        op = next((p for p in parts if p.startswith("_")), "")
        missing = (not parts and method == "GET"  # spec: info.0 is x-distributions-excluded amazon-serverless
                   or op == "_refresh"  # 404 on a live collection (apache/flink-agents pull request 678)
                   or op in ("_forcemerge", "_stats", "_plugins", "_cluster")  # warmup/stats: "don't support"
                   or (op == "_settings" and method != "GET"))  # (the others: not known to be offered)
        if missing:
            raise ApiError(404, "not_found", f"{method} /{'/'.join(parts)} is not offered by OpenSearch Serverless")
        if query.get("refresh") not in (None, "false"):
            raise bad("the refresh parameter is not modelled for OpenSearch Serverless (it refreshes on its own)")

    def _route(self, method: str, parts: list[str], query: dict, body: bytes, headers) -> tuple[int, Any]:
        if not parts:
            if method == "HEAD":
                return 200, None
            return 200, {"name": "fake", "cluster_name": "fake",
                         "version": {"distribution": "opensearch", "number": self.version}}
        head = parts[0]
        if head in ("_alias", "_aliases") or (len(parts) >= 2 and parts[1] in ("_alias", "_aliases")):
            return self.alias_request(method, parts, _json(body) if body else {})
        if parts == ["_bulk"] and method in ("POST", "PUT"):
            return self.bulk(None, body, headers, query)
        if parts == ["_count"] and method in ("GET", "POST"):
            return self.count("_all", _json(body) if body else {})
        if parts[:2] == ["_cluster", "health"] and len(parts) == 3 and method == "GET":
            return self.health(parts[2], query)
        if parts[:3] == ["_plugins", "_knn", "warmup"] and len(parts) == 4 and method == "GET":
            return self.warmup(parts[3])
        if head.startswith("_"):
            raise bad(f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]")
        if len(parts) == 1:
            return self._index_request(method, head, body)
        return self._index_subrequest(method, parts, query, body, headers)

    def _index_request(self, method: str, name: str, body: bytes) -> tuple[int, Any]:
        if method == "PUT":
            return self.create_index(name, _json(body) if body else {})
        if method == "DELETE":
            for n in self.resolve(name):
                self.drop_index(n)
            return 200, {"acknowledged": True}
        if method == "HEAD":
            return (200 if self.resolve(name, allow_missing=True) else 404), None
        if method == "GET":
            return 200, {n: {"aliases": {a: {} for a in self.aliases_of(n)}, "mappings": self.indices[n].mappings,
                             "settings": _nested(self._flat(n))} for n in self.resolve(name)}
        raise bad(f"no handler found for uri [/{name}] and method [{method}]")

    def _index_subrequest(self, method: str, parts: list[str], query: dict, body: bytes, headers) -> tuple[int, Any]:
        target, op, rest = parts[0], parts[1], parts[2:]
        if op == "_mapping" and not rest:
            return self.mapping(target, method, body)
        if op == "_settings":
            return self.settings(target, method, query, body, rest[0] if rest else None)
        if op == "_bulk" and not rest and method in ("POST", "PUT"):
            return self.bulk(target, body, headers, query)
        if op == "_refresh" and not rest and method in ("POST", "GET"):
            for n in self.resolve(target):
                self.indices[n].refresh()
            return 200, {"_shards": SHARDS_OK}
        if op == "_count" and not rest and method in ("GET", "POST"):
            return self.count(target, _json(body) if body else {})
        if op == "_search" and not rest and method in ("GET", "POST"):
            return self.search(target, _json(body) if body else {}, query)
        if op == "_stats" and len(rest) <= 1 and method == "GET":
            return self.stats(target, rest[0] if rest else "_all")
        if op in ("_doc", "_create") and len(rest) <= 1:
            return self.document(method, target, op, rest[0] if rest else None, body, query)
        raise bad(f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]")

    # -- indices ---------------------------------------------------------------------------
    def create_index(self, name: str, body: dict, *, auto: bool = False) -> tuple[int, Any]:
        check_index_name(name)
        if name in self.indices or name in self.aliases:
            raise bad(f"index [{name}] already exists", "resource_already_exists_exception")
        extra = set(body) - {"settings", "mappings", "aliases"}
        if extra:
            raise bad(f"unknown key [{sorted(extra)[0]}] for create index", "parse_exception")
        settings = {k: check_setting(k, v, self.version) for k, v in flat_settings(body.get("settings", {})).items()}
        mappings = check_mappings(body.get("mappings", {}), self.version, self.service)
        if any(p.get("type") == "knn_vector" and "method" in p for p in mappings.get("properties", {}).values()) \
                and settings.get("index.knn") != "true":
            # k-NN 3.1.0.0 index/mapper/KNNVectorFieldMapper.validateFromFlat
            raise bad("Cannot set modelId or method parameters when index.knn setting is false",
                      "mapper_parsing_exception")
        settings.setdefault("index.number_of_shards", "1")
        settings.setdefault("index.number_of_replicas", "1")
        settings["index.provided_name"] = name
        self.indices[name] = FakeIndex(name, settings, json.loads(json.dumps(mappings)))
        for alias in body.get("aliases") or {}:
            self.aliases.setdefault(alias, set()).add(name)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _flat(self, name: str) -> dict:
        return {k: v for k, v in self.indices[name].settings.items() if v is not None}

    def settings(self, target: str, method: str, query: dict, body: bytes, only: str | None) -> tuple[int, Any]:
        names = self.resolve(target)
        if method == "GET":
            out = {}
            for n in names:
                flat = {k: v for k, v in self._flat(n).items() if only is None or _glob(k, only)}
                entry = {"settings": flat if query.get("flat_settings") == "true" else _nested(flat)}
                if query.get("include_defaults") == "true":
                    entry["defaults"] = DEFAULT_SETTINGS if query.get("flat_settings") == "true" \
                        else _nested(DEFAULT_SETTINGS)
                out[n] = entry
            return 200, out
        if method != "PUT" or only is not None:
            raise bad(f"no handler found for uri [/{target}/_settings] and method [{method}]")
        flat = flat_settings(_json(body))
        for k, v in flat.items():
            if k in STATIC_SETTINGS:
                raise bad(f"Can't update non dynamic settings [[{k}]] for open indices")
            check_setting(k, v, self.version)
        for n in names:
            for k, v in flat.items():
                if v is None:
                    self.indices[n].settings.pop(k, None)
                else:
                    self.indices[n].settings[k] = check_setting(k, v, self.version)
        return 200, {"acknowledged": True}

    def mapping(self, target: str, method: str, body: bytes) -> tuple[int, Any]:
        if method == "GET":
            names = self.resolve(target, allow_missing=any(c in target for c in "*?"))
            return 200, {n: {"mappings": self.indices[n].mappings} for n in names}
        if method not in ("PUT", "POST"):
            raise bad(f"no handler found for uri [/{target}/_mapping] and method [{method}]")
        update = _json(body)
        extra = set(update) - {"properties", "dynamic", "_meta"}
        if extra:
            raise bad(f"Root mapping definition has unsupported parameters:  [{', '.join(sorted(extra))}]",
                      "mapper_parsing_exception")
        check_properties(update.get("properties", {}), self.version, self.service)
        if "dynamic" in update:
            check_dynamic(update["dynamic"])
        for n in self.resolve(target):
            m = self.indices[n].mappings
            m.setdefault("properties", {}).update(json.loads(json.dumps(update.get("properties", {}))))
            m.update({k: update[k] for k in ("dynamic", "_meta") if k in update})
        return 200, {"acknowledged": True}

    def stats(self, target: str, metric: str) -> tuple[int, Any]:
        metrics = {"docs", "segments"} if metric == "_all" else set(metric.split(","))
        unknown = metrics - {"docs", "segments"}
        if unknown:
            raise bad(f"the fake does not model the stats metric [{sorted(unknown)[0]}]")
        indices, all_docs, all_segments = {}, 0, 0
        for n in self.resolve(target):
            idx = self.indices[n]
            block: dict[str, Any] = {}
            if "docs" in metrics:
                block["docs"] = {"count": len(idx.visible), "deleted": 0}
            if "segments" in metrics:
                block["segments"] = {"count": idx.segment_count()}
            indices[n] = {"uuid": n, "primaries": block, "total": block}
            all_docs += len(idx.visible)
            all_segments += idx.segment_count()
        total: dict[str, Any] = {}
        if "docs" in metrics:
            total["docs"] = {"count": all_docs, "deleted": 0}
        if "segments" in metrics:
            total["segments"] = {"count": all_segments}
        return 200, {"_shards": {"total": len(indices), "successful": len(indices), "failed": 0},
                     "_all": {"primaries": total, "total": total}, "indices": indices}

    def forcemerge(self, target: str, query: dict) -> tuple[int, Any]:
        """Blocks for `merge_seconds` unless wait_for_completion=false (OpenSearch 2.7+: the API
        specification's indices.forcemerge parameters), then answers with a task id."""
        with self.lock:
            names = self.resolve(target)
            target_segments = int(query.get("max_num_segments", 1))
            done_at = time.monotonic() + self.merge_seconds
            for n in names:
                self.indices[n].force_merges += 1
                self.indices[n].merge_due = (done_at, target_segments)
            self._tasks += 1
            task = self._tasks
        if query.get("wait_for_completion", "true") == "false":
            return 200, {"task": f"fake-node:{task}"}
        time.sleep(self.merge_seconds)
        with self.lock:
            for n in names:
                if n in self.indices:
                    self.indices[n].segment_count()
        return 200, {"_shards": SHARDS_OK}

    def health(self, target: str, query: dict) -> tuple[int, Any]:
        """One node: replicas cannot be allocated, so an index with replicas is yellow, and no
        shard is ever initializing. Waiting for a status not reached times out at once with 408
        (OpenSearch: ClusterHealthResponse.status() is REQUEST_TIMEOUT when timed out); the fake
        does not sleep out the timeout."""
        unknown = set(query) & {"wait_for_nodes", "wait_for_events", "wait_for_active_shards"}
        if unknown:
            raise bad(f"the fake does not model [{sorted(unknown)[0]}]")
        names = self.resolve(target)
        yellow = any(int(self.indices[n].settings.get("index.number_of_replicas", 1)) > 0 for n in names)
        status = "yellow" if yellow else "green"
        rank = {"green": 0, "yellow": 1, "red": 2}
        timed_out = rank[status] > rank.get(query.get("wait_for_status", "red"), 2)
        return (408 if timed_out else 200), {"cluster_name": "fake", "status": status, "timed_out": timed_out,
                                             "number_of_nodes": 1, "active_shards": len(names)}

    def warmup(self, target: str) -> tuple[int, Any]:
        names = self.resolve(target)
        not_knn = [n for n in names if self.indices[n].settings.get("index.knn") != "true"]
        if not_knn:  # k-NN plugin/rest/RestKNNWarmupHandler.createKNNWarmupRequest
            raise bad(f"Warm up request rejected. One or more indices have 'index.knn' set to false. {not_knn}",
                      "knn_invalid_indices_exception")
        for n in names:
            self.indices[n].warmups += 1
        return 200, {"_shards": {"total": len(names), "successful": len(names), "failed": 0}}


def _glob(name: str, pattern: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), name) is not None


def _nested(flat: dict) -> dict:
    nested: dict = {}
    for k, v in flat.items():
        node = nested
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return nested


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
            err = ApiError(fault.status, "rejected_execution_exception" if fault.status == 429 else "fake_fault",
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
