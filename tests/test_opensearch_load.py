"""The end of a load on a managed cluster: one force merge after the last checkpoint (polled, so a
dropped request does not fail the load), the serving settings back (even when another load paused
the index too), the k-NN graphs warmed, and only then the alias moved."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np
import pytest

from clipsearch.errors import ClipsearchError
from clipsearch.index import Document
from clipsearch.index.opensearch import OpenSearchIndex
from clipsearch.index.opensearch_client import make_client
from fake_opensearch import FakeOpenSearch
from test_opensearch import Cluster, docs, loaded, open_ingest

DIM = 16


def _paths(fake, since: int = 0) -> list[str]:
    return [f"{r.method} {r.path.split('?')[0]}" for r in fake.requests[since:]]


def test_force_merge_runs_once_after_the_last_checkpoint():
    with FakeOpenSearch(merge_seconds=0.3) as fake:
        settings = Cluster(fake.url, fake, "merge").settings(force_merge=True)
        index = open_ingest(settings)
        ds, _ = docs(40)
        with index.loading():
            for start in range(0, 40, 10):  # four batches, a checkpoint after each
                index.upsert(ds[start:start + 10])
                index.save()
            assert fake.indices[index.index].force_merges == 0  # checkpoints never merge
        idx = fake.indices[index.index]
        assert idx.force_merges == 1 and idx.segment_count() == 1 and index.count() == 40
        calls = _paths(fake)
        merge = calls.index(f"POST /{index.index}/_forcemerge")
        refreshes = [i for i, c in enumerate(calls) if c == f"POST /{index.index}/_refresh"]
        assert len(refreshes) == 5 and refreshes[-1] < merge  # after the final refresh
        assert calls.index(f"PUT /{index.index}/_alias/merge") > merge  # the alias moves after it
        request = next(r for r in fake.requests if "_forcemerge" in r.path)
        assert "wait_for_completion=false" in request.path and "max_num_segments=1" in request.path


def test_a_dropped_force_merge_request_does_not_fail_the_load(caplog, monkeypatch):
    """A load balancer closes a long idle request (504, or no answer at all): the merge goes on in
    the cluster, and the load waits for it by polling the segment count."""
    with FakeOpenSearch(merge_seconds=0.5) as fake:
        settings = Cluster(fake.url, fake, "dropped").settings(force_merge=True)
        index = open_ingest(settings)
        fake.drop(times=2, path="_forcemerge", after=True)  # the client retries once
        with caplog.at_level(logging.INFO, "clipsearch.index.opensearch"), index.loading():
            for seed in (1, 2):  # two segments: the merge takes merge_seconds to bring them to one
                index.upsert(docs(10, seed=seed)[0])
                index.save()
        assert "without an answer" in caplog.text and "force merge of" in caplog.text and "done" in caplog.text
        assert fake.indices[index.index].segment_count() == 1 and fake.aliases == {"dropped": {index.index}}
        # Refused before it reached the cluster: the merge never started. When the count stops
        # falling, the request goes again.
        monkeypatch.setattr("clipsearch.index.opensearch_load.MERGE_STALL_S", 0.5)
        fake.fail(504, times=2, path="_forcemerge")
        caplog.clear()
        with caplog.at_level(logging.WARNING, "clipsearch.index.opensearch"), index.loading():
            index.upsert(docs(5, seed=3)[0])
        assert "HTTP 504" in caplog.text and "asking again" in caplog.text
        assert fake.indices[index.index].segment_count() == 1


def test_a_merge_past_its_bound_is_left_running(caplog):
    with FakeOpenSearch(merge_seconds=30) as fake:
        settings = Cluster(fake.url, fake, "slow").settings(force_merge=True)
        index = open_ingest(settings, merge_wait_s=0.5)
        with caplog.at_level(logging.WARNING, "clipsearch.index.opensearch"), index.loading():
            for seed in (1, 2):  # two segments, so there is something to merge
                index.upsert(docs(10, seed=seed)[0])
                index.save()
        assert "still running" in caplog.text and fake.aliases == {"slow": {index.index}}


def test_a_refused_force_merge_fails_the_load_and_restores_settings(fake_opensearch):
    settings = Cluster(fake_opensearch.url, fake_opensearch, "refused").settings(force_merge=True)
    index = open_ingest(settings)
    fake_opensearch.fail(400, times=1, path="_forcemerge")
    with pytest.raises(ClipsearchError, match="force-merging"), index.loading():
        index.upsert(docs(5)[0])
    assert "index.refresh_interval" not in fake_opensearch.indices[index.index].settings
    assert fake_opensearch.aliases == {}


def test_the_graphs_are_warmed_once_after_the_load_before_the_alias_moves(fake_opensearch):
    settings = Cluster(fake_opensearch.url, fake_opensearch, "warm").settings()
    index = open_ingest(settings)
    with index.loading():
        index.upsert(docs(10)[0])
        index.save()
        index.upsert(docs(10, seed=1)[0])
        index.save()
        assert fake_opensearch.indices[index.index].warmups == 0
    assert fake_opensearch.indices[index.index].warmups == 1
    calls = _paths(fake_opensearch)
    warm = calls.index(f"GET /_plugins/_knn/warmup/{index.index}")
    assert calls.index(f"PUT /{index.index}/_settings") < warm < calls.index(f"PUT /{index.index}/_alias/warm")


def test_a_failed_warmup_is_logged_and_the_load_completes(fake_opensearch, caplog):
    settings = Cluster(fake_opensearch.url, fake_opensearch, "cold").settings()
    index = open_ingest(settings)
    fake_opensearch.fail(403, times=1, path="/_plugins/_knn/warmup")
    with caplog.at_level(logging.WARNING, "clipsearch.index.opensearch"), index.loading():
        index.upsert(docs(5)[0])
    assert "warmup" in caplog.text and fake_opensearch.aliases == {"cold": {index.index}}


def test_two_concurrent_loads_leave_the_serving_settings_behind():
    """The second load finds the index paused by the first (refresh -1, no replicas): it must
    restore the serving values, not the first load's pause."""
    with FakeOpenSearch() as fake:
        settings = Cluster(fake.url, fake, "both").settings(replicas=1)
        first = open_ingest(settings)
        client = make_client(settings)

        def current():
            got = client.indices.get_settings(index=first.index, params={"flat_settings": "true"})
            flat = got[first.index]["settings"]
            return flat.get("index.refresh_interval"), flat.get("index.number_of_replicas")

        client.indices.put_settings(index=first.index, body={"index.number_of_replicas": 0})
        client.indices.put_settings(index=first.index, body={"index.number_of_replicas": 1})
        before = current()
        second = open_ingest(settings)
        assert second.index == first.index
        barrier = threading.Barrier(2)
        errors = []

        def load(index: OpenSearchIndex, seed: int, finish_first: bool) -> None:
            try:
                with index.loading():
                    barrier.wait(5)  # both paused
                    index.upsert(docs(20, seed=seed)[0])
                    if not finish_first:
                        done.wait(5)  # the other load ends while this one still runs
                if finish_first:
                    done.set()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        done = threading.Event()
        threads = [threading.Thread(target=load, args=(first, 1, True)),
                   threading.Thread(target=load, args=(second, 2, False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert current() == before == (None, "1")
        # A load killed while paused leaves -1 behind; the next load restores the serving values.
        client.indices.put_settings(index=first.index, body={"index.refresh_interval": "-1",
                                                             "index.number_of_replicas": 0})
        with open_ingest(settings).loading():
            pass
        assert current() == (None, "1")


def test_a_deleted_index_recreated_by_a_write_never_gets_the_alias(fake_opensearch):
    """A bulk request into a deleted index creates it again with a guessed mapping (auto-create):
    the load fails with the fix instead of pointing the alias at it."""
    settings = Cluster(fake_opensearch.url, fake_opensearch, "gone").settings()
    index = open_ingest(settings)
    with pytest.raises(ClipsearchError, match="re-created without clipsearch's mapping"), index.loading():
        index.upsert(docs(5)[0])
        make_client(settings).indices.delete(index=index.index)
        index.upsert(docs(5, seed=2)[0])
    assert fake_opensearch.aliases == {}
    assert fake_opensearch.indices[index.index].props["vector"]["type"] == "float"  # what auto-create guessed


def test_save_outside_a_load_merges_only_when_asked(fake_opensearch):
    settings = Cluster(fake_opensearch.url, fake_opensearch, "plain").settings()
    index, _, _ = loaded(settings, n=5)
    assert fake_opensearch.indices[index.index].force_merges == 0
    index.save(force_merge=True)
    assert fake_opensearch.indices[index.index].force_merges == 1
    merging = open_ingest(replace(settings, force_merge=True))
    merging.upsert([Document("extra", np.ones(DIM))])
    merging.save()
    assert fake_opensearch.indices[index.index].force_merges == 2


def test_a_single_node_cluster_with_replicas_does_not_stall_the_warmup(fake_opensearch):
    """Replicas that can never be allocated (one node) leave the index yellow: the load waits for
    recovering copies only, so it completes at once and warms the graphs."""
    import time

    settings = Cluster(fake_opensearch.url, fake_opensearch, "onenode").settings(replicas=1)
    index = open_ingest(settings)
    t0 = time.monotonic()
    with index.loading():
        index.upsert(docs(5)[0])
    assert time.monotonic() - t0 < 5 and fake_opensearch.indices[index.index].warmups == 1
    health = next(r for r in fake_opensearch.requests if r.path.startswith("/_cluster/health"))
    assert "wait_for_no_initializing_shards=true" in health.path and "wait_for_status" not in health.path
