"""The runner: items through the stages (ingest.stages) into the index, every stage timed.

    read -> cache lookup --(known)--------------------------------------> write -> save
                         --(new)--> decode -> encode -> cache append --> write -> save

The runner keeps up to `window` images in the decode stage while the model encodes the previous
batch, so the model never waits for pixels; it times each stage into the run's summary (whose
`slowest_stage` names the bottleneck) and records every item a stage could not handle there,
going on with the others.

Resuming: every encoded batch goes to the embedding cache (fsynced) before the index, and the
index is saved every `save_every` batches. A run killed at any point and started again finds
each image either in the index (skipped by the source), in the cache (written without
encoding), or nowhere (encoded again); documents are upserted by id, so none is ever doubled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from clipsearch.index import VectorIndex
from clipsearch.models import Encoder
from ingest.cache import EmbeddingCache, NoCache
from ingest.decode import DecodeLimits, decode_chunk
from ingest.progress import Progress, Summary
from ingest.sources.base import Item
from ingest.stages.base import Entry, ItemFailed
from ingest.stages.cache import CacheStage
from ingest.stages.decode import DecodeStage, DecodeTask
from ingest.stages.encode import EncodeStage
from ingest.stages.read import ReadStage
from ingest.stages.write import Checkpoint, WriteStage


@dataclass(frozen=True)
class RunnerOptions:
    batch_size: int = 32
    decode_workers: int = 0  # worker processes; 0 = decode in this process, between batches
    prefetch: int | None = None  # images read ahead of the encoder; default 4 batches
    chunk: int = 4  # images per worker task: fewer round trips through the pipe
    save_every: int = 10  # save the index every N written batches
    limits: DecodeLimits = DecodeLimits(max_bytes=50 * 1024 * 1024, max_pixels=40_000_000)
    worker_nice: int = 10  # decode workers' niceness: below the encoder
    batch_delay: float = 0.0  # tests only: sleep after each encoded batch, to be killed mid-run

    @property
    def window(self) -> int:
        return max(self.prefetch or 4 * self.batch_size, self.chunk)


@dataclass
class Stages:
    read: ReadStage
    cache: CacheStage
    decode: DecodeStage
    encode: EncodeStage
    write: WriteStage
    checkpoint: Checkpoint

    @classmethod
    def standard(cls, encoder: Encoder, index: VectorIndex, cache: EmbeddingCache | NoCache, options: RunnerOptions,
                 *, indexed_ids: set[str] | None = None, on_save: Callable[[dict[str, str]], None] | None = None,
                 decode_task: DecodeTask = decode_chunk) -> "Stages":
        """The stages of an ingest into `index`. `indexed_ids`: what it holds already (a moved
        file's vector is taken from it); `on_save`: the source's checkpoint hook."""
        return cls(
            read=ReadStage(options.limits.max_bytes),
            cache=CacheStage(cache, index, indexed_ids if indexed_ids is not None else set()),
            decode=DecodeStage(encoder.preprocess_config, options.limits, workers=options.decode_workers,
                               nice=options.worker_nice, task=decode_task),
            encode=EncodeStage(encoder, index.dim),
            write=WriteStage(index),
            checkpoint=Checkpoint(index, options.save_every, on_save),
        )


class Runner:
    """Runs items through `stages`. Build once per run; `run` may be called once, then `save`."""

    def __init__(self, stages: Stages, summary: Summary, progress: Progress | None = None,
                 options: RunnerOptions = RunnerOptions()):
        self.stages, self.summary, self.opts = stages, summary, options
        self.progress = progress or Progress(False)
        self._claimed: set[str] = set()  # document ids an item of this run is bringing in

    def run(self, items: Iterable[Item]) -> dict[str, str]:
        """Ingest `items`; returns item key -> document id for everything written. Does not do
        the final `save()`: the source may delete documents first."""
        if hasattr(items, "__len__"):  # known totals give the bars an ETA
            for bar in ("read", "decode", "encode", "index"):
                self.progress.bar(bar, total=len(items))
        decode, batch_size = self.stages.decode, self.opts.batch_size
        pending, decoded, exhausted = iter(items), [], False
        with decode:
            while True:
                exhausted = exhausted or self._fill(pending)
                if decode.in_flight:
                    decoded += self._take()
                while len(decoded) >= batch_size or (decoded and exhausted and not decode.in_flight):
                    batch, decoded = decoded[:batch_size], decoded[batch_size:]
                    self._encode_and_write(batch)
                if exhausted and not decode.in_flight:
                    break
        self._write(checkpoint=False)  # the caller saves once it is done with the index
        if self.stages.cache.bad:
            self.summary.warnings.append(f"{self.stages.cache.bad} vector(s) in the embedding cache were not unit "
                                         "vectors (a damaged cache): those images were encoded again")
        return dict(self.stages.write.done)

    def save(self) -> None:
        """Make the index durable, then tell the source (which records its own state after it)."""
        self._timed("save", self.stages.checkpoint, self.stages.write.batches, self.stages.write.done)

    # -- driving the stages ----------------------------------------------------------------
    def _fill(self, items: Iterator[Item]) -> bool:
        """Read ahead until the decode window is full; returns whether the items ran out."""
        decode, chunk = self.stages.decode, []
        exhausted = False
        while decode.in_flight + len(chunk) < self.opts.window:
            item = next(items, None)
            if item is None:
                exhausted = True
                break
            entry = self._read(item)
            if entry is not None:
                chunk.append(entry)
                if len(chunk) >= self.opts.chunk:
                    self._timed("read", decode.submit, chunk)
                    chunk = []
        if chunk:
            self._timed("read", decode.submit, chunk)
        return exhausted

    def _read(self, item: Item) -> Entry | None:
        """The entry still to decode, or None when the item failed, repeats one of this run, or
        its vector is known (then it waits in the write stage)."""
        self.progress.update("read")
        try:
            entry = self._timed("read", self.stages.read, item)
        except ItemFailed as exc:
            self.summary.fail(item.shown, exc.reason)
            return None
        if entry.doc_id in self._claimed:
            self.summary.skipped["duplicate content"] += 1
            self.stages.write.duplicate(entry)
            return None
        self._claimed.add(entry.doc_id)
        if self._timed("cache", self.stages.cache.lookup, entry):
            self.summary.from_cache += 1
            self.stages.write.add(entry)
            if self.stages.write.waiting >= self.opts.batch_size:  # written (and saved) in batches too
                self._write()
            return None
        return entry

    def _take(self) -> list[Entry]:
        taken = self._timed("decode_wait", self.stages.decode.take)
        self.summary.add_time("decode", taken.busy)
        for entry, reason in taken.failed:
            self._fail(entry, reason)
        self.progress.update("decode", len(taken.ok) + len(taken.failed))
        if taken.ok and not self.stages.encode.ready:
            # The workers go on decoding the window meanwhile.
            self._timed("load_model", self.stages.encode.warm_up)
        return taken.ok

    def _encode_and_write(self, batch: list[Entry]) -> None:
        encoded, failed = self._timed("encode", self.stages.encode, batch)
        self.summary.encoded += len(batch)
        self.progress.update("encode", len(batch))
        for entry, reason in failed:
            self._fail(entry, reason)
        self._timed("cache", self.stages.cache, encoded)  # durable before the index
        for entry in encoded:
            self.stages.write.add(entry)
        self._write()
        if self.opts.batch_delay:
            time.sleep(self.opts.batch_delay)

    def _write(self, *, checkpoint: bool = True) -> None:
        write = self.stages.write
        if not write.waiting:
            return
        written = self._timed("write", write)
        self.summary.indexed += written.indexed
        for item, reason in written.failed:
            self.summary.fail(item.shown, reason)
        self.progress.update("index", written.handled)
        if checkpoint and self.stages.checkpoint.due(write.batches):
            self.save()

    def _fail(self, entry: Entry, reason: str) -> None:
        self.summary.fail(entry.item.shown, reason)
        self._claimed.discard(entry.doc_id)  # another item with these bytes may still bring them in

    def _timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.summary.add_time(stage, time.perf_counter() - t0)
