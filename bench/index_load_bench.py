"""Loading the embedded index: what checking every file costs at start-up.

    python -m bench.index_load_bench [--quick] [--n 25000]

A 25k x 512 index (the Unsplash Lite collection) with Unsplash-like metadata is saved once; it is
then loaded as the query service loads it (float16 vectors) and as ingest does (float32), with
its manifest's checksums and with them removed (how an index saved before checksums loads: the
row and metadata checks still run). The difference is the cost of the sha256 checks; sha256 of
the files alone is reported beside it. Medians of repeated loads in one process (files in the
page cache, as they are after the S3 copy at init).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time

import numpy as np

from bench.common import CACHE, clustered_vectors, write_results


def _metadata(i: int) -> dict:
    return {"source": "unsplash", "url": f"https://images.unsplash.com/photo-{i:013d}-abcdef012345?ixid=abc&w=480",
            "page_url": f"https://unsplash.com/photos/{i:011d}", "photographer": "Firstname Lastname",
            "photographer_username": f"user{i % 5000}", "photographer_url": f"https://unsplash.com/@user{i % 5000}",
            "description": "A long description of what the photo shows, as photographers write them " * 2,
            "ai_description": "a person standing on a rock near the sea", "width": 4000, "height": 3000,
            "orientation": "landscape", "aspect_ratio": 1.33, "location_country": "Iceland",
            "submitted_at": "2020-01-01 00:00:00", "featured": i % 2 == 0, "blur_hash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj"}


def _build(path, n: int) -> None:
    from clipsearch.index import Document
    from clipsearch.index.faiss_index import FaissIndex

    vectors = clustered_vectors(n, seed=5)
    index = FaissIndex(path, model_id="bench", dim=vectors.shape[1], hnsw_threshold=10**9)
    index.upsert(Document(f"p{i}", v, _metadata(i)) for i, v in enumerate(vectors))
    index.save()


def _median_ms(fns: dict, repeat: int) -> dict[str, float]:
    """Median wall-clock ms of each function, called in turn (interleaved: a busy neighbour slows
    all of them alike rather than whichever happened to run then)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm the page cache and the imports
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(float(np.median(t)), 1) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--n", type=int, default=25_000, help="documents (default: %(default)s)")
    args = ap.parse_args(argv)
    from clipsearch.index.faiss_index import FaissIndex
    from clipsearch.index.faiss_files import INDEX_MANIFEST

    checked, legacy = CACHE / f"load-{args.n}", CACHE / f"load-{args.n}-no-checksums"
    for path in (checked, legacy):
        shutil.rmtree(path, ignore_errors=True)
    _build(checked, args.n)
    shutil.copytree(checked, legacy)
    manifest = json.loads((legacy / INDEX_MANIFEST).read_text())
    files = manifest.pop("files")
    (legacy / INDEX_MANIFEST).write_text(json.dumps(manifest))
    gen = checked / manifest["generation"]
    repeat = 5 if args.quick else 21

    def hash_all() -> None:
        for name in files:
            with open(gen / name, "rb") as fh:
                hashlib.file_digest(fh, "sha256")

    logging.getLogger("clipsearch.index").setLevel(logging.ERROR)  # the unchecked index's warning, once per load
    figures = {"n": args.n, "dim": 512, "files_mb": {k: round(v["bytes"] / 2**20, 1) for k, v in files.items()},
               "repeats": repeat, "load_ms": {}}
    figures["sha256_of_all_files_ms"] = _median_ms({"hash": hash_all}, repeat)["hash"]
    for mode, half in (("float16", True), ("float32", False)):
        ms = _median_ms({"with": lambda: FaissIndex.load(checked, half=half),
                         "without": lambda: FaissIndex.load(legacy, half=half)}, repeat)
        figures["load_ms"][mode] = {"with_checksums": ms["with"], "without_checksums": ms["without"],
                                    "checksum_cost": round(ms["with"] - ms["without"], 1)}
    print(json.dumps(figures, indent=2))
    write_results("index_load", figures)
    return figures


if __name__ == "__main__":
    main()
