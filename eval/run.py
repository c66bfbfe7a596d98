"""python -m eval: measure retrieval quality through the production ingest and search path.

    python -m eval retrieval CAPTIONS [--images DIR] [--split test]    # Flickr30k / MS-COCO
    python -m eval retrieval captions.jsonl --language en,ja,ar         # Crossmodal-3600, per language
    python -m eval zeroshot FOLDER [--split test] [--prompt "{}"]      # CIFAR-100, ImageNet folders

Steps: load the dataset (bad entries skipped and counted), link the chosen images into a
staging folder, ingest it as `python -m ingest folder` does (`ingest.run` with the folder source)
into the index the options name, map index documents back to dataset items by content hash,
encode the queries with the production encoder, search with the backend's `search`, compute the
metrics, print a table, write JSON.
The report names the checkpoint and its family (clipsearch.models.families) it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError
from eval.collection import IngestFailed, content_hashes, ingest_folder, map_collection, stage
from eval.datasets import XM3600_LANGUAGES, DatasetError, Skips, load_captions, load_labelled_folder
from eval.metrics import TIES
from eval.report import build_report, format_table, write_report
from eval.tasks import Timer, evaluate_by_language, evaluate_retrieval, evaluate_zeroshot, self_check


EXAMPLES = """examples (MODEL_ID=laion/CLIP-ViT-B-32-laion2B-s34B-b79K or MODEL_PATH=DIR for the real model):
  python -m eval retrieval dataset_flickr30k.json --images flickr30k-images --out flickr30k.json
  python -m eval retrieval dataset_coco.json --images coco --out coco.json
  python -m eval zeroshot cifar100 --out cifar100.json
  python -m eval retrieval xm3600/captions.jsonl --language all --out xm3600.json   # images in xm3600/images
  python -m eval retrieval dataset_flickr30k.json --images flickr30k-images --index data/eval-flickr \\
      --skip-ingest --hnsw-threshold 1 --vs-exact          # the same collection through HNSW

each task has its own options: python -m eval retrieval --help, python -m eval zeroshot --help"""


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 99:
        raise argparse.ArgumentTypeError(f"--k takes integers between 1 and 99, got {text!r}")
    return ks


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _languages(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "all":
        return XM3600_LANGUAGES
    langs = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [lang for lang in langs if lang not in XM3600_LANGUAGES]
    if not langs or unknown:
        raise argparse.ArgumentTypeError(f"--language takes Crossmodal-3600 codes ({', '.join(XM3600_LANGUAGES)}) "
                                         f"or 'all', got {text!r}")
    return langs


def _prompt(text: str) -> str:
    if text.count("{}") != 1:
        raise argparse.ArgumentTypeError(f"--prompt must contain {{}} exactly once (the class name), got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", choices=("faiss", "opensearch"), help="k-NN backend (default: BACKEND or faiss)")
    common.add_argument("--index", help="embedded index directory to fill and search (default: a temporary one, "
                                        "removed afterwards; an existing one is reused, ingest skips what it "
                                        "holds); with --backend opensearch, the OpenSearch index name (required "
                                        "unless --skip-ingest: never the collection users search)")
    common.add_argument("--cache-dir", help="ingest's embedding cache (default: a temporary one); keep one to "
                                            "re-ingest the same images into another index or backend without "
                                            "encoding them again")
    common.add_argument("--hnsw-threshold", type=_positive,
                        help="embedded index: HNSW at or above this many documents (1 forces HNSW; "
                             "default HNSW_THRESHOLD)")
    common.add_argument("--k", type=_ks, default=[1, 5, 10], help="the K of Recall@K / top-K, e.g. 1,5,10")
    common.add_argument("--limit", type=_positive, help="evaluate only this many images (a quick, easier subset)")
    common.add_argument("--split", default="test", help="dataset split (default: test)")
    common.add_argument("--out", help="write the JSON report here")
    common.add_argument("--name", help="dataset name in the report, which also picks the reference figures "
                                       "(flickr30k, coco, cifar100; default: from the captions file or folder)")
    common.add_argument("--skip-ingest", action="store_true",
                        help="do not run ingest: evaluate the index as it is (filled by `python -m ingest folder`)")
    common.add_argument("--self-check", type=_non_negative, default=50, metavar="N",
                        help="re-encode N images from their files as image queries; each must find itself "
                             "(0 turns it off; default 50)")
    common.add_argument("--vs-exact", action="store_true",
                        help="also compare every query's results with exact search over the stored vectors "
                             "(overlap@K): what HNSW or compressed vectors cost")
    common.add_argument("--ties", choices=TIES, default="pessimistic",
                        help="tied scores: pessimistic (a relevant item ranks after every non-relevant one it "
                             "ties with) or order (trust the backend's order)")

    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)
    ret = sub.add_parser("retrieval", parents=[common], help="text->image and image->text Recall@K on a captioned set")
    ret.add_argument("captions", help="dataset_flickr30k.json / dataset_coco.json (Karpathy split), or a "
                                      "captions file with IMAGE<TAB>CAPTION lines (results_20130124.token, captions.tsv)")
    ret.add_argument("--images", help="the images folder (default: the captions file's folder)")
    ret.add_argument("--split-file", help="captions-file layout: a file listing the split's image file names")
    ret.add_argument("--no-image-to-text", action="store_true", help="skip the image->text direction")
    ret.add_argument("--language", type=_languages, default=("en",),
                     help="Crossmodal-3600 (captions.jsonl): caption languages, comma-separated codes or 'all' "
                          "(default en); each gets its own text->image row in a per-language table")
    zs = sub.add_parser("zeroshot", parents=[common], help="zero-shot top-K over a folder with one subfolder per class")
    zs.add_argument("folder", help="ROOT/CLASS/image files, or ROOT/SPLIT/CLASS/image files")
    zs.add_argument("--prompt", type=_prompt, default="{}",
                    help='text for each class, {} = the folder name (default "{}", as rclip does; '
                         'CLIP\'s paper uses "a photo of a {}.")')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="clipsearch-eval-") as tmp:
            report = run(args, Path(tmp))
    except (DatasetError, IngestFailed, ClipsearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(report))
    if args.out:
        write_report(report, args.out)
        print(f"report written to {args.out}")
    return 0


def _settings(args, tmp: Path) -> Settings:
    """The environment's settings with the options applied. `--index` names the embedded index
    directory, or for OpenSearch the index (alias) to fill and search."""
    settings = Settings.from_env()
    index, opensearch = settings.index, settings.opensearch
    if args.backend:
        index = dataclasses.replace(index, backend=args.backend)
    if args.hnsw_threshold:
        index = dataclasses.replace(index, hnsw_threshold=args.hnsw_threshold)
    if index.backend == "opensearch":
        if args.index:
            opensearch = dataclasses.replace(opensearch, index=args.index)
        elif not args.skip_ingest:
            # Ingesting into OPENSEARCH_INDEX would add the dataset to the collection users search.
            raise DatasetError("with --backend opensearch, name an index of its own for the evaluation with "
                               "--index NAME (or pass --skip-ingest to evaluate OPENSEARCH_INDEX as it is)")
    else:
        index = dataclasses.replace(index, path=args.index or str(tmp / "index"))
    return dataclasses.replace(settings, index=index, opensearch=opensearch)


def _where(settings: Settings) -> str:
    if settings.index.backend == "opensearch":
        return f"OpenSearch index {settings.opensearch.index!r}"
    return f"the index at {settings.index.path}"


def run(args, tmp: Path) -> dict:
    from clipsearch.models import load_encoder
    from clipsearch.index import check_model, open_index

    settings = _settings(args, tmp)
    if args.task == "retrieval":
        ds = load_captions(args.captions, args.images, split=args.split, split_file=args.split_file,
                           languages=args.language)
        source = args.captions
    else:
        ds = load_labelled_folder(args.folder, split=args.split)
        source = args.folder
    if args.name:
        ds.name = args.name
    full = len(ds.images)
    ds = ds.limit(args.limit)
    if not ds.images:
        raise DatasetError(f"no usable images in {source} for split {ds.split!r} "
                           f"({dict(ds.skips.counts) or 'nothing skipped'})")
    hashes = content_hashes(ds.images, ds.skips)
    ingest = {"skipped": True}
    if not args.skip_ingest:
        staged = stage([i for i in ds.images if i.key in hashes], tmp / "staged")
        ingest = ingest_folder(staged, settings, Path(args.cache_dir) if args.cache_dir else tmp / "ingest-cache")

    encoder = load_encoder(settings.model, load=("text",))
    index = open_index(settings.index, settings.opensearch)
    check_model(index, encoder.model_id, encoder.dim)
    coll = map_collection(hashes, index.ids(), ingest)
    if not coll.doc_of:
        hint = "run without --skip-ingest" if args.skip_ingest else "see ingest's summary above"
        raise DatasetError(f"none of the {len(hashes)} images is in {_where(settings)}: {hint}")

    timer = Timer()
    if args.task == "retrieval" and any(c.language for c in ds.captions):
        metrics, counts = evaluate_by_language(ds, coll, index, encoder, ks=args.k, ties=args.ties,
                                               image_to_text=not args.no_image_to_text, vs_exact=args.vs_exact,
                                               timer=timer)
    elif args.task == "retrieval":
        metrics, counts = evaluate_retrieval(ds, coll, index, encoder, ks=args.k, ties=args.ties,
                                             image_to_text=not args.no_image_to_text, vs_exact=args.vs_exact,
                                             timer=timer)
    else:
        metrics, counts = evaluate_zeroshot(ds, coll, index, encoder, ks=args.k, ties=args.ties,
                                            prompt=args.prompt, vs_exact=args.vs_exact, timer=timer)
    self_metrics, self_queries = self_check(ds.images, coll, index, encoder, settings.limits, n=args.self_check,
                                            ks=args.k, ties=args.ties, timer=timer)
    if self_metrics:
        metrics["image_to_image_self"] = self_metrics
    counts.update(_collection_counts(ds.skips, coll, full, len(ds.images)), self_check_queries=self_queries)
    dataset = {"name": ds.name, "source": str(source), "split": ds.split,
               "layout": getattr(ds, "layout", "labelled-folder"), "limit": args.limit,
               "problems": ds.skips.problems}
    if args.task == "zeroshot":
        dataset["prompt"] = args.prompt
    if args.task == "retrieval" and ds.layout == "xm3600-jsonl":
        dataset["languages"] = list(args.language)
    return build_report(task=args.task, dataset=dataset, index_info=index.info(), model_id=encoder.model_id,
                        family=encoder.family, encoder=settings.model.encoder, counts=counts, metrics=metrics, ties=args.ties, ks=args.k,
                        timings=timer.seconds, ingest=ingest)


def _collection_counts(skips: Skips, coll, full: int, used: int) -> dict:
    return {
        "images_in_split": full,
        "images_evaluated": used,
        "skipped": dict(skips.counts),
        "not_indexed": len(coll.not_indexed),
        "duplicate_images": coll.duplicate_items,
        "index_documents": coll.index_docs,
        "distractor_documents": coll.extra_docs,
    }
