"""The runner over the real stages (tiny model, real FAISS index, real files): every stage timed,
the slowest named, an item a stage cannot handle reported and the others written."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.faiss_index import FaissIndex
from conftest import make_image
from ingest.cache import EmbeddingCache, NoCache
from ingest.decode import decode_chunk
from ingest.progress import STAGES, Summary
from ingest.runner import Runner, RunnerOptions, Stages
from ingest.sources.base import Item
from ingest.stages.encode import EncodeStage
from ingest.stages.read import ReadStage
from ingest.stages.write import WriteStage
from test_ingest_pipeline import CRASH, crashing_decoder

PAUSE = 0.25  # seconds a slowed stage sleeps per call: far above what any stage takes on 12 tiny images


def folder_items(folder: Path) -> list[Item]:
    return [Item(str(p), p, None, {"source": "folder"}) for p in sorted(folder.rglob("*")) if p.is_file()]


def runner(encoder, index, options: RunnerOptions, summary: Summary, cache=None, **stages) -> Runner:
    built = Stages.standard(encoder, index, NoCache() if cache is None else cache, options)
    for name, stage in stages.items():
        setattr(built, name, stage)
    return Runner(built, summary, options=options)


class SlowRead(ReadStage):
    def __call__(self, item):
        time.sleep(PAUSE / 4)  # per item: 12 items, 3 batches
        return super().__call__(item)


def slow_decode(chunk, cfg, limits):
    time.sleep(PAUSE)
    decoded, busy = decode_chunk(chunk, cfg, limits)
    return decoded, busy + PAUSE


class SlowEncode(EncodeStage):
    def __call__(self, batch):
        time.sleep(PAUSE)
        return super().__call__(batch)


class SlowWrite(WriteStage):
    def __call__(self):
        time.sleep(PAUSE)
        return super().__call__()


@pytest.mark.parametrize("slow", ["read", "decode", "encode", "write"])
def test_every_stage_is_timed_and_the_slowest_is_named(tiny_encoder, photo_folder, tmp_path, slow):
    index = FaissIndex(tmp_path / "idx", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    options = RunnerOptions(batch_size=4, chunk=4)
    summary = Summary("folder")
    stages = {"read": lambda: {"read": SlowRead(options.limits.max_bytes)},
              "decode": lambda: {},
              "encode": lambda: {"encode": SlowEncode(tiny_encoder, index.dim)},
              "write": lambda: {"write": SlowWrite(index)}}[slow]()
    run = runner(tiny_encoder, index, options, summary, **stages)
    if slow == "decode":
        run.stages.decode.task = slow_decode
    done = run.run(folder_items(photo_folder))
    run.save()

    assert len(done) == summary.indexed == summary.encoded == 12 and not summary.failed
    seconds = summary.stage_seconds
    assert {"read", "cache", "decode", "encode", "write", "save"} <= set(seconds) <= set(STAGES) | {
        "decode_wait", "load_model"}
    assert seconds[slow] >= 3 * PAUSE  # three batches (or 12 reads of a quarter pause each)
    assert summary.slowest_stage == slow
    assert all(seconds[other] < seconds[slow] for other in STAGES if other in seconds and other != slow)
    assert f"slowest: {slow}" in summary.render() and summary.to_dict()["slowest_stage"] == slow


class Overflowing:
    """The real encoder, except that the rows in `nan_rows` come back NaN: a model that
    overflows on some input."""

    def __init__(self, encoder):
        self.encoder, self.nan_rows = encoder, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_pixels(self, pixels):
        out = np.array(self.encoder.encode_pixels(pixels))
        out[self.nan_rows] = np.nan
        return out


class OverflowsOn(EncodeStage):
    def __init__(self, encoder, dim, key: str):
        super().__init__(Overflowing(encoder), dim)
        self.key = key

    def __call__(self, batch):
        self.encoder.nan_rows = [i for i, entry in enumerate(batch) if entry.item.key == self.key]
        return super().__call__(batch)


def test_an_item_a_stage_fails_is_reported_and_the_rest_are_written(tiny_encoder, photo_folder, tmp_path):
    items = folder_items(photo_folder)
    poisoned = items[5]
    gone = Item(str(tmp_path / "gone.jpg"), tmp_path / "gone.jpg")  # scanned, then removed before it was read
    items.insert(2, gone)

    index = FaissIndex(tmp_path / "idx", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    options = RunnerOptions(batch_size=4, chunk=4)
    summary = Summary("folder")
    run = runner(tiny_encoder, index, options, summary, encode=OverflowsOn(tiny_encoder, index.dim, poisoned.key))
    done = run.run(items)
    run.save()

    failed = dict(summary.failed)
    assert set(failed) == {poisoned.shown, gone.shown}
    assert failed[poisoned.shown].startswith("invalid_vector: the encoder's")
    assert failed[gone.shown].startswith("unreadable:")
    assert summary.failure_reasons() == {"invalid_vector": 1, "unreadable": 1}
    assert poisoned.key not in done and gone.key not in done and len(done) == 11
    assert (summary.encoded, summary.indexed) == (12, 11)  # the poisoned image was encoded, not written
    saved = FaissIndex.load(tmp_path / "idx")
    assert saved.count() == 11 and hashlib.sha256(poisoned.path.read_bytes()).hexdigest() not in saved.ids()


def test_images_decoded_before_a_crash_at_the_end_are_written(tiny_encoder, tmp_path):
    """The last image kills its decode worker: the images decoded just before it (fewer than a
    batch) are still encoded and written, not dropped when the runner finds nothing in flight."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"g{i}.jpg").write_bytes(make_image(300 + i))
    (folder / "z-killer.jpg").write_bytes(CRASH + b" any bytes")
    index = FaissIndex(tmp_path / "idx", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    options = RunnerOptions(batch_size=4, decode_workers=1, chunk=4)
    summary = Summary("folder")
    stages = Stages.standard(tiny_encoder, index, NoCache(), options, decode_task=crashing_decoder)
    run = Runner(stages, summary, options=options)
    done = run.run(folder_items(folder))
    run.save()
    assert [(Path(k).name, r.split(":")[0]) for k, r in summary.failed] == [("z-killer.jpg", "decode_failed")]
    assert summary.encoded == summary.indexed == len(done) == 6
    assert FaissIndex.load(tmp_path / "idx").count() == 6


def test_known_vectors_are_written_and_saved_in_batches(tiny_encoder, photo_folder, tmp_path):
    """A rebuild from the embedding cache (nothing to decode) still writes a batch at a time and
    saves every `save_every` batches: a run killed in the middle keeps what it wrote."""
    items = folder_items(photo_folder)
    options = RunnerOptions(batch_size=4, chunk=4, save_every=1)
    with EmbeddingCache.open(tmp_path / "cache", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim) as cache:
        first = FaissIndex(tmp_path / "first", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
        run = runner(tiny_encoder, first, options, Summary("folder"), cache)
        run.run(items)

        saves: list[int] = []
        index = FaissIndex(tmp_path / "idx", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
        summary = Summary("folder")
        stages = Stages.standard(tiny_encoder, index, cache, options, on_save=lambda done: saves.append(len(done)))
        run = Runner(stages, summary, options=options)
        done = run.run(items)
    assert (summary.encoded, summary.from_cache, summary.indexed, len(done)) == (0, 12, 12, 12)
    assert saves == [4, 8, 12]
    assert FaissIndex.load(tmp_path / "idx").count() == 12
