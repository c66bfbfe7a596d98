"""The OpenSearch k-NN backend: the VectorIndex interface over an OpenSearch 2.17+/3.x cluster,
Amazon OpenSearch Service (`es`) or an OpenSearch Serverless vector collection (`aoss`).

Versioning: clients name an alias (OPENSEARCH_INDEX, default `clipsearch`); the data lives in a
physical index (a generation) named after the model, `{alias}-{model slug}-{dim}-{timestamp}`,
whose mapping's `_meta` records the model id and dimension. Ingest with the alias's model writes
into the live index (document ids are stable, so a re-run loads nothing twice); ingest with
another model builds a new generation (or resumes one an earlier run left unfinished) and moves
the alias to it when the load completes (opensearch_alias). The server resolves the alias once at
start-up and then reads that physical index, so a warm function keeps serving its model.

Document ids: managed clusters take clipsearch's id as `_id`. Serverless vector collections assign
`_id` themselves, so there every document is found through its `doc_id` keyword field
(opensearch_ids), which all documents carry anyway.

The vector stays in `_source` (so `get()` can return it for "more like this": knn_vector fields
answer neither `docvalue_fields` nor `stored_fields`) and every search excludes it from the hits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from clipsearch.config import OpenSearchSettings
from clipsearch.errors import BackendUnavailable, ClipsearchError, DocumentsRejected, IndexMissing, InvalidInput, \
    ModelMismatch, NotFound
from clipsearch.index import opensearch_alias as alias_ops
from clipsearch.index import opensearch_ids as lookup
from clipsearch.index import opensearch_load as load
from clipsearch.index import opensearch_mapping as om
from clipsearch.index.base import Document, Hit, as_query_vector, check_k, check_min_score, check_model, id_problem
from clipsearch.index.filters import Filters, parse_filters
from clipsearch.index.opensearch_bulk import Action, BulkWriter
from clipsearch.index.opensearch_errors import INGEST_HINT, translate_errors

log = logging.getLogger(__name__)
MAX_K = 10_000  # OpenSearch's limit for k and for size
PAGE = 1000
ON_DISK_OVERSAMPLE = 5.0


@dataclass(frozen=True)
class Layout:
    """What a physical index's mapping records: the model of its vectors and how they are stored."""

    name: str
    model_id: str
    dim: int
    data_type: str = "float"
    byte_scale: float | None = None
    engine: str = "faiss"
    mode: str | None = None
    compression: str | None = None
    replicas: int | None = None  # the serving replicas recorded at creation (None: not recorded)

    @classmethod
    def of(cls, name: str, mapping: dict) -> "Layout":
        meta = alias_ops.meta_of(mapping)
        vector = mapping.get("properties", {}).get(om.VECTOR_FIELD, {})
        if not meta.get("model_id") or not isinstance(meta.get("dim"), int):
            raise IndexMissing(f"OpenSearch index {name!r} was not created by clipsearch (no model in its _meta): "
                               f"point OPENSEARCH_INDEX elsewhere or re-ingest")
        method = vector.get("method", {})
        return cls(name, meta["model_id"], meta["dim"],
                   data_type=meta.get("data_type") or vector.get("data_type", "float"),
                   byte_scale=meta.get("byte_scale"), engine=method.get("engine", "faiss"), mode=vector.get("mode"),
                   compression=vector.get("compression_level"),
                   replicas=meta["replicas"] if isinstance(meta.get("replicas"), int) else None)


class OpenSearchIndex:
    backend = "opensearch"

    def __init__(self, client, settings: OpenSearchSettings, layout: Layout, *, live: str | None = None,
                 bulk: BulkWriter | None = None, merge_wait_s: float = load.MERGE_WAIT_S,
                 settle_wait_s: float = load.SETTLE_WAIT_S):
        self.client, self.settings = client, settings
        self.alias, self.url, self.service = settings.index, settings.url or "", settings.service
        self.ef_search, self.force_merge = settings.ef_search, settings.force_merge
        self._use(layout)
        self.serving_replicas = layout.replicas if layout.replicas is not None else settings.replicas
        self.merge_wait_s, self.settle_wait_s = merge_wait_s, settle_wait_s
        self._live = live  # the physical index the alias pointed at when opened (None: no alias yet)
        self.bulk = bulk or BulkWriter(client)
        self._loading = 0
        self._saved_settings: dict[str, Any] | None = None
        # Since the last completed load: what a Serverless settle must find (and must not).
        self._written: set[str] = set()
        self._removed: set[str] = set()
        self._lock = threading.Lock()

    def _use(self, layout: Layout) -> None:
        """Read and write the physical index `layout` describes."""
        self.layout, self.index = layout, layout.name
        self.model_id, self.dim = layout.model_id, int(layout.dim)
        self.data_type, self.byte_scale = layout.data_type, layout.byte_scale
        self.engine, self.mode, self.compression = layout.engine, layout.mode, layout.compression

    @property
    def assigns_ids(self) -> bool:
        """Serverless assigns `_id`: clipsearch's id lives only in the doc_id field."""
        return self.service == "aoss"

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: OpenSearchSettings, model_id: str | None = None, dim: int | None = None,
                      *, client=None, **opts) -> "OpenSearchIndex":
        """Without `model_id` (the server): the alias must exist; the caller checks the model.
        With `model_id` and `dim` (ingest): the index for that model, created when needed.
        `opts`: the constructor's keywords (bulk writer, waits)."""
        from clipsearch.index.opensearch_client import get_client

        client = client if client is not None else get_client(settings)
        alias, url = settings.index, settings.url or ""
        with translate_errors("reading the index mapping", alias, url):
            live = alias_ops.mappings(client, alias)
        live_name = alias_ops.choose(alias, live)
        if model_id is None:
            if live_name is None:
                raise IndexMissing(f"OpenSearch index {alias!r} does not exist at {url}: create it with {INGEST_HINT}")
            return cls(client, settings, Layout.of(live_name, live[live_name]), live=live_name, **opts)
        if dim is None or dim < 1:
            raise ValueError("dim is required with model_id")
        if live_name is not None:
            index = cls(client, settings, Layout.of(live_name, live[live_name]), live=live_name, **opts)
            if index.model_id == model_id and index.dim == dim:
                return index
            if live_name == alias:  # a concrete index, not an alias: there is nothing to swap
                raise ClipsearchError(f"OpenSearch index {alias!r} holds vectors of model {index.model_id!r} and is "
                                      "not an alias; delete it or set OPENSEARCH_INDEX to another name")
        # Another model (or nothing) is live: resume an unfinished index for this model, or create one.
        prefix = om.physical_name(alias, model_id, dim, now=0).rsplit("-", 1)[0]
        with translate_errors("listing indices", alias, url):
            candidates = alias_ops.mappings(client, f"{prefix}-*")
        for name in sorted(candidates, reverse=True):
            meta = alias_ops.meta_of(candidates[name])
            if meta.get("model_id") == model_id and meta.get("dim") == dim and meta.get("alias") == alias:
                log.info("resuming the unfinished index %s for model %s", name, model_id)
                return cls(client, settings, Layout.of(name, candidates[name]), live=live_name, **opts)
        return cls.create(client, settings, model_id=model_id, dim=dim, live=live_name, **opts)

    @classmethod
    def create(cls, client, settings: OpenSearchSettings, *, model_id: str, dim: int, live: str | None = None,
               **opts) -> "OpenSearchIndex":
        """A new physical index for the model, with the settings' engine, graph and storage parameters."""
        name = om.physical_name(settings.index, model_id, dim)
        body = om.index_body(model_id=model_id, dim=dim, settings=settings)
        if settings.service == "aoss":
            # Serverless manages shards and replicas itself ("you don't have to manage capacity
            # yourself", developer guide, "Managing capacity limits"); whether it accepts these
            # settings is not known, so they are not sent.
            for key in ("number_of_shards", "number_of_replicas"):
                body["settings"]["index"].pop(key)
        with translate_errors("creating the index", name, settings.url or ""):
            client.indices.create(index=name, body=body)
        log.info("created OpenSearch index %s for model %s (%d-d)", name, model_id, dim)
        return cls(client, settings, Layout.of(name, body["mappings"]), live=live, **opts)

    def _guard(self, what: str):
        return translate_errors(what, self.index, self.url)

    # -- writing ---------------------------------------------------------------------------
    def upsert(self, docs: Iterable[Document]) -> int:
        """Write documents; returns how many were written. Documents OpenSearch would refuse
        (or did) are reported in DocumentsRejected after the others are written."""
        # One action per id, the last one winning as in the embedded index: two actions for one
        # id in parallel requests could land in either order.
        docs = list(docs)
        latest = {_key(d.id): d for d in docs}
        if not latest:
            return 0
        rejected: dict[str, str] = {}
        sources: dict[str, dict] = {}
        for key, d in latest.items():
            problem = om.document_problem(d.id, d.metadata, d.vector, self.dim)
            source = None if problem else self._source(d)
            if isinstance(source, str):
                problem, source = source, None
            if problem:
                rejected[key] = problem
            else:
                sources[key] = source
        old = self._old_copies(sources)
        actions = [Action("index", key, None if self.assigns_ids else key, source) for key, source in sources.items()]
        with self._guard("bulk indexing"):
            result = self.bulk.run(self.index, actions)
        for seq, why in result.errors.items():
            rejected[actions[seq].key] = f"OpenSearch refused it: {why}"
        written = {actions[seq].key for seq in result.ok}
        # Serverless: the copies a rewrite replaces go only once the new one is in, so a refused
        # rewrite keeps the old document. Killed in between, the settle removes the extra copy.
        self._remove_copies([(key, _id) for key in written for _id in old.get(key, [])])
        self._written |= written
        self._removed -= written
        # Counted as the embedded index counts: every document given, a superseded one included.
        done = sum(1 for d in docs if _key(d.id) in written)
        if rejected:
            raise DocumentsRejected(rejected, done)
        return done

    def _source(self, d: Document) -> dict | str:
        """The document as uploaded, or why it cannot be (not JSON)."""
        vec = np.asarray(d.vector, dtype=np.float32).reshape(-1)
        source = dict(d.metadata)
        source[om.VECTOR_FIELD] = om.encode_vector(vec / np.linalg.norm(vec), self.data_type, self.byte_scale)
        source[om.ID_FIELD] = d.id
        try:
            json.dumps(source, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return f"metadata is not JSON ({exc})"
        return source

    def _old_copies(self, sources: dict[str, dict]) -> dict[str, list[str]]:
        """Serverless: the `_id`s of the searchable documents these ids already have."""
        if not self.assigns_ids or not sources:
            return {}
        with self._guard("looking up documents"):
            return lookup.assigned_ids(self.client, self.index, sources)

    def _remove_copies(self, targets: list[tuple[str, str]]) -> None:
        if not targets:
            return
        with self._guard("removing replaced documents"):
            result = self.bulk.run(self.index, [Action("delete", key, _id) for key, _id in targets])
        for why in result.errors.values():  # left for the settle, which removes extra copies
            log.warning("could not remove a replaced document from %s: %s", self.index, why)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many existed."""
        wanted = [i for i in dict.fromkeys(ids) if id_problem(i) is None]
        if self.assigns_ids:
            with self._guard("looking up documents"):
                existing = lookup.assigned_ids(self.client, self.index, wanted) if wanted else {}
            actions = [Action("delete", key, _id) for key, found in existing.items() for _id in found]
        else:
            actions = [Action("delete", key, key) for key in wanted]
        with self._guard("bulk delete"):
            result = self.bulk.run(self.index, actions)
        if result.errors:
            raise BackendUnavailable(f"OpenSearch failed to delete {len(result.errors)} documents")
        self._removed |= set(wanted)
        self._written -= set(wanted)
        return len({actions[seq].key for seq, status in result.ok.items() if status == 200})

    # -- loads -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def loading(self):
        """Wrap a bulk load. Managed clusters: no refreshes and no replicas while loading, the
        serving values back on exit, even when the load fails (a replica-less index must not
        outlive the load). A load that ends without error completes (`_complete`): only then
        may the alias move, so clients never see a half-built index of a new model."""
        with self._lock:
            outer = self._loading == 0
            self._loading += 1
        try:
            if outer and not self.assigns_ids:  # Serverless manages refresh and replicas itself
                self._saved_settings = load.pause(self.client, self.index, self._guard, self.serving_replicas)
            yield
            if outer:
                self._complete(self.force_merge)
        except BaseException:
            if outer:
                try:
                    self._restore_settings()
                except ClipsearchError as exc:  # never hide the error that ended the load
                    log.error("could not restore settings of %s after a failed load: %s", self.index, exc)
            raise
        finally:
            with self._lock:
                self._loading -= 1

    def _restore_settings(self) -> None:
        saved, self._saved_settings = self._saved_settings, None
        if saved is not None:
            load.restore(self.client, self.index, self._guard, saved)

    def save(self, force_merge: bool | None = None) -> None:
        """Inside `loading()`: a checkpoint (managed clusters refresh, so what was written is
        searchable and durable). Outside: complete what was written, as at the end of a load."""
        if self._loading:
            if not self.assigns_ids:  # Serverless has no refresh API (it refreshes on its own)
                with self._guard("refreshing"):
                    self.client.indices.refresh(index=self.index)
            return
        self._complete(self.force_merge if force_merge is None else force_merge)

    def _complete(self, force_merge: bool) -> None:
        """Make the index serve what was written, then point the alias at it. Managed: refresh,
        merge once (when asked), restore the serving settings, warm the graphs. Serverless: wait
        until the collection answers exactly the documents written."""
        if self.assigns_ids:
            total = load.settle(self.client, self.index, self._guard, self.bulk, written=self._written,
                                removed=self._removed, wait_s=self.settle_wait_s)
            log.info("%s answers %d documents", self.index, total)
        else:
            with self._guard("refreshing"):
                self.client.indices.refresh(index=self.index)
            if force_merge:
                load.force_merge(self.client, self.index, self._guard, self.merge_wait_s)
            self._restore_settings()
            load.warm_up(self.client, self.index)
        self._written.clear()
        self._removed.clear()
        self._check_still_ours()
        self._point_alias()

    def _check_still_ours(self) -> None:
        """The index must still be the one created for this model: a bulk request into a deleted
        index re-creates it with a guessed mapping (action.auto_create_index defaults to true;
        the API specification's tests/default/_core/bulk.yaml creates an index that way)."""
        with self._guard("reading the index mapping"):
            mapping = alias_ops.mappings(self.client, self.index).get(self.index, {})
        meta = alias_ops.meta_of(mapping)
        if (meta.get("model_id"), meta.get("dim")) != (self.model_id, self.dim):
            raise ClipsearchError(f"OpenSearch index {self.index!r} was deleted during the load and re-created without "
                                  "clipsearch's mapping; the alias was not moved: delete that index and run the "
                                  "ingest again")

    def _point_alias(self) -> None:
        old = alias_ops.point(self.client, self.alias, self.index, self.service, self._guard)
        if old or self._live != self.index:
            log.info("alias %s now points at %s (was %s); the old index is kept for rollback "
                     "(`python -m ingest generations` lists and deletes old ones)", self.alias, self.index,
                     ", ".join(old) or "nothing")
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
            live = alias_ops.mappings(self.client, self.alias)
        name = alias_ops.choose(self.alias, live) if live else None
        if name is None or name == self.index:
            return False
        now = Layout.of(name, live[name])
        if (now.model_id, now.dim) != (self.model_id, self.dim):  # its vectors are not comparable with ours
            raise ModelMismatch(now.model_id, now.dim, self.model_id, self.dim)
        log.warning("index %s is gone; alias %s now points at %s (same model): following it", self.index,
                    self.alias, name)
        self._use(now)
        self._live = name
        return True

    def count(self) -> int:
        return self._following(self._count)

    def _count(self) -> int:
        # A size-0 search rather than _count: one read that every service (Serverless included)
        # documents, and one permission for the query role.
        body = {"size": 0, "track_total_hits": True, "query": {"match_all": {}}}
        with self._guard("counting"):
            return int(self.client.search(index=self.index, body=body)["hits"]["total"]["value"])

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
            for h in hits:
                doc_id = str(h["sort"][0])
                if not out or out[-1] != doc_id:  # Serverless: a copy not yet removed by the settle
                    out.append(doc_id)
            if len(hits) < PAGE:
                return out
            after = hits[-1]["sort"]

    def get(self, doc_id: str) -> Document:
        if id_problem(doc_id) is not None:
            raise NotFound(f"no document with id {doc_id!r} in the index")
        return self._following(lambda: self._get(doc_id))

    def _get(self, doc_id: str) -> Document:
        from opensearchpy.exceptions import NotFoundError

        source = None
        try:
            with self._guard("getting a document"):
                if self.assigns_ids:
                    source = lookup.find_one(self.client, self.index, doc_id)
                else:
                    got = self.client.get(index=self.index, id=doc_id)
                    source = got.get("_source") if got.get("found") else None
        except NotFoundError:
            source = None
        if source is None:
            raise NotFound(f"no document with id {doc_id!r} in the index")
        source = dict(source)
        vector = om.decode_vector(source.pop(om.VECTOR_FIELD), self.data_type, self.byte_scale)
        source.pop(om.ID_FIELD, None)
        return Document(doc_id, vector, source)

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_id": self.model_id, "dim": self.dim, "count": self.count(),
                "index_type": "hnsw", "index": self.index, "alias": self.alias, "url": self.url,
                "service": self.service,
                "params": {"engine": self.engine, "ef_search": self.ef_search, "data_type": self.data_type,
                           "mode": self.mode, "compression": self.compression}}

    def search(self, vector, k: int = 10, filters: dict | Filters | None = None,
               min_score: float | None = None) -> list[Hit]:
        return self._following(lambda: self._search(vector, k, filters, min_score))

    def _search(self, vector, k: int, filters: dict | Filters | None, min_score: float | None) -> list[Hit]:
        k = check_k(k)
        if k > MAX_K:
            raise InvalidInput(f"k must be at most {MAX_K}, got {k}")
        q = as_query_vector(vector, self.dim)
        clauses = om.filter_clauses(parse_filters(filters))
        min_score = check_min_score(min_score)
        knn: dict[str, Any] = {"vector": om.encode_vector(q, self.data_type, self.byte_scale), "k": k,
                               "method_parameters": {"ef_search": max(self.ef_search, k)}}
        if om.rescored(self.mode, self.compression):
            # Quantised vectors: the full vectors re-score a longer candidate list
            # (bench/compression_bench.py: 1-bit recall@10 0.84 at 3x k, 0.99 at 5x).
            knn["rescore"] = {"oversample_factor": ON_DISK_OVERSAMPLE}
        if clauses:
            # Inside the knn query: the engine filters while it searches and still finds k.
            knn["filter"] = {"bool": {"filter": clauses}}
        # doc_id stays in the hits' _source: on Serverless it is the only place the id is.
        body: dict[str, Any] = {"size": k, "query": {"knn": {om.VECTOR_FIELD: knn}},
                                "_source": {"excludes": [om.VECTOR_FIELD]}}
        if min_score is not None:
            body["min_score"] = om.min_score_param(float(min_score), self.data_type, self.byte_scale)
        with self._guard("searching"):
            hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
        out, seen = [], set()
        for h in hits:
            source = dict(h.get("_source") or {})
            doc_id = str(source.pop(om.ID_FIELD, h["_id"]))
            cos = om.to_cosine(float(h["_score"]), self.data_type, self.byte_scale)
            if doc_id not in seen and (min_score is None or cos >= min_score):
                seen.add(doc_id)
                out.append(Hit(doc_id, cos, source))
        return out

    def check_model(self, model_id: str, dim: int) -> None:
        check_model(self, model_id, dim)


def _key(doc_id) -> str:
    """How reports name a document: its id, or the repr of an id that is not a string."""
    return doc_id if isinstance(doc_id, str) else repr(doc_id)
