"""python -m ingest: fill the k-NN index from Unsplash Lite or a local folder.

    python -m ingest unsplash [--limit N] [--width 480] [--workers 32] [--data-dir data/unsplash]
    python -m ingest folder PATH
    python -m ingest generations [--delete NAME ... | --prune]   (OpenSearch: the alias's old indexes)
    common: [--index PATH] [--backend faiss|opensearch] [--cache-dir data/embeddings] ...

The model comes from MODEL_PATH / MODEL_ID, the index from INDEX_PATH / BACKEND and the
OPENSEARCH_* variables (README, "Configuration"); the options here override the index ones.
Runs are resumable: kill one at any point and start it again. This module only turns options into
a source and `IngestOptions`; the run itself is `ingest.run` (ingest/api.py, docs/ingest.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError
from clipsearch.schema import display_text
from ingest.api import DEFAULT_MAX_BYTES, IngestOptions, run
from ingest.download import DownloadRetries
from ingest.progress import Summary

if TYPE_CHECKING:
    from ingest.sources.base import Source

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
    g.add_argument("--max-bytes", type=_positive, default=DEFAULT_MAX_BYTES,
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


def _options(args) -> IngestOptions:
    return IngestOptions(
        cache_dir=args.cache_dir, use_cache=not args.no_cache, wait=args.wait, device=args.device,
        precision=args.precision, batch_size=args.batch_size, decode_workers=args.decode_workers,
        prefetch=args.prefetch, save_every=args.save_every, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        progress=False if args.quiet else None, batch_delay=args.batch_delay,
    )


def _source(args) -> Source:
    if args.source == "folder":
        from ingest.sources.folder import FolderSource

        return FolderSource(args.path, follow_links=args.follow_links)
    from ingest.sources.unsplash import UnsplashOptions, UnsplashSource

    return UnsplashSource(UnsplashOptions(
        dataset_url=args.dataset_url, data_dir=Path(args.data_dir), width=args.width, workers=args.workers,
        limit=args.limit, policy=DownloadRetries(retries=args.retries, backoff=args.backoff, timeout=args.timeout),
        max_image_bytes=args.max_bytes,
    ))


def execute(argv: list[str] | None = None, settings: Settings | None = None) -> Summary:
    """Parse `argv` and run the ingest; returns the summary. Raises ClipsearchError on a
    run-level failure (bad items never raise: they are in the summary)."""
    args = build_parser().parse_args(argv)
    return run(_source(args), _settings(args, settings), _options(args))


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
