"""`ingest.run(source, settings, options)`: one ingest, as a library call. `python -m ingest` and
`python -m eval` both call it.

    import ingest
    from ingest.sources.folder import FolderSource

    summary = ingest.run(FolderSource("~/Pictures"), Settings.from_env(), ingest.IngestOptions(progress=False))

It holds the embedded index's writer lock for the run, opens the model, the index and the
embedding cache, asks the source for its items, runs them through the stages (ingest.runner)
inside the index's load context (OpenSearch: refresh off, one force merge and a warm-up at the
end), deletes what the source says is gone and saves. Bad items never raise: they are in the
returned summary. A run that cannot go on raises ClipsearchError (or OSError for a path that
cannot be read or written).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.decode import DecodeLimits
from ingest.lock import lock_index
from ingest.progress import Progress, Summary
from ingest.sources.base import Source, SourceContext

if TYPE_CHECKING:  # the runner and the encoder are imported when a run starts: `--help` needs neither
    from clipsearch.config import Settings
    from clipsearch.index import VectorIndex
    from clipsearch.models.torch_encoder import TorchEncoder
    from ingest.runner import RunnerOptions

DEFAULT_MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class IngestOptions:
    """How one run goes; every field has the command line's default (`python -m ingest --help`)."""

    cache_dir: str | Path = "data/embeddings"  # embedding cache, and sources' state (folder)
    use_cache: bool = True  # False: nothing read from or written to the embedding cache
    wait: bool = False  # wait for another ingest writing the same embedded index (else IndexBusy)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "fp32"  # "fp32" | "bf16" (CPU autocast; CUDA always autocasts)
    batch_size: int | None = None  # None: 32 on CPU, 256 on CUDA
    decode_workers: int | None = None  # None: 0 on CPU, cores - 1 (up to 16) on CUDA
    prefetch: int | None = None  # images decoded ahead of the encoder; None: 4 batches
    save_every: int = 10  # save the index every N batches: the resume point
    max_bytes: int = DEFAULT_MAX_BYTES  # larger image files are skipped
    max_pixels: int | None = None  # None: the settings' max_image_pixels
    progress: bool | None = None  # progress bars; None: on a terminal only
    batch_delay: float = 0.0  # tests only: sleep after each encoded batch, to be killed mid-run


def run(source: Source, settings: Settings, options: IngestOptions | None = None) -> Summary:
    """Ingest `source` into the index `settings` name; returns what the run did."""
    options = options or IngestOptions()
    target = _Target(settings)
    started = time.perf_counter()
    summary = Summary(source.name)
    progress = Progress(options.progress)
    # The embedded index is written whole at each save: one ingest at a time per directory.
    index_lock = lock_index(target.index_path, wait=options.wait) if target.index_path is not None else None
    try:
        _ingest(source, target, options, summary, progress)
    finally:
        if index_lock is not None:
            index_lock.close()
        progress.close()
        summary.total_seconds = time.perf_counter() - started
    return summary


def _ingest(source: Source, target: _Target, options: IngestOptions, summary: Summary, progress: Progress) -> None:
    from ingest.cache import EmbeddingCache, NoCache
    from ingest.runner import Runner, Stages

    t0 = time.perf_counter()
    encoder = target.encoder(options.device, options.precision)
    index = target.index(encoder)
    # bf16 vectors are the same model's (one index takes both) but not the same numbers: own cache.
    cache_key = encoder.model_id + ("@bf16" if options.precision == "bf16" else "")
    cache = (EmbeddingCache.open(options.cache_dir, model_id=cache_key, dim=encoder.dim) if options.use_cache
             else NoCache())
    if cache.damage_report():
        summary.warnings.append(cache.damage_report())
    summary.add_time("open", time.perf_counter() - t0)
    runner_options = _runner_options(options, target.max_pixels, encoder.device)
    try:
        with index.loading():
            indexed_ids = set(index.ids())
            ctx = SourceContext(indexed_ids, summary, progress, Path(options.cache_dir) / "state", target.location)
            t0 = time.perf_counter()
            items = source.items(ctx)
            summary.add_time(source.stage, time.perf_counter() - t0)
            stages = Stages.standard(encoder, index, cache, runner_options, indexed_ids=indexed_ids,
                                     on_save=source.checkpoint)
            runner = Runner(stages, summary, progress, runner_options)
            done = runner.run(items)
            gone = source.removed(done)
            if gone:
                summary.deleted = index.delete(sorted(gone))
            runner.save()
        summary.index_count = index.count()
    finally:
        cache.close()


def _runner_options(options: IngestOptions, max_pixels: int, device: str) -> RunnerOptions:
    from ingest.runner import RunnerOptions

    cuda = device.startswith("cuda")
    workers = options.decode_workers
    if workers is None:
        # On CPU the model's threads already use every core: a decode worker beside them only
        # preempts them (measured on 2 cores: 0.74-0.80 of model-only throughput with a worker
        # process, ~1.0 decoding in between batches; bench/ingest_bench.py). On a GPU the CPU is
        # free and decoding becomes the bottleneck: give it the cores.
        workers = max(1, min(16, (os.cpu_count() or 2) - 1)) if cuda else 0
    return RunnerOptions(
        batch_size=options.batch_size or (256 if cuda else 32),
        decode_workers=workers,
        prefetch=options.prefetch,
        save_every=options.save_every,
        limits=DecodeLimits(max_bytes=options.max_bytes, max_pixels=options.max_pixels or max_pixels),
        batch_delay=options.batch_delay,
    )


class _Target:
    """The model and the index the settings name: the only code in ingest that reads them (their
    model, index, opensearch and limits sections)."""

    def __init__(self, settings: Settings):
        self.model, self.index_settings, self.opensearch = settings.model, settings.index, settings.opensearch
        embedded = settings.index.backend == "faiss"
        self.index_path: str | None = settings.index.path if embedded else None  # what the writer lock guards
        self.max_pixels: int = settings.limits.max_image_pixels
        # Names the index, so a source's state for one index is never used for another.
        self.location = (f"faiss:{Path(settings.index.path).resolve()}" if embedded
                         else f"opensearch:{settings.opensearch.url}/{settings.opensearch.index}")

    def encoder(self, device: str, precision: str) -> TorchEncoder:
        from clipsearch.models.torch_encoder import TorchEncoder

        model = self.model
        explicit = model.id if model.path else None
        # No tower loaded yet: a run that finds everything indexed or cached never loads the model.
        return TorchEncoder(model.source, model_id=explicit, threads=model.threads,
                            device=None if device == "auto" else device, cpu_bf16=precision == "bf16", load=())

    def index(self, encoder: TorchEncoder) -> VectorIndex:
        from clipsearch.index import open_index

        return open_index(self.index_settings, self.opensearch, model_id=encoder.model_id, dim=encoder.dim)
