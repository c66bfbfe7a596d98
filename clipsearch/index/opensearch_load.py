"""The steps around a bulk load that are not writes: pausing refresh and replicas, merging,
warming the k-NN graphs, and (Serverless) waiting until the collection answers what was loaded.

Each step takes the client, the physical index and the error guard of its caller; none of them
moves the alias (opensearch_alias does that, after these).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from clipsearch.errors import BackendUnavailable, ClipsearchError
from clipsearch.index import opensearch_ids as ids
from clipsearch.index.opensearch_bulk import Action, BulkWriter
from clipsearch.index.opensearch_errors import Guard

log = logging.getLogger("clipsearch.index.opensearch")
PAUSED = {"index.refresh_interval": "-1", "index.number_of_replicas": 0}
# A force merge may take hours on a large index; past this bound the load completes anyway
# (the merge goes on in the cluster) and the log says so.
MERGE_WAIT_S = 6 * 3600.0
MERGE_STALL_S = 300.0  # no fewer segments for this long: the merge request is sent again
HEALTH_WAIT_S = 300  # replicas allocated after the load, before the graphs are warmed
WARMUP_TIMEOUT_S = 900.0
SETTLE_WAIT_S = 600.0  # Serverless: refresh every 10-60 s, plus scans and deletes


def poll_delays(first: float = 0.2, most: float = 10.0):
    """0.2, 0.4, ... up to `most` seconds between polls: quick on a small index, gentle on a big one."""
    delay = first
    while True:
        yield delay
        delay = min(most, delay * 2)


# -- settings ----------------------------------------------------------------------------------
def serving_settings(flat: dict[str, Any], serving_replicas: int) -> dict[str, Any]:
    """The refresh interval and replica count to restore after a load, from the index's current
    flat settings. A refresh interval of -1 means another load paused the index (or one was
    killed while it had): its -1 and 0 are not the serving values, which are then the defaults
    the index was created with (the refresh default, `serving_replicas` from its `_meta`)."""
    if str(flat.get("index.refresh_interval")) == "-1":
        return {"index.refresh_interval": None, "index.number_of_replicas": serving_replicas}
    return {"index.refresh_interval": flat.get("index.refresh_interval"),
            "index.number_of_replicas": flat.get("index.number_of_replicas")}


def pause(client, index: str, guard: Guard, serving_replicas: int) -> dict[str, Any]:
    """Turn refresh and replicas off for a load; returns the settings to restore."""
    with guard("reading index settings"):
        got = client.indices.get_settings(index=index, params={"flat_settings": "true"})
    saved = serving_settings(next(iter(got.values()))["settings"], serving_replicas)
    with guard("pausing refresh"):
        client.indices.put_settings(index=index, body=PAUSED)
    return saved


def restore(client, index: str, guard: Guard, saved: dict[str, Any]) -> None:
    with guard("restoring index settings"):
        # None resets a setting to its default, which is what an absent value meant.
        client.indices.put_settings(index=index, body=saved)


# -- force merge --------------------------------------------------------------------------------
def _primaries(client, index: str, guard: Guard) -> int:
    with guard("reading index settings"):
        got = client.indices.get_settings(index=index, params={"flat_settings": "true"})
    return int(next(iter(got.values()))["settings"].get("index.number_of_shards", 1))


def force_merge(client, index: str, guard: Guard, wait_s: float = MERGE_WAIT_S) -> bool:
    """Merge to one segment per shard; True once merged, False if still merging after `wait_s`.

    The request asks not to wait (`wait_for_completion=false`, OpenSearch 2.7+: the API
    specification's indices.forcemerge parameters); progress is then read from the segment
    count. A merge can outlast any HTTP timeout (a load balancer answers 504 to a long idle
    request), so a dropped or timed-out request is not a failure either: the count is polled the
    same way, and when it stops falling for MERGE_STALL_S the request is sent again (a merge
    asked for twice runs once: the second finds the segments merged)."""
    deadline = time.monotonic() + wait_s
    shards = _primaries(client, index, guard)
    _ask_merge(client, index, guard)
    best, moved = None, time.monotonic()
    for delay in poll_delays():
        with guard("reading segment counts"):
            got = client.indices.stats(index=index, metric="segments")
        segments = int(got["indices"][index]["primaries"]["segments"]["count"])
        if segments <= shards:
            log.info("force merge of %s done: %d segment(s) over %d shard(s)", index, segments, shards)
            return True
        if best is None or segments < best:
            best, moved = segments, time.monotonic()
        elif time.monotonic() - moved > MERGE_STALL_S:
            log.warning("force merge of %s: %d segments for %.0f s; asking again", index, segments, MERGE_STALL_S)
            _ask_merge(client, index, guard)
            moved = time.monotonic()
        if time.monotonic() + delay > deadline:
            log.warning("force merge of %s still running after %.0f s (%d segments); the load completes "
                        "without waiting for it", index, wait_s, segments)
            return False
        time.sleep(delay)
    return False  # pragma: no cover - poll_delays never ends


def _ask_merge(client, index: str, guard: Guard) -> None:
    from opensearchpy.exceptions import ConnectionError as OSConnectionError, TransportError

    try:
        client.indices.forcemerge(index=index, params={"max_num_segments": 1, "wait_for_completion": "false"})
    except OSConnectionError as exc:
        log.warning("force merge of %s: the request ended without an answer (%s); polling the segment count",
                    index, type(exc).__name__)
    except TransportError as exc:
        if not isinstance(exc.status_code, int) or exc.status_code not in (429, 502, 503, 504):
            with guard("force-merging"):
                raise
        log.warning("force merge of %s: HTTP %s; polling the segment count", index, exc.status_code)


# -- warmup ---------------------------------------------------------------------------------------
def warm_up(client, index: str) -> bool:
    """Load the index's native k-NN graphs into memory before clients search it.

    Graphs otherwise load on the first search that needs them ("the loading time can cause high
    latency during initial queries", k-NN API documentation, Warmup operation), which the
    server's 10 s timeout turns into 503s on a large new index. The call returns when loading is
    done (k-NN plugin/rest/RestKNNWarmupHandler.java: GET /_plugins/_knn/warmup/{index}). Replica
    copies still recovering are not warmed; they load on their first search. A failure is logged,
    not raised: the index is complete and searchable, only slower at first."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError, TransportError

    # Replica copies restored a moment ago recover first; waiting for green instead would stall a
    # single-node cluster with replicas (yellow for ever). The API specification lists
    # wait_for_no_initializing_shards among cluster.health's parameters.
    with _health_guard():
        client.cluster.health(index=index, params={"wait_for_no_initializing_shards": "true",
                                                   "timeout": f"{HEALTH_WAIT_S}s", "request_timeout": HEALTH_WAIT_S + 30})
    try:
        got = client.transport.perform_request("GET", f"/_plugins/_knn/warmup/{index}",
                                               params={"request_timeout": WARMUP_TIMEOUT_S})
    except (OSConnectionError, TransportError) as exc:
        log.warning("k-NN warmup of %s failed (%s); the first searches will load the graphs", index, exc)
        return False
    failed = (got or {}).get("_shards", {}).get("failed", 0)
    if failed:
        log.warning("k-NN warmup of %s: %s shard(s) failed; they load their graphs on first search", index, failed)
    return not failed


class _health_guard:
    """Waiting for replicas is a courtesy to the warmup: any failure is logged and ignored."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        from opensearchpy.exceptions import ConnectionError as OSConnectionError, TransportError

        if isinstance(exc, (OSConnectionError, TransportError)):
            log.warning("waiting for the index's replicas failed (%s); warming up anyway", exc)
            return True
        return False


# -- Serverless: wait until the collection answers the load ------------------------------------
def settle(client, index: str, guard: Guard, bulk: BulkWriter, *, written: set[str], removed: set[str],
           wait_s: float = SETTLE_WAIT_S) -> int:
    """Wait until every document written is searchable, none removed is, and each id is held by
    exactly one document; returns the number of documents.

    Serverless assigns `_id`s, so a bulk request re-sent after a dropped connection, or a
    document re-written before an earlier copy became searchable (a resumed run), leaves two
    documents with one id: each scan deletes all but one. Serverless refreshes on its own
    ("The refresh interval for indexes on vector search collections is 60 seconds", developer
    guide, "Working with vector search collections", Limitations), so the scans repeat until the
    collection answers exactly what was loaded, or raise after `wait_s`."""
    deadline = time.monotonic() + wait_s
    for delay in poll_delays(most=5.0):
        with guard("listing document ids"):
            seen = ids.scan(client, index)
        # All copies of a removed id go; of any other id, all but one.
        extra = [(doc_id, _id) for doc_id, found in seen.items()
                 for _id in sorted(found)[0 if doc_id in removed else 1:]]
        missing = written - seen.keys()
        if extra:
            _delete(bulk, index, guard, extra)
            log.info("%s: removed %d duplicate or deleted document(s) as they became searchable", index, len(extra))
        elif not missing:
            return len(seen)
        if time.monotonic() + delay > deadline:
            raise BackendUnavailable(
                f"OpenSearch Serverless index {index!r} still does not answer the load after {wait_s:.0f} s "
                f"({len(missing)} document(s) not searchable yet, {len(extra)} to remove); the alias was not "
                "moved: run the same ingest again to finish")
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _delete(bulk: BulkWriter, index: str, guard: Guard, targets: list[tuple[str, str]]) -> None:
    with guard("removing duplicates"):
        result = bulk.run(index, [Action("delete", doc_id, _id) for doc_id, _id in targets])
    if result.errors:
        raise ClipsearchError(f"OpenSearch refused to delete {len(result.errors)} duplicate document(s): "
                              f"{next(iter(result.errors.values()))}")
