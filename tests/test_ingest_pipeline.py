"""The pipeline runner with real worker processes: a worker that dies costs one image, not the run."""

from __future__ import annotations

import os
from pathlib import Path

from clipsearch.index.faiss_index import FaissIndex
from conftest import make_image
from ingest.cache import NoCache
from ingest.decode import decode_chunk
from ingest.progress import Summary
from ingest.runner import Runner, RunnerOptions, Stages
from ingest.sources.base import Item

CRASH = b"CRASH!"


def crashing_decoder(chunk, cfg, limits):
    """Runs in the worker process: dies like a decoder segfault on a marked file."""
    if any(data.startswith(CRASH) for data in chunk):
        os._exit(139)
    return decode_chunk(chunk, cfg, limits)


def test_worker_crash_fails_only_the_culprit(tiny_encoder, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        (folder / f"p{i}.jpg").write_bytes(make_image(300 + i))
    (folder / "p4-killer.jpg").write_bytes(CRASH + b" any bytes")
    paths = sorted(folder.iterdir())
    items = [Item(str(p), p, None, {"source": "folder", "path": str(p)}) for p in paths]
    summary = Summary("folder")
    index = FaissIndex(tmp_path / "idx", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    options = RunnerOptions(batch_size=4, decode_workers=1, chunk=4)
    stages = Stages.standard(tiny_encoder, index, NoCache(), options, decode_task=crashing_decoder)
    pipe = Runner(stages, summary, options=options)
    done = pipe.run(items)
    pipe.save()
    assert [(Path(k).name, r.split(":")[0]) for k, r in summary.failed] == [("p4-killer.jpg", "decode_failed")]
    assert "crashed" in summary.failed[0][1]
    assert summary.encoded == summary.indexed == 10 and len(done) == 10
    assert FaissIndex.load(tmp_path / "idx").count() == 10
