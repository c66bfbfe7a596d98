"""Core benchmarks (issue 2): text encode latency, image encode throughput per dtype, exact and
HNSW search latency at 25k and 1M vectors, and HNSW recall@10 against exact search.

    python -m bench.core_bench [--quick] [--sizes 25000,1000000]

The model is the ViT-B/32 architecture with random weights (cost does not depend on weights).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import CACHE, clustered_vectors, pct, timed, vit_b32_dir, write_results

QUERIES = ["two dogs playing on a sunny beach at sunset", "a red car", "snow covered mountains",
           "a cup of coffee on a wooden table", "portrait of a woman in the city at night"]


def bench_text(threads: int, repeat: int) -> dict:
    import torch

    from clipsearch.models.torch_encoder import TorchEncoder

    torch.set_num_threads(threads)
    enc = TorchEncoder(str(vit_b32_dir()), threads=threads)
    tokens = len(enc._tokenizer(QUERIES[0])["input_ids"])
    single = timed(lambda: enc.encode_text(QUERIES[0]), repeat, warmup=5)
    mixed = [0.0] * repeat
    for i in range(repeat):
        t0 = time.perf_counter()
        enc.encode_text(QUERIES[i % len(QUERIES)])
        mixed[i] = (time.perf_counter() - t0) * 1000
    padded = timed(lambda: enc._text(**enc._tokenizer(QUERIES[0], padding="max_length", max_length=77,
                                                       return_tensors="pt")), max(20, repeat // 5))
    return {"threads": threads, "tokens": tokens, "single_query": pct(single), "mixed_queries": pct(np.array(mixed)),
            "padded_to_77_p50_ms": pct(padded)["p50_ms"], "target_p50_ms": 30}


def bench_images(batch: int, rounds: int) -> dict:
    import torch

    from clipsearch.models.torch_encoder import TorchEncoder

    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    out = {"batch": batch}
    fp32 = TorchEncoder(str(vit_b32_dir()), load=("vision",))
    ref = fp32.encode_pixels(pixels[:8])
    variants = {"fp32": fp32, "bf16_autocast": TorchEncoder(str(vit_b32_dir()), load=("vision",), cpu_bf16=True)}
    int8 = TorchEncoder(str(vit_b32_dir()), load=("vision",))
    int8._vision = torch.ao.quantization.quantize_dynamic(int8._vision, {torch.nn.Linear}, dtype=torch.qint8)
    variants["int8_dynamic"] = int8
    for name, enc in variants.items():
        ms = timed(lambda: enc.encode_pixels(pixels), rounds, warmup=1)
        vec = enc.encode_pixels(pixels[:8])
        out[name] = {"images_per_s": round(batch / (np.median(ms) / 1000), 2),
                     "max_abs_diff_vs_fp32": round(float(np.abs(vec - ref).max()), 5)}
    return out


def _index(vectors: np.ndarray, threshold: int, name: str):
    from clipsearch.index import Document
    from clipsearch.index.faiss_index import FaissIndex
    from clipsearch.index.faiss_files import INDEX_MANIFEST

    path = CACHE / name
    if (path / INDEX_MANIFEST).is_file():
        return FaissIndex.load(path, hnsw_threshold=threshold), 0.0
    index = FaissIndex(path, model_id="bench", dim=vectors.shape[1], hnsw_threshold=threshold)
    step = 50_000
    for start in range(0, len(vectors), step):
        index.upsert(Document(f"d{start + i}", v, {"orientation": ("landscape", "portrait", "squarish")[(start + i) % 3]})
                     for i, v in enumerate(vectors[start : start + step]))
    t0 = time.perf_counter()
    index.save()  # builds the HNSW graph when above the threshold
    return index, time.perf_counter() - t0


def bench_search(n: int, queries: int) -> dict:
    vectors = clustered_vectors(n + queries, seed=1)
    base, qs = vectors[:n], vectors[n:]
    exact, _ = _index(base, 10**12, f"flat-{n}")
    hnsw, build_s = _index(base, 1, f"hnsw-{n}")
    truth = [[h.id for h in exact.search(q, k=10)] for q in qs]
    exact_ms = timed(lambda: exact.search(qs[0], k=10), max(10, min(queries, 2_000_000_000 // (n * 512 * 4 // 50))))
    result = {"n": n, "dim": int(base.shape[1]), "exact": pct(exact_ms), "hnsw": {}}
    for ef in (64, 128):
        hnsw.ef_search = ef
        ms, found = [], []
        for q, t in zip(qs, truth):
            t0 = time.perf_counter()
            hits = hnsw.search(q, k=10)
            ms.append((time.perf_counter() - t0) * 1000)
            found.append(len({h.id for h in hits} & set(t)) / 10)
        result["hnsw"][f"ef_search_{ef}"] = {**pct(np.array(ms)), "recall_at_10": round(float(np.mean(found)), 4)}
    filt = timed(lambda: hnsw.search(qs[1], k=10, filters={"orientation": "portrait"}), 50)
    result["hnsw_filtered_one_third"] = pct(filt)
    result["hnsw_params"] = {"m": hnsw.hnsw_m, "ef_construction": hnsw.ef_construction,
                             "build_s": round(build_s, 1) if build_s else "cached"}
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, 25k and 200k vectors")
    ap.add_argument("--sizes", default=None, help="comma-separated collection sizes (default 25000,1000000)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("25000,200000" if args.quick else "25000,1000000")).split(",")]
    figures = {"model": "ViT-B/32 architecture, random weights"}
    figures["text_encode"] = bench_text(threads=2, repeat=50 if args.quick else 300)
    print("text encode:", figures["text_encode"], flush=True)
    figures["image_encode"] = bench_images(batch=32 if args.quick else 64, rounds=2 if args.quick else 5)
    print("image encode:", figures["image_encode"], flush=True)
    figures["search"] = []
    for n in sizes:
        figures["search"].append(bench_search(n, queries=100 if args.quick else 300))
        print("search:", figures["search"][-1], flush=True)
    write_results("core", figures)
    return figures


if __name__ == "__main__":
    main()
