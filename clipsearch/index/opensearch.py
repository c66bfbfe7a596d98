"""The OpenSearch k-NN backend: the VectorIndex interface over an OpenSearch 2.17+/3.x cluster.

Versioning: clients name an alias (OPENSEARCH_INDEX, default `clipsearch`); the data lives in a
physical index named after the model, `{alias}-{model slug}-{dim}-{timestamp}`, whose mapping's
`_meta` records the model id and dimension. Ingest with the alias's model writes into the live
index (document ids are stable, so a re-run loads nothing twice); ingest with another model
builds a new physical index (or resumes one an earlier run left unfinished) and `save()` swaps
the alias to it in one atomic `_aliases` request. The server resolves the alias once at start-up
and then reads that physical index, so a warm function keeps serving the model it was built for.

The vector stays in `_source` (so `get()` can return it for "more like this": knn_vector fields
answer neither `docvalue_fields` nor `stored_fields`) and every search excludes it from the hits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterable, Sequence

import numpy as np

from clipsearch.config import Settings
from clipsearch.errors import (BackendUnavailable, ClipsearchError, IndexMissing, InvalidInput, ModelMismatch,
                               NotFound)
from clipsearch.index import opensearch_mapping as om
from clipsearch.index.base import Document, Hit, as_query_vector, check_k, check_model, checked_vectors
from clipsearch.index.filters import parse_filters
from clipsearch.index.opensearch_bulk import Action, BulkWriter

log = logging.getLogger(__name__)
MAX_K = 10_000  # OpenSearch's limit for k and for size
PAGE = 1000
ON_DISK_OVERSAMPLE = 5.0


def _error_type(exc) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        return str(info["error"].get("type", ""))
    return str(getattr(exc, "error", ""))


def _reason(exc) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        return str(info["error"].get("reason", ""))[:500]
    return str(info)[:500]


@contextlib.contextmanager
def translate_errors(what: str, index: str, url: str):
    """OpenSearch client exceptions as the domain's errors, the cause logged."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError, TransportError

    try:
        yield
    except OSConnectionError as exc:
        log.error("OpenSearch %s at %s failed: %s", what, url, exc)
        raise BackendUnavailable(f"OpenSearch is unreachable ({what}): {type(exc).__name__}") from exc
    except TransportError as exc:
        status = exc.status_code if isinstance(exc.status_code, int) else 0
        if status == 404 and _error_type(exc) == "index_not_found_exception":
            raise IndexMissing(
                f"OpenSearch index {index!r} does not exist at {url}: create it with "
                f"`python -m ingest unsplash --backend opensearch` (or `python -m ingest folder PATH --backend opensearch`)"
            ) from exc
        if status in (401, 403):
            log.error("OpenSearch %s at %s refused: %s %s", what, url, status, exc.info)
            raise BackendUnavailable(f"OpenSearch refused the request ({status}): check OPENSEARCH_AUTH and the "
                                     "credentials' permissions") from exc
        if status == 429 or status >= 500 or status == 0:
            log.error("OpenSearch %s at %s failed: %s %s", what, url, status, exc.info)
            raise BackendUnavailable(f"OpenSearch answered {status or 'an error'} ({what})",
                                     retry_after=10 if status == 429 else 5) from exc
        if status == 404:  # a missing document: the caller decides
            raise
        # A request the cluster refuses (say, no k-NN plugin): not transient, not the client's input.
        log.error("OpenSearch %s at %s refused: %s %s", what, url, status, exc.info)
        raise ClipsearchError(f"OpenSearch refused {what} ({status} {_error_type(exc)}): {_reason(exc)}") from exc


class OpenSearchIndex:
    backend = "opensearch"

    def __init__(self, client, *, alias: str, index: str, model_id: str, dim: int, data_type: str = "float",
                 byte_scale: float | None = None, ef_search: int = 128, engine: str = "faiss",
                 mode: str | None = None, compression: str | None = None, url: str = "",
                 live: str | None = None, force_merge: bool = False, service: str = "es",
                 timeout: float = 10.0, bulk: BulkWriter | None = None):
        self.client, self.alias, self.index = client, alias, index
        self.model_id, self.dim = model_id, int(dim)
        self.data_type, self.byte_scale = data_type, byte_scale
        self.ef_search, self.engine, self.mode, self.compression = ef_search, engine, mode, compression
        self.url, self.force_merge, self.service, self.timeout = url, force_merge, service, timeout
        self._live = live  # the physical index the alias points at now (None: no alias yet)
        self.bulk = bulk or BulkWriter(client)
        self._loading = 0
        self._saved_settings: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings, model_id: str | None = None, dim: int | None = None,
                      *, client=None, **opts) -> "OpenSearchIndex":
        """Without `model_id` (the server): the alias must exist; the caller checks the model.
        With `model_id` and `dim` (ingest): the index for that model, created when needed."""
        from clipsearch.index.opensearch_client import get_client

        client = client if client is not None else get_client(settings)
        alias, url = settings.opensearch_index, settings.opensearch_url or ""
        common = dict(url=url, force_merge=settings.opensearch_force_merge, service=settings.opensearch_service,
                      timeout=settings.opensearch_timeout, ef_search=settings.opensearch_ef_search, **opts)
        with translate_errors("reading the index mapping", alias, url):
            live = _mappings(client, alias)
        if model_id is None:
            if not live:
                raise IndexMissing(f"OpenSearch index {alias!r} does not exist at {url}: create it with "
                                   "`python -m ingest unsplash --backend opensearch`")
            if len(live) > 1:
                raise IndexMissing(f"OpenSearch alias {alias!r} points at {len(live)} indices ({', '.join(sorted(live))}); "
                                   "it must point at one: re-run ingest to swap it")
            name, mapping = next(iter(live.items()))
            return cls._from_mapping(client, alias, name, mapping, live=name, **common)
        if dim is None or dim < 1:
            raise ValueError("dim is required with model_id")
        if len(live) > 1:
            raise IndexMissing(f"OpenSearch alias {alias!r} points at {len(live)} indices ({', '.join(sorted(live))}); "
                               "point it at one (POST _aliases) before ingesting")
        live_name = next(iter(live), None)
        if live_name is not None:
            index = cls._from_mapping(client, alias, live_name, live[live_name], live=live_name, **common)
            if index.model_id == model_id and index.dim == dim:
                return index
            if live_name == alias:  # a concrete index, not an alias: there is nothing to swap
                raise ClipsearchError(f"OpenSearch index {alias!r} holds vectors of model {index.model_id!r} and is "
                                      "not an alias; delete it or set OPENSEARCH_INDEX to another name")
        # Another model (or nothing) is live: resume an unfinished index for this model, or create one.
        prefix = om.physical_name(alias, model_id, dim, now=0).rsplit("-", 1)[0]
        with translate_errors("listing indices", alias, url):
            candidates = _mappings(client, f"{prefix}-*")
        for name in sorted(candidates, reverse=True):
            meta = _meta(candidates[name])
            if meta.get("model_id") == model_id and meta.get("dim") == dim and meta.get("alias") == alias:
                log.info("resuming the unfinished index %s for model %s", name, model_id)
                return cls._from_mapping(client, alias, name, candidates[name], live=live_name, **common)
        return cls.create(client, settings, model_id=model_id, dim=dim, live=live_name, **common)

    @classmethod
    def create(cls, client, settings: Settings, *, model_id: str, dim: int, live: str | None = None,
               **common) -> "OpenSearchIndex":
        name = om.physical_name(settings.opensearch_index, model_id, dim)
        body = om.index_body(
            model_id=model_id, dim=dim, alias=settings.opensearch_index, engine=settings.opensearch_engine, m=settings.opensearch_m,
            ef_construction=settings.opensearch_ef_construction, ef_search=settings.opensearch_ef_search,
            data_type=settings.opensearch_data_type, mode=settings.opensearch_mode,
            compression=settings.opensearch_compression, shards=settings.opensearch_shards,
            replicas=settings.opensearch_replicas)
        with translate_errors("creating the index", name, common.get("url", "")):
            client.indices.create(index=name, body=body)
        log.info("created OpenSearch index %s for model %s (%d-d)", name, model_id, dim)
        return cls._from_mapping(client, settings.opensearch_index, name, body["mappings"], live=live, **common)

    @classmethod
    def _from_mapping(cls, client, alias: str, name: str, mapping: dict, **common) -> "OpenSearchIndex":
        meta = _meta(mapping)
        vector = mapping.get("properties", {}).get(om.VECTOR_FIELD, {})
        if not meta.get("model_id") or not isinstance(meta.get("dim"), int):
            raise IndexMissing(f"OpenSearch index {name!r} was not created by clipsearch (no model in its _meta): "
                               f"point OPENSEARCH_INDEX elsewhere or re-ingest")
        method = vector.get("method", {})
        return cls(client, alias=alias, index=name, model_id=meta["model_id"], dim=meta["dim"],
                   data_type=meta.get("data_type") or vector.get("data_type", "float"),
                   byte_scale=meta.get("byte_scale"),
                   engine=method.get("engine", "faiss"), mode=vector.get("mode"),
                   compression=vector.get("compression_level"), **common)

    def _guard(self, what: str):
        return translate_errors(what, self.index, self.url)

    # -- writing ---------------------------------------------------------------------------
    def upsert(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        if not docs:
            return 0
        vectors = self._validate(docs)
        # One action per id, the last one winning as in the embedded index: two actions for one
        # id in parallel requests could land in either order.
        latest = {d.id: (d, vec) for d, vec in zip(docs, vectors)}
        actions = []
        for d, vec in latest.values():
            source = {k: v for k, v in d.metadata.items()}
            source[om.VECTOR_FIELD] = om.encode_vector(vec, self.data_type, self.byte_scale)
            source[om.ID_FIELD] = d.id
            try:
                actions.append(Action("index", self.index, d.id, source))
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"document {d.id!r}: metadata is not JSON ({exc})") from None
        with self._guard("bulk indexing"):
            result = self.bulk.run(actions)
        if result.errors:
            first = "; ".join(f"{i}: {r}" for i, r in list(result.errors.items())[:3])
            raise InvalidInput(f"OpenSearch rejected {len(result.errors)} of {len(docs)} documents ({first})")
        return len(docs)

    def _validate(self, docs: list[Document]) -> np.ndarray:
        vectors = checked_vectors(docs, self.dim)
        for d in docs:
            if om.RESERVED & set(d.metadata):
                raise InvalidInput(f"document {d.id!r}: metadata may not use the reserved fields {sorted(om.RESERVED)}")
            for name in om.BOOLEAN_FIELDS & set(d.metadata):
                # ignore_malformed covers numbers, not booleans: OpenSearch would reject the document
                if not isinstance(d.metadata[name], (bool, type(None))):
                    raise InvalidInput(f"document {d.id!r}: {name} must be true or false, got {d.metadata[name]!r}")
        return vectors

    def delete(self, ids: Sequence[str]) -> int:
        actions = [Action("delete", self.index, i) for i in dict.fromkeys(ids)]
        with self._guard("bulk delete"):
            result = self.bulk.run(actions)
        if result.errors:
            raise BackendUnavailable(f"OpenSearch failed to delete {len(result.errors)} documents")
        return sum(1 for status in result.ok.values() if status == 200)

    @contextlib.contextmanager
    def loading(self):
        """No refreshes and no replicas while loading; the previous values come back on exit,
        even when the load fails (a replica-less index must not outlive the load)."""
        with self._lock:
            outer = self._loading == 0
            self._loading += 1
        try:
            if outer and self.service != "aoss":  # Serverless manages refresh and replicas itself
                with self._guard("reading index settings"):
                    got = self.client.indices.get_settings(index=self.index, params={"flat_settings": "true"})
                flat = next(iter(got.values()))["settings"]
                self._saved_settings = {"index.refresh_interval": flat.get("index.refresh_interval"),
                                        "index.number_of_replicas": flat.get("index.number_of_replicas")}
                with self._guard("pausing refresh"):
                    self.client.indices.put_settings(index=self.index, body={
                        "index.refresh_interval": "-1", "index.number_of_replicas": 0})
            yield
        except BaseException:
            if outer:
                try:
                    self._restore_settings()
                except ClipsearchError as exc:  # never hide the error that ended the load
                    log.error("could not restore settings of %s after a failed load: %s", self.index, exc)
            raise
        else:
            if outer:
                self._restore_settings()
                # The load is complete: only now may the alias move to a new model's index.
                self._point_alias()
        finally:
            with self._lock:
                self._loading -= 1

    def _restore_settings(self) -> None:
        saved, self._saved_settings = self._saved_settings, None
        if saved is None:
            return
        with self._guard("restoring index settings"):
            # None resets a setting to its default, which is what an absent value meant.
            self.client.indices.put_settings(index=self.index, body=saved)

    def save(self, force_merge: bool | None = None) -> None:
        """Refresh (documents become searchable), optionally merge to one segment, then point
        the alias at this index if it is not already (the model-change swap). Inside
        `loading()` a save is a checkpoint: the swap waits for the load to end without error,
        so clients never see a half-built index of a new model."""
        force_merge = self.force_merge if force_merge is None else force_merge
        if self.service != "aoss":
            with self._guard("refreshing"):
                self.client.indices.refresh(index=self.index)
            if force_merge:
                with self._guard("force-merging"):
                    self.client.indices.forcemerge(index=self.index, params={
                        "max_num_segments": 1, "request_timeout": 3600})
        if self._loading == 0:
            self._point_alias()

    def _point_alias(self) -> None:
        if self._live == self.index:
            return
        actions: list[dict] = [{"add": {"index": self.index, "alias": self.alias}}]
        if self._live is not None:
            actions.insert(0, {"remove": {"index": self._live, "alias": self.alias}})
        with self._guard("swapping the alias"):
            self.client.indices.update_aliases(body={"actions": actions})
        log.info("alias %s now points at %s (was %s); the old index is kept for rollback",
                 self.alias, self.index, self._live or "nothing")
        self._live = self.index

    # -- reading ---------------------------------------------------------------------------
    def _following(self, read):
        """Run `read`; when the physical index is gone (an old index deleted after a re-ingest
        while this process kept it), follow the alias once to its index of the same model."""
        try:
            return read()
        except IndexMissing:
            if self._loading or not self._follow_alias():
                raise
            return read()

    def _follow_alias(self) -> bool:
        with self._guard("reading the index mapping"):
            live = _mappings(self.client, self.alias)
        if len(live) != 1 or self.index in live:
            return False
        name, mapping = next(iter(live.items()))
        now = self._from_mapping(self.client, self.alias, name, mapping, live=name)
        if (now.model_id, now.dim) != (self.model_id, self.dim):  # its vectors are not comparable with ours
            raise ModelMismatch(now.model_id, now.dim, self.model_id, self.dim)
        log.warning("index %s is gone; alias %s now points at %s (same model): following it", self.index,
                    self.alias, name)
        self.index, self._live = name, name
        self.data_type, self.byte_scale = now.data_type, now.byte_scale
        self.engine, self.mode, self.compression = now.engine, now.mode, now.compression
        return True

    def count(self) -> int:
        return self._following(self._count)

    def _count(self) -> int:
        with self._guard("counting"):
            return int(self.client.count(index=self.index)["count"])

    def ids(self) -> list[str]:
        return self._following(self._ids)

    def _ids(self) -> list[str]:
        out: list[str] = []
        after = None
        while True:
            body: dict[str, Any] = {"size": PAGE, "_source": False, "sort": [{om.ID_FIELD: "asc"}],
                                    "query": {"match_all": {}}}
            if after is not None:
                body["search_after"] = after
            with self._guard("listing ids"):
                hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
            out.extend(h["_id"] for h in hits)
            if len(hits) < PAGE:
                return out
            after = hits[-1]["sort"]

    def get(self, doc_id: str) -> Document:
        if not isinstance(doc_id, str) or not doc_id:
            raise NotFound(f"no document with id {doc_id!r} in the index")
        return self._following(lambda: self._get(doc_id))

    def _get(self, doc_id: str) -> Document:
        from opensearchpy.exceptions import NotFoundError

        try:
            with self._guard("getting a document"):
                got = self.client.get(index=self.index, id=doc_id)
        except NotFoundError:
            got = {"found": False}
        if not got.get("found"):
            raise NotFound(f"no document with id {doc_id!r} in the index")
        source = dict(got["_source"])
        vector = om.decode_vector(source.pop(om.VECTOR_FIELD), self.data_type, self.byte_scale)
        source.pop(om.ID_FIELD, None)
        return Document(doc_id, vector, source)

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_id": self.model_id, "dim": self.dim, "count": self.count(),
                "index_type": "hnsw", "index": self.index, "alias": self.alias, "url": self.url,
                "params": {"engine": self.engine, "ef_search": self.ef_search, "data_type": self.data_type,
                           "mode": self.mode, "compression": self.compression}}

    def search(self, vector, k: int = 10, filters: dict | None = None, min_score: float | None = None) -> list[Hit]:
        return self._following(lambda: self._search(vector, k, filters, min_score))

    def _search(self, vector, k: int, filters: dict | None, min_score: float | None) -> list[Hit]:
        k = check_k(k)
        if k > MAX_K:
            raise InvalidInput(f"k must be at most {MAX_K}, got {k}")
        q = as_query_vector(vector, self.dim)
        clauses = om.filter_clauses(parse_filters(filters))
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not -1.0 <= min_score <= 1.0):
            raise InvalidInput(f"min_score must be a number between -1 and 1, got {min_score!r}")
        knn: dict[str, Any] = {"vector": om.encode_vector(q, self.data_type, self.byte_scale), "k": k,
                               "method_parameters": {"ef_search": max(self.ef_search, k)}}
        if self.mode == "on_disk" or self.compression in ("8x", "16x", "32x"):
            # Binary-quantised vectors: the full vectors re-score a longer candidate list
            # (bench/compression_bench.py: 1-bit recall@10 0.84 at 3x k, 0.99 at 5x).
            knn["rescore"] = {"oversample_factor": ON_DISK_OVERSAMPLE}
        if clauses:
            # Inside the knn query: the engine filters while it searches and still finds k.
            knn["filter"] = {"bool": {"filter": clauses}}
        body: dict[str, Any] = {"size": k, "query": {"knn": {om.VECTOR_FIELD: knn}},
                                "_source": {"excludes": [om.VECTOR_FIELD, om.ID_FIELD]}}
        if min_score is not None:
            body["min_score"] = om.min_score_param(float(min_score), self.data_type, self.byte_scale)
        with self._guard("searching"):
            hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
        out = []
        for h in hits:
            cos = om.to_cosine(float(h["_score"]), self.data_type, self.byte_scale)
            if min_score is None or cos >= min_score:
                out.append(Hit(h["_id"], cos, h.get("_source") or {}))
        return out

    def check_model(self, model_id: str, dim: int) -> None:
        check_model(self, model_id, dim)


def _mappings(client, target: str) -> dict[str, dict]:
    """{physical index: mappings} for an alias, index or pattern; {} when nothing matches."""
    from opensearchpy.exceptions import NotFoundError

    try:
        got = client.indices.get_mapping(index=target)
    except NotFoundError as exc:
        if _error_type(exc) == "index_not_found_exception":
            return {}
        raise
    return {name: body.get("mappings", {}) for name, body in got.items()}


def _meta(mapping: dict) -> dict:
    meta = mapping.get("_meta", {}).get("clipsearch", {})
    return meta if isinstance(meta, dict) else {}
