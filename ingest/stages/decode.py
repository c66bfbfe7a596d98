"""The decode stage: read bytes -> uint8 crops, in worker processes, a window of chunks in flight.

The work itself (`ingest.decode.decode_chunk`) is kept free of torch so a spawned worker starts
fast; this stage hands it chunks of images, keeps them in order, and survives a worker that dies.
On a CPU-only machine the model's threads already fill every core, so by default (`workers=0`)
decoding runs in this process when the runner asks for a chunk, between batches: a worker beside
them only preempts them. With a GPU the workers are what keeps it fed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from clipsearch.models.preprocess import PreprocessConfig
from ingest.decode import Decoded, DecodeLimits, decode_chunk
from ingest.stages.base import Entry, Failures
from ingest.stages.read import reread

DecodeTask = Callable[[list[bytes], PreprocessConfig, DecodeLimits], tuple[list[Decoded], float]]


@dataclass
class Taken:
    """One chunk out of the decode stage."""

    ok: list[Entry] = field(default_factory=list)  # with `crop` and `extras` set
    failed: Failures = field(default_factory=list)
    busy: float = 0.0  # seconds the decoder worked on it (in a worker, or here)


class DecodeStage:
    """`submit` chunks of entries, `take` them back in order. Use as a context manager: leaving
    it shuts the workers down."""

    def __init__(self, preprocess: PreprocessConfig, limits: DecodeLimits, *, workers: int = 0, nice: int = 10,
                 task: DecodeTask = decode_chunk):
        self.preprocess, self.limits = preprocess, limits
        self.workers, self.nice = workers, nice
        self.task = task  # module-level: it runs in the workers
        self.in_flight = 0  # images submitted and not taken yet
        self._window: deque[tuple[list[Entry], Future]] = deque()
        self._executor: Executor | None = None

    def __enter__(self) -> "DecodeStage":
        self._executor = self._new_executor()
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, entries: list[Entry]) -> None:
        payload = [e.data for e in entries]
        for e in entries:
            e.data = None  # the worker has its copy; keep the window's memory to one copy
        self._window.append((entries, self._executor.submit(self.task, payload, self.preprocess, self.limits)))
        self.in_flight += len(entries)

    def take(self) -> Taken:
        """The oldest chunk, decoded. After a worker died it may come back empty: the chunks in
        flight were resubmitted, and only an image that kills a worker on its own fails."""
        entries, future = self._window.popleft()
        self.in_flight -= len(entries)
        try:
            results, busy = future.result()
        except BrokenExecutor as exc:
            return Taken(failed=self._recover(entries, exc))
        taken = Taken(busy=busy)
        for entry, result in zip(entries, results):
            if result.error is not None:
                taken.failed.append((entry, result.error))
            else:
                entry.crop, entry.extras = result.crop, {"width": result.size[0], "height": result.size[1]}
                taken.ok.append(entry)
        return taken

    def _recover(self, crashed: list[Entry], exc: Exception) -> Failures:
        """A worker died (a decoder crash on some file, the OOM killer): start a new pool and
        resubmit what was in flight. The crashed chunk is retried one image per task, so only the
        image that kills a worker on its own is reported as failed."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        pending = [entries for entries, _ in self._window]
        self._window.clear()
        self.in_flight = 0
        failed: Failures = []
        if len(crashed) == 1 and crashed[0].suspect:
            failed.append((crashed[0], f"decode_failed: the decoder crashed on this file ({exc})"))
        else:
            for entry in crashed:
                entry.suspect = True
            pending = [[entry] for entry in crashed] + pending
        for entries in pending:
            for entry in entries:
                entry.data = reread(entry.item.path, self.limits.max_bytes)
            self.submit(entries)
        return failed

    def _new_executor(self) -> Executor:
        if self.workers <= 0:
            return _InlineExecutor()
        import multiprocessing

        # spawn, not fork: this process may already run torch's thread pools, which fork breaks.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(self.nice,))


class _InlineExecutor(Executor):
    """`workers=0`: decode in this process, when the runner asks for the result (so the time
    lands in the decode stage, between batches). A decode *thread* measured far worse on CPU:
    it fights the encoder's threads for the GIL and the cores."""

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
