"""The ingest pipeline: read -> decode + preprocess (workers, prefetch) -> encode (batched) -> write.

Each stage is a small method; the runner (`Pipeline.run`) keeps up to `prefetch` images in the
decode worker processes while the model encodes the previous batch, so the model never waits
for pixels, and times every stage into the run's summary. (On a CPU-only machine the model's
threads already fill every core, so by default decoding runs in this process between batches:
a worker beside them only preempts them. With a GPU the workers are what keeps it fed.)

Resuming: every encoded batch goes to the embedding cache (fsynced) before the index, and the
index is saved every `save_every` batches. A run killed at any point and started again finds
each image either in the index (skipped by the source), in the cache (written without
encoding), or nowhere (encoded again); documents are upserted by id, so none is ever doubled.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections import deque
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from clipsearch.errors import DocumentsRejected, ImageTooLarge, InvalidInput
from clipsearch.index import Document, VectorIndex
from clipsearch.index.base import id_problem, vector_problem
from clipsearch.models import Encoder
from clipsearch.schema import display_text
from clipsearch.schema import orientation
from ingest.cache import EmbeddingCache, NoCache
from ingest.decode import Decoded, DecodeLimits, decode_chunk, normalize_batch
from ingest.progress import Progress, Summary


@dataclass
class Item:
    """One image to ingest. `doc_id` None means content-addressed: the id is the sha256 of the
    file's bytes, and width/height/orientation/content_hash come from the file itself."""

    key: str  # identifies the item to its source: a file path or a photo id
    path: Path  # the file to read: a regular file (links resolved by the source)
    doc_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # what reports call it, when not `key` (printable, JSON-safe)

    @property
    def shown(self) -> str:
        return self.label if self.label is not None else display_text(self.key)


@dataclass
class PipelineOptions:
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
class _Entry:
    item: Item
    doc_id: str
    data: bytes | None = None
    size: tuple[int, int] | None = None
    suspect: bool = False  # was in a chunk whose worker died


class NotRegularFile(OSError):
    """What was scanned as a file is something else now (a FIFO, a device, a directory)."""


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` (ImageTooLarge beyond).

    Opened without following a final symbolic link (sources hand over resolved paths: a link
    swapped in since the scan is refused, not followed) and without blocking (a FIFO swapped in
    would otherwise hang the run), then checked to be a regular file before a byte is read. The
    read stops at `max_bytes` + 1 whatever the size says: files such as /proc's report 0."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file (FIFO, device, socket or directory)")
        if st.st_size > max_bytes:
            raise ImageTooLarge("bytes", st.st_size, max_bytes)
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge("bytes", len(data), max_bytes)
    return data


def _reread(path: Path, max_bytes: int) -> bytes:
    try:
        return read_regular_file(path, max_bytes)
    except (OSError, ImageTooLarge):
        return b""  # gone or changed since it was read: decoding reports it as empty


class _InlineExecutor(Executor):
    """`decode_workers=0`: decode in this process, when the runner asks for the result (so the
    time lands in the decode stage, between batches). A decode *thread* measured far worse on
    CPU: it fights the encoder's threads for the GIL and the cores."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return _DeferredFuture(fn, args, kwargs)


class _DeferredFuture(Future):
    def __init__(self, fn, args, kwargs):
        super().__init__()
        self._call = (fn, args, kwargs)

    def result(self, timeout=None):
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a pool
                self.set_exception(exc)
        return super().result(timeout)


def _worker_init(nice: int) -> None:
    # Decoding is background work: when it competes with the encoder's threads for the cores,
    # the encoder should win (a preempted OpenMP thread stalls the whole forward pass).
    if nice:
        os.nice(nice)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker blocks forever on its task queue if the main process is killed (kill -9): the
    queue's pipe never reports EOF because the worker holds a copy of its write end. Watch the
    parent instead and leave when it is gone (re-parented)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


class Pipeline:
    """Runs items through the stages into `index`. Build once per run; `run` may be called once."""

    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        cache: EmbeddingCache | NoCache,
        options: PipelineOptions,
        summary: Summary,
        progress: Progress | None = None,
        *,
        indexed_ids: set[str] | None = None,
        on_save: Callable[[dict[str, str]], None] | None = None,
    ):
        self.encoder, self.index, self.cache, self.opts = encoder, index, cache, options
        self.summary, self.progress = summary, progress or Progress(False)
        self.indexed_ids = indexed_ids if indexed_ids is not None else set()
        self.on_save = on_save
        self.done: dict[str, str] = {}  # item key -> document id, for what has been written
        self._seen: set[str] = set()
        self._ready: list[tuple[Item, Document]] = []
        self._batches_written = self._saved_at = 0
        self._model_ready = False
        self._bad_cached = 0
        self.decode_fn = decode_chunk  # the decode stage's task (module-level: it runs in workers)

    # -- the runner ------------------------------------------------------------------------
    def run(self, items: Iterable[Item]) -> dict[str, str]:
        """Ingest `items`; returns item key -> document id for everything written. Does not do
        the final `save()`: the source may delete documents first."""
        if hasattr(items, "__len__"):  # known totals give the bars an ETA
            for stage in ("read", "decode", "encode", "index"):
                self.progress.bar(stage, total=len(items))
        self._executor_in_use = self._executor()
        try:
            self._loop(iter(items), self._executor_in_use)
        finally:
            self._executor_in_use.shutdown(wait=True, cancel_futures=True)
        self._timed("write", self._write)
        if self._bad_cached:
            self.summary.warnings.append(f"{self._bad_cached} vector(s) in the embedding cache were not unit vectors "
                                         "(a damaged cache): those images were encoded again")
        return self.done

    def _loop(self, items, executor: Executor) -> None:
        window: deque[tuple[list[_Entry], Future]] = deque()
        in_flight, chunk, decoded = 0, [], []
        exhausted = False
        bs = self.opts.batch_size
        while True:
            t0 = time.perf_counter()
            while not exhausted and in_flight + len(chunk) < self.opts.window:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                entry = self.read(item)
                if entry is not None:
                    chunk.append(entry)
                    if len(chunk) >= self.opts.chunk:
                        window.append(self._submit(executor, chunk))
                        in_flight, chunk = in_flight + len(chunk), []
            if chunk:
                window.append(self._submit(executor, chunk))
                in_flight, chunk = in_flight + len(chunk), []
            self.summary.add_time("read", time.perf_counter() - t0)
            if len(self._ready) >= bs:
                self._timed("write", self._write)
                self._maybe_save()
            if not window:
                break
            entries, future = window.popleft()
            in_flight -= len(entries)
            t0 = time.perf_counter()
            try:
                results, busy = future.result()
            except BrokenExecutor as exc:
                executor = self._recover(executor, entries, window, exc)
                in_flight = sum(len(e) for e, _ in window)
                continue
            finally:
                self.summary.add_time("decode_wait", time.perf_counter() - t0)
            self.summary.add_time("decode", busy)
            decoded.extend(self._collect(entries, results))
            if decoded and not self._model_ready:
                # Loaded only once something needs encoding (a run with everything cached never
                # pays for it); the workers go on decoding the window meanwhile.
                self._timed("load_model", self._warm_up)
            while len(decoded) >= bs or (decoded and exhausted and not window):
                batch, decoded = decoded[:bs], decoded[bs:]
                self.encode_and_write(batch)

    def _recover(self, executor: Executor, crashed: list[_Entry], window: deque, exc: Exception) -> Executor:
        """A worker died (a decoder crash on some file, the OOM killer): start a new pool and
        resubmit what was in flight. The crashed chunk is retried one image per task, so only the
        image that kills a worker on its own is reported as failed."""
        executor.shutdown(wait=False, cancel_futures=True)
        executor = self._executor_in_use = self._executor()  # run() shuts down whichever is last
        pending = [entries for entries, _ in window]
        window.clear()
        if len(crashed) == 1 and crashed[0].suspect:
            self.summary.fail(crashed[0].item.shown, f"decode_failed: the decoder crashed on this file ({exc})")
            self._seen.discard(crashed[0].doc_id)
            self.progress.update("decode", 1)
        else:
            for entry in crashed:
                entry.suspect = True
            pending = [[entry] for entry in crashed] + pending
        for entries in pending:
            for entry in entries:
                entry.data = _reread(entry.item.path, self.opts.limits.max_bytes)
            window.append(self._submit(executor, entries))
        return executor

    def _executor(self) -> Executor:
        if self.opts.decode_workers <= 0:
            return _InlineExecutor()
        import multiprocessing

        # spawn, not fork: this process may already run torch's thread pools, which fork breaks.
        return ProcessPoolExecutor(self.opts.decode_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(self.opts.worker_nice,))

    def _submit(self, executor: Executor, chunk: list[_Entry]) -> tuple[list[_Entry], Future]:
        payload = [e.data for e in chunk]
        for e in chunk:
            e.data = None  # the worker has its copy; keep the window's memory to one copy
        return chunk, executor.submit(self.decode_fn, payload, self.encoder.preprocess_config, self.opts.limits)

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.summary.add_time(stage, time.perf_counter() - t0)

    # -- stages ----------------------------------------------------------------------------
    def read(self, item: Item) -> _Entry | None:
        """Read the file and settle its id. Returns what still needs decoding, or None when the
        item failed, is a duplicate, or its vector is already known (cache or index)."""
        self.progress.update("read")
        try:
            data = read_regular_file(item.path, self.opts.limits.max_bytes)
        except ImageTooLarge as exc:
            self.summary.fail(item.shown, f"{exc.code}: {exc}")
            return None
        except OSError as exc:
            self.summary.fail(item.shown, f"unreadable: {exc.strerror or exc}")
            return None
        doc_id = item.doc_id or hashlib.sha256(data).hexdigest()
        problem = id_problem(doc_id)
        if problem is not None:  # a source's id no index can hold (say, over 512 bytes)
            self.summary.fail(item.shown, f"bad_id: {problem}")
            return None
        if doc_id in self._seen:
            self.summary.skipped["duplicate content"] += 1
            self.done[item.key] = doc_id
            return None
        self._seen.add(doc_id)
        known = self._known_vector(doc_id)
        if known is not None:
            vector, extras = known
            self.summary.from_cache += 1
            self._ready.append((item, Document(doc_id, vector, self._metadata(item, doc_id, extras))))
            return None
        return _Entry(item, doc_id, data)

    def _known_vector(self, doc_id: str) -> tuple[np.ndarray, dict] | None:
        cached = self.cache.get(doc_id)
        if cached is not None:
            if vector_problem(cached[0], self.index.dim) is None:
                return cached
            self._bad_cached += 1  # a damaged (or hostile) cache entry: encode the image again
        if doc_id in self.indexed_ids:  # e.g. a moved file: same bytes, new path; reuse its vector
            doc = self.index.get(doc_id)
            extras = {k: doc.metadata[k] for k in ("width", "height") if k in doc.metadata}
            self.cache.append([doc_id], np.asarray(doc.vector, dtype=np.float32).reshape(1, -1), [extras])
            return doc.vector, extras
        return None

    def _collect(self, entries: list[_Entry], results: list[Decoded]) -> list[tuple[_Entry, np.ndarray]]:
        ok = []
        for entry, result in zip(entries, results):
            if result.error is not None:
                self.summary.fail(entry.item.shown, result.error)
                self._seen.discard(entry.doc_id)
            else:
                entry.size = result.size
                ok.append((entry, result.crop))
        self.progress.update("decode", len(entries))
        return ok

    def _warm_up(self) -> None:
        if "vision" in getattr(self.encoder, "loaded_towers", ()):  # loaded by the caller already
            self._model_ready = True
            return
        cfg = self.encoder.preprocess_config
        self.encoder.encode_pixels(np.zeros((1, 3, cfg.crop_height, cfg.crop_width), dtype=np.float32))
        self._model_ready = True

    def encode_and_write(self, batch: list[tuple[_Entry, np.ndarray]]) -> None:
        t0 = time.perf_counter()
        pixels = normalize_batch([crop for _, crop in batch], self.encoder.preprocess_config)
        vectors = self.encoder.encode_pixels(pixels)
        self.summary.add_time("encode", time.perf_counter() - t0)
        self.summary.encoded += len(batch)
        self.progress.update("encode", len(batch))
        t0 = time.perf_counter()
        good = []
        for (entry, _), vector in zip(batch, vectors):
            problem = vector_problem(vector, self.index.dim)
            if problem is None:
                good.append((entry, vector, {"width": entry.size[0], "height": entry.size[1]}))
            else:  # a model that overflows on some input: that image is reported, the run goes on
                self.summary.fail(entry.item.shown, f"invalid_vector: the encoder's {problem}")
                self._seen.discard(entry.doc_id)
        if good:  # durable before the index
            self.cache.append([e.doc_id for e, _, _ in good], np.stack([v for _, v, _ in good]), [x for _, _, x in good])
        for entry, vector, extra in good:
            self._ready.append((entry.item, Document(entry.doc_id, vector, self._metadata(entry.item, entry.doc_id, extra))))
        self._write()
        self.summary.add_time("write", time.perf_counter() - t0)
        self._maybe_save()
        if self.opts.batch_delay:
            time.sleep(self.opts.batch_delay)

    def _metadata(self, item: Item, doc_id: str, extras: dict | None) -> dict[str, Any]:
        meta = dict(item.metadata)
        if item.doc_id is None:  # content-addressed: the file is the only source of facts
            meta["content_hash"] = doc_id
            w, h = (extras or {}).get("width"), (extras or {}).get("height")
            if w and h:
                meta.update(width=int(w), height=int(h), orientation=orientation(int(w), int(h)))
        return meta

    def _write(self) -> None:
        if not self._ready:
            return
        ready, self._ready = self._ready, []
        try:
            self.summary.indexed += self.index.upsert([doc for _, doc in ready])
            rejected: dict[str, str] = {}
        except DocumentsRejected as exc:  # the others are written: report these, go on
            self.summary.indexed += exc.written
            rejected = exc.rejected
        except InvalidInput:  # a document the index refuses before writing any: write the others one by one
            ready, rejected = self._write_one_by_one(ready), {}
        for item, doc in ready:
            if doc.id in rejected:
                self.summary.fail(item.shown, f"rejected_by_index: {rejected[doc.id]}")
                continue
            self.done[item.key] = doc.id
            self.indexed_ids.add(doc.id)
        self.progress.update("index", len(ready))
        self._batches_written += 1

    def _write_one_by_one(self, ready: list[tuple[Item, Document]]) -> list[tuple[Item, Document]]:
        written = []
        for item, doc in ready:
            try:
                self.summary.indexed += self.index.upsert([doc])
                written.append((item, doc))
            except InvalidInput as exc:
                self.summary.fail(item.shown, f"invalid_document: {exc}")
        return written

    def _maybe_save(self) -> None:
        if self._batches_written - self._saved_at >= max(1, self.opts.save_every):
            self.save()

    def save(self) -> None:
        """Make the index durable, then tell the source (which records its own state after it)."""
        t0 = time.perf_counter()
        self._saved_at = self._batches_written
        self.index.save()
        if self.on_save is not None:
            self.on_save(dict(self.done))
        self.summary.add_time("save", time.perf_counter() - t0)
