"""Finding documents by clipsearch's id field, for collections that assign `_id` themselves.

OpenSearch Serverless vector collections refuse a caller's document id ("For time series and
vector search collections, you can't index by custom document ID or update by upsert requests",
developer guide, "What is Amazon OpenSearch Serverless?", Choosing a collection type; a bulk item
with `_id` gets 400 "Document ID is not supported in create/index operation request",
opensearch-project/opensearch-py issue 792). Every document carries its id in the keyword field
`doc_id` instead, and these searches map it to the `_id`s the collection assigned. Searches see
only refreshed documents (Serverless refreshes on its own, every 10-60 s), so a document written
moments ago may be missed: `opensearch_load.settle` removes the duplicates that can cause.
"""

from __future__ import annotations

from typing import Any, Iterable

from clipsearch.index import opensearch_mapping as om

LOOKUP_CHUNK = 500  # doc ids per terms query
MAX_WINDOW = 10_000  # OpenSearch's index.max_result_window default: size may not exceed it
SCAN_PAGE = 1000


def assigned_ids(client, index: str, doc_ids: Iterable[str]) -> dict[str, list[str]]:
    """doc_id -> the `_id`s of the searchable documents carrying it (usually one)."""
    found: dict[str, list[str]] = {}
    wanted = list(dict.fromkeys(doc_ids))
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start:start + LOOKUP_CHUNK]
        body = {"size": MAX_WINDOW, "_source": {"includes": [om.ID_FIELD]},
                "query": {"terms": {om.ID_FIELD: chunk}}}
        for hit in client.search(index=index, body=body)["hits"]["hits"]:
            doc_id = (hit.get("_source") or {}).get(om.ID_FIELD)
            if isinstance(doc_id, str):
                found.setdefault(doc_id, []).append(hit["_id"])
    return found


def find_one(client, index: str, doc_id: str) -> dict[str, Any] | None:
    """The `_source` of one searchable document with this id, or None."""
    body = {"size": 1, "query": {"term": {om.ID_FIELD: doc_id}}}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    return hits[0].get("_source") if hits else None


def scan(client, index: str, page: int = SCAN_PAGE) -> dict[str, list[str]]:
    """doc_id -> `_id`s for every searchable document, paging in doc_id order with search_after.

    search_after on the doc_id alone skips the rest of a run of equal doc_ids cut by a page
    boundary, so the doc_id at each boundary is looked up on its own."""
    found: dict[str, list[str]] = {}
    after: list | None = None
    while True:
        body: dict[str, Any] = {"size": page, "_source": False, "sort": [{om.ID_FIELD: "asc"}],
                                "query": {"match_all": {}}}
        if after is not None:
            body["search_after"] = after
        hits = client.search(index=index, body=body)["hits"]["hits"]
        for hit in hits:
            found.setdefault(str(hit["sort"][0]), []).append(hit["_id"])
        if len(hits) < page:
            return found
        after = hits[-1]["sort"]
        boundary = str(after[0])
        found[boundary] = assigned_ids(client, index, [boundary]).get(boundary, found[boundary])
