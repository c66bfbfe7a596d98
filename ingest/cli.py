"""python -m ingest: fill the k-NN index from Unsplash Lite or a local folder.

    python -m ingest unsplash [--limit N] [--width 480] [--workers 32] [--data-dir data/unsplash]
    python -m ingest folder PATH
    python -m ingest generations [--delete NAME ... | --prune]   (OpenSearch: the alias's old indexes)
    common: [--index PATH] [--backend faiss|opensearch] [--cache-dir data/embeddings] ...

The model comes from MODEL_PATH / MODEL_ID, the index from INDEX_PATH / BACKEND and the
OPENSEARCH_* variables (README, "Configuration"); the options here override the index ones.
Runs are resumable: kill one at any point and start it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError
from clipsearch.schema import display_text
from ingest.decode import DecodeLimits
from ingest.download import DownloadRetries
from ingest.progress import Progress, Summary

if TYPE_CHECKING:  # the pipeline imports the encoder; --help should not
    from ingest.pipeline import Pipeline

EXAMPLES = """examples:
  python -m ingest unsplash --limit 500            # a quick sample of Unsplash Lite
  python -m ingest unsplash                        # all of it (about 25k photos)
  python -m ingest folder ~/Pictures --index data/my-index
  BACKEND=opensearch OPENSEARCH_URL=https://... python -m ingest unsplash --backend opensearch

Re-running is cheap: images on disk, photos and unchanged files already in the index, and
vectors in the embedding cache are not fetched or encoded again."""


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("index and model")
    g.add_argument("--index", metavar="PATH", help="embedded index directory (default: INDEX_PATH or data/index)")
    g.add_argument("--backend", choices=("faiss", "opensearch"),
                   help="faiss: the embedded index (default, or BACKEND); opensearch: OPENSEARCH_URL / OPENSEARCH_INDEX")
    g.add_argument("--cache-dir", default="data/embeddings", metavar="DIR",
                   help="embedding cache, one subdirectory per model, and the folder source's incremental "
                        "state (default: %(default)s)")
    g.add_argument("--no-cache", action="store_true",
                   help="do not read or write the embedding cache (a resumed run re-encodes what was not saved)")
    g.add_argument("--wait", action="store_true",
                   help="if another ingest is writing the same embedded index, wait for it to finish "
                        "(default: exit at once saying so)")
    g = common.add_argument_group("pipeline")
    g.add_argument("--batch-size", type=_positive, help="images per forward pass (default: 32 on CPU, 256 on CUDA)")
    g.add_argument("--decode-workers", type=_non_negative,
                   help="decode + preprocess worker processes; 0 = in this process between batches "
                        "(default: 0 on CPU, where the model uses every core; cores - 1 up to 16 on CUDA)")
    g.add_argument("--prefetch", type=_positive, help="images decoded ahead of the encoder (default: 4 batches)")
    g.add_argument("--threads", type=_positive, help="torch CPU threads (default: TORCH_THREADS or all cores)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default: cuda when present, with fp16/bf16 autocast)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="CPU only: bf16 autocast is ~2-3x faster on CPUs with AVX-512 bf16, vectors differ "
                        "slightly (cached apart from fp32 ones); CUDA always autocasts (default: %(default)s)")
    g.add_argument("--save-every", type=_positive, default=10, metavar="N",
                   help="save the index every N batches, the resume point (default: %(default)s)")
    g.add_argument("--max-pixels", type=_positive, help="skip images with more pixels (default: MAX_IMAGE_PIXELS)")
    g.add_argument("--max-bytes", type=_positive, default=50 * 1024 * 1024,
                   help="skip image files larger than this (default: 50 MiB)")
    g = common.add_argument_group("output")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    g.add_argument("--json", action="store_true", help="print the summary as JSON (every failure listed)")
    # Tests only: sleep after each encoded batch so a test can kill the run in the middle.
    g.add_argument("--batch-delay", type=float, default=0.0, help=argparse.SUPPRESS)

    ap = argparse.ArgumentParser(prog="python -m ingest", description=__doc__, epilog=EXAMPLES, add_help=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-h", "--help", action=_FullHelp, help="this help, with every source's options")
    sub = ap.add_subparsers(dest="source", required=True, metavar="{unsplash,folder,generations}")
    un = sub.add_parser("unsplash", parents=[common], help="the Unsplash Lite dataset (downloaded)",
                        description="Download the Unsplash Lite archive and its images, then index them.")
    un.add_argument("--dataset-url", default="https://unsplash.com/data/lite/latest",
                    help="the dataset zip (default: %(default)s)")
    un.add_argument("--data-dir", default="data/unsplash", help="archive and images go here (default: %(default)s)")
    un.add_argument("--width", type=_non_negative, default=480,
                    help="image width to download, ?w= (default: %(default)s; CLIP sees 224 px; 0 = original)")
    un.add_argument("--workers", type=_positive, default=32, help="download threads (default: %(default)s)")
    un.add_argument("--limit", type=_positive, help="only the first N photos: a quick sample")
    un.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP attempt (default: %(default)s)")
    un.add_argument("--retries", type=_non_negative, default=4,
                    help="retries on timeouts, 5xx and truncated bodies (default: %(default)s)")
    un.add_argument("--backoff", type=float, default=0.5,
                    help="seconds before the first retry, doubling after (default: %(default)s)")
    fo = sub.add_parser("folder", parents=[common], help="a local folder of photos, recursive",
                        description="Index every JPEG/PNG/WebP/GIF under PATH. Incremental: unchanged files "
                                    "are skipped, deleted files are removed from the index.")
    fo.add_argument("path", metavar="PATH", help="folder to scan recursively")
    fo.add_argument("--follow-links", action="store_true",
                    help="follow symbolic links that lead out of PATH, to files and directories (default: only "
                         "links that stay inside PATH; devices, FIFOs and /proc, /sys, /dev are never read)")
    # Handled by ingest.generations (main() hands it over before parsing); listed for --help.
    ge = sub.add_parser("generations", help="OpenSearch: list the alias's generations, delete old ones",
                        description="List the OpenSearch alias's generations (model, documents, created, which "
                                    "one serves); --delete NAME... or --prune removes old ones, signed like every "
                                    "other request. See `python -m ingest generations --help`.")
    ap.set_defaults(_subparsers=(un, fo, ge))
    return ap


class _FullHelp(argparse.Action):
    """`python -m ingest --help` documents both sources and every option, not just their names."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [parser.format_help()]
        for sub in parser.get_default("_subparsers") or ():
            parts.append("\n" + "=" * 78 + "\n" + sub.format_help())
        parser._print_message("".join(parts), sys.stdout)
        parser.exit()


def _settings(args, settings: Settings | None) -> Settings:
    settings = settings or Settings.from_env()
    index, model = settings.index, settings.model
    if args.index:
        index = dataclasses.replace(index, path=args.index)
    if args.backend:
        index = dataclasses.replace(index, backend=args.backend)
    if args.threads:
        model = dataclasses.replace(model, threads=args.threads)
    return dataclasses.replace(settings, index=index, model=model)


def _encoder(settings: Settings, device: str, precision: str):
    from clipsearch.models.torch_encoder import TorchEncoder

    explicit = settings.model.id if settings.model.path else None
    # No tower loaded yet: a run that finds everything indexed or cached never loads the model.
    return TorchEncoder(settings.model.source, model_id=explicit, threads=settings.model.threads,
                        device=None if device == "auto" else device, cpu_bf16=precision == "bf16", load=())


def _pipeline_options(args, settings: Settings, device: str):
    from ingest.pipeline import PipelineOptions

    cuda = device.startswith("cuda")
    cpus = os.cpu_count() or 2
    workers = args.decode_workers
    if workers is None:
        # On CPU the model's threads already use every core: a decode worker beside them only
        # preempts them (measured on 2 cores: 0.74-0.80 of model-only throughput with a worker
        # process, ~1.0 decoding in between batches; bench/ingest_bench.py). On a GPU the CPU is
        # free and decoding becomes the bottleneck: give it the cores.
        workers = max(1, min(16, cpus - 1)) if cuda else 0
    return PipelineOptions(
        batch_size=args.batch_size or (256 if cuda else 32),
        decode_workers=workers,
        prefetch=args.prefetch,
        save_every=args.save_every,
        limits=DecodeLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels or settings.limits.max_image_pixels),
        batch_delay=args.batch_delay,
    )


def _index_location(settings: Settings) -> str:
    if settings.index.backend == "opensearch":
        return f"opensearch:{settings.opensearch.url}/{settings.opensearch.index}"
    return f"faiss:{Path(settings.index.path).resolve()}"


def execute(argv: list[str] | None = None, settings: Settings | None = None) -> Summary:
    """Parse `argv` and run the ingest; returns the summary. Raises ClipsearchError on a
    run-level failure (bad items never raise: they are in the summary)."""
    args = build_parser().parse_args(argv)
    settings = _settings(args, settings)
    started = time.perf_counter()
    summary = Summary(args.source)
    progress = Progress(False if args.quiet else None)

    from ingest.lock import lock_index

    # The embedded index is written whole at each save: one ingest at a time per directory.
    index_lock = lock_index(settings.index.path, wait=args.wait) if settings.index.backend == "faiss" else None
    try:
        _run(args, settings, summary, progress)
    finally:
        if index_lock is not None:
            index_lock.close()
        progress.close()
        summary.total_seconds = time.perf_counter() - started
    return summary


def _run(args, settings: Settings, summary: Summary, progress: Progress) -> None:
    from clipsearch.index import open_index
    from ingest.cache import EmbeddingCache, NoCache
    from ingest.pipeline import Pipeline

    t0 = time.perf_counter()
    encoder = _encoder(settings, args.device, args.precision)
    index = open_index(settings.index, settings.opensearch, model_id=encoder.model_id, dim=encoder.dim)
    # bf16 vectors are the same model's (one index takes both) but not the same numbers: own cache.
    cache_key = encoder.model_id + ("@bf16" if args.precision == "bf16" else "")
    cache = NoCache() if args.no_cache else EmbeddingCache.open(args.cache_dir, model_id=cache_key, dim=encoder.dim)
    if cache.damage_report():
        summary.warnings.append(cache.damage_report())
    summary.add_time("open", time.perf_counter() - t0)
    options = _pipeline_options(args, settings, encoder.device)
    try:
        with index.loading():
            pipeline = Pipeline(encoder, index, cache, options, summary, progress, indexed_ids=set(index.ids()))
            (_unsplash if args.source == "unsplash" else _folder)(args, settings, pipeline)
        summary.index_count = index.count()
    finally:
        cache.close()


def _unsplash(args, settings: Settings, pipeline: Pipeline) -> None:
    from ingest.sources import unsplash

    opts = unsplash.UnsplashOptions(
        dataset_url=args.dataset_url, data_dir=Path(args.data_dir), width=args.width, workers=args.workers,
        limit=args.limit, policy=DownloadRetries(retries=args.retries, backoff=args.backoff, timeout=args.timeout),
        max_image_bytes=args.max_bytes,
    )
    t0 = time.perf_counter()
    items = unsplash.collect(opts, pipeline.indexed_ids, pipeline.summary, pipeline.progress)
    pipeline.summary.add_time("download", time.perf_counter() - t0)
    pipeline.run(items)
    pipeline.save()


def _folder(args, settings: Settings, pipeline: Pipeline) -> None:
    from ingest.sources import folder

    summary = pipeline.summary
    root = folder.resolve_root(args.path)
    state = folder.FolderState.for_index(Path(args.cache_dir) / "state", root, _index_location(settings))
    t0 = time.perf_counter()
    fplan = folder.plan(root, state, pipeline.indexed_ids, summary.skipped, follow_links=args.follow_links)
    summary.add_time("scan", time.perf_counter() - t0)
    summary.found = len(fplan.stats)
    if fplan.unchanged:
        summary.skipped["unchanged"] += len(fplan.unchanged)

    def record(done: dict[str, str]) -> None:  # after each index save: the state never runs ahead
        state.save(folder.current_files(fplan, done))

    pipeline.on_save = record
    done = pipeline.run(fplan.items)
    stale = folder.stale_ids(state, fplan, done)
    if stale:
        summary.deleted = pipeline.index.delete(sorted(stale))
    pipeline.save()


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0 done, even with skipped bad items; 1 the run
    could not go on; 2 bad usage; 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generations"]:
        from ingest.generations import main as generations

        return generations(argv[1:])
    parser_args = build_parser().parse_args(argv)  # exits 2 with usage on bad options
    try:
        summary = execute(argv)
    except (ClipsearchError, OSError) as exc:  # OSError: a model or index path that cannot be read or written
        print(f"ingest: error: {display_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ingest: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if parser_args.json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        print(summary.render())
    return 0
