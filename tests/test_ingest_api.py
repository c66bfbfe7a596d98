"""`ingest.run(source, settings, options)` called as a library: no argv, no environment; a source
of one's own through the `Source` interface; the same summary as the command line."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

import numpy as np
import pytest

import ingest
from clipsearch.config import IndexSettings, ModelSettings, Settings
from clipsearch.index import Document
from clipsearch.index.faiss_index import FaissIndex
from conftest import make_image
from ingest.sources.base import Item, SourceContext
from ingest.sources.folder import FolderSource


@pytest.fixture
def settings(tiny_model_dir, tmp_path, monkeypatch) -> Settings:
    # The environment names another model and index: the library must use only what it is given.
    monkeypatch.setenv("INDEX_PATH", str(tmp_path / "from-env"))
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "no-such-model"))
    return Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1),
                    index=IndexSettings(path=str(tmp_path / "idx")))


def options(tmp_path, **kw) -> ingest.IngestOptions:
    return ingest.IngestOptions(cache_dir=tmp_path / "cache", progress=False, batch_size=4, **kw)


def test_a_folder_through_the_library(settings, photo_folder, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    environ = dict(os.environ)
    summary = ingest.run(FolderSource(folder), settings, options(tmp_path))
    assert dict(os.environ) == environ
    assert (summary.source, summary.found, summary.encoded, summary.indexed, summary.index_count) == (
        "folder", 12, 12, 12, 12)
    assert not summary.failed and summary.slowest_stage in summary.stage_seconds
    assert FaissIndex.load(tmp_path / "idx").count() == 12 and not (tmp_path / "from-env").exists()
    assert set(summary.to_dict()) >= {"found", "skipped", "failures", "encoded", "indexed", "stage_seconds",
                                      "slowest_stage", "warnings"}

    next(folder.rglob("*.png")).unlink()
    again = ingest.run(FolderSource(folder), settings, options(tmp_path))  # idempotent, and incremental
    assert (again.encoded, again.indexed, again.deleted, again.skipped["unchanged"], again.index_count) == (
        0, 0, 1, 11, 11)


class Listed:
    """A source of one's own: photos with ids of their own, and one id it says is gone."""

    name, stage = "listed", "list"

    def __init__(self, items: list[Item], gone: set[str]):
        self.list, self.gone = items, gone
        self.checkpoints: list[dict[str, str]] = []
        self.context: SourceContext | None = None

    def items(self, ctx: SourceContext) -> list[Item]:
        self.context = ctx
        ctx.summary.found = len(self.list)
        todo = [item for item in self.list if item.doc_id not in ctx.indexed_ids]
        ctx.summary.skipped["already indexed"] += len(self.list) - len(todo)
        return todo

    def checkpoint(self, done: Mapping[str, str]) -> None:
        self.checkpoints.append(dict(done))

    def removed(self, done: Mapping[str, str]) -> set[str]:
        return self.gone


def test_a_source_of_ones_own(settings, tmp_path, tiny_encoder):
    old = FaissIndex(tmp_path / "idx", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    old.upsert([Document("old", tiny_encoder.encode_text(["old"])[0], {"source": "listed"})])
    old.save()
    items = []
    for i in range(6):
        path = tmp_path / f"p{i}.jpg"
        path.write_bytes(make_image(900 + i))
        items.append(Item(f"photo {i}", path, f"photo{i}", {"source": "listed", "description": f"number {i}"}))
    items.append(Item("broken", tmp_path / "nowhere.jpg", "broken"))

    source = Listed(items, gone={"old"})
    summary = ingest.run(source, settings, options(tmp_path, save_every=1))
    assert source.context.index_location.startswith("faiss:") and source.context.indexed_ids == {"old"}
    assert source.context.state_dir == tmp_path / "cache" / "state"
    assert (summary.source, summary.found, summary.indexed, summary.deleted, summary.index_count) == (
        "listed", 7, 6, 1, 6)
    assert [f[0] for f in summary.failed] == ["broken"] and summary.failed[0][1].startswith("unreadable:")
    assert "list" in summary.stage_seconds
    # told after each save what the index holds, the last time after the deletion and the final save
    assert [len(c) for c in source.checkpoints] == [4, 6, 6]
    assert source.checkpoints[-1] == {f"photo {i}": f"photo{i}" for i in range(6)}
    index = FaissIndex.load(tmp_path / "idx")
    assert sorted(index.ids()) == [f"photo{i}" for i in range(6)]
    assert index.get("photo3").metadata == {"source": "listed", "description": "number 3"}
    np.testing.assert_allclose(np.linalg.norm(index.get("photo3").vector), 1.0, atol=1e-5)

    again = ingest.run(Listed(items, gone=set()), settings, options(tmp_path))
    assert (again.indexed, again.encoded, again.skipped["already indexed"]) == (0, 0, 6)


def test_a_run_that_cannot_go_on_raises_and_releases_the_lock(settings, photo_folder, tmp_path, tiny_encoder):
    from clipsearch.errors import ClipsearchError

    other = FaissIndex(tmp_path / "idx", model_id="someone/else", dim=tiny_encoder.dim)
    other.upsert([Document("x", np.ones(tiny_encoder.dim, dtype=np.float32) / np.sqrt(tiny_encoder.dim))])
    other.save()
    with pytest.raises(ClipsearchError):
        ingest.run(FolderSource(photo_folder), settings, options(tmp_path))
    from ingest.lock import lock_index

    lock_index(tmp_path / "idx").close()  # free again: the failed run let go of it
