"""What compact vectors cost in recall, measured on the embedded side (issue 4).

    python -m bench.compression_bench [--quick] [--n 100000] [--queries 500]

The OpenSearch backend can store vectors as `data_type: byte` (quantised before upload, exactly as
`clipsearch.index.opensearch_mapping.encode_vector` does) or let the faiss engine compress them
(`mode: on_disk` with `compression_level`: 2x = fp16, 32x = 1-bit binary quantisation with the
full-precision vectors re-scoring an oversampled candidate list). Each scheme is reproduced here
with FAISS and numpy over clustered unit vectors (bench.common.clustered_vectors), searched
exhaustively so only the quantisation shows, and compared with exact float32 search: recall@10
(the share of the true top 10 found) and the error of the top-10 cosines reported to clients.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import clustered_vectors, write_results
from clipsearch.index import opensearch_mapping as om

K = 10


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def exact(base: np.ndarray, queries: np.ndarray, k: int):
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)


def byte_scheme(base, queries, truth, true_scores, sigmas: float | None) -> dict:
    """int8 with one scale for the index: what data_type byte stores and searches."""
    dim = base.shape[1]
    scale = 127.0 if sigmas is None else om.byte_scale(dim, sigmas)
    qb = np.stack([np.asarray(om.encode_vector(v, "byte", scale), np.float32) for v in base])
    qq = np.stack([np.asarray(om.encode_vector(v, "byte", scale), np.float32) for v in queries])
    ip, ids = exact(qb, qq, K)
    cos = ip / (scale * scale)
    clipped = float(np.mean(np.abs(base * scale) > 127.5))
    return {"scale": scale, "recall@10": recall(ids, truth), "clipped_components": clipped,
            "top10_cosine_abs_err": float(np.mean(np.abs(np.sort(cos, axis=1) - np.sort(true_scores, axis=1)))),
            "bytes_per_vector": dim}


def sq_scheme(base, queries, truth, qtype: str) -> dict:
    import faiss

    dim = base.shape[1]
    index = faiss.IndexScalarQuantizer(dim, getattr(faiss.ScalarQuantizer, qtype), faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    _, ids = index.search(queries, K)
    return {"recall@10": recall(ids, truth), "bytes_per_vector": index.code_size}


def binary_scheme(base, queries, truth, oversample: float | None) -> dict:
    """1 bit a dimension, thresholds at the per-dimension mean (OpenSearch's binary quantisation);
    Hamming search, then optionally the full vectors re-score `oversample * k` candidates."""
    import faiss

    dim = base.shape[1]
    mean = base.mean(axis=0)
    codes = np.packbits(base > mean, axis=1)
    qcodes = np.packbits(queries > mean, axis=1)
    index = faiss.IndexBinaryFlat(dim)
    index.add(codes)
    first = K if oversample is None else int(np.ceil(oversample * K))
    _, cand = index.search(qcodes, first)
    if oversample is None:
        ids = cand
    else:
        scores = np.einsum("qcd,qd->qc", base[cand], queries)
        ids = np.take_along_axis(cand, np.argsort(-scores, axis=1)[:, :K], axis=1)
    return {"recall@10": recall(ids, truth), "bytes_per_vector": dim // 8, "rescored_candidates": first}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k vectors, 200 queries")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args(argv)
    n = args.n or (20_000 if args.quick else 100_000)
    nq = args.queries or (200 if args.quick else 500)
    data = clustered_vectors(n + nq, dim=args.dim, clusters=max(50, n // 50), seed=7)
    base, queries = np.ascontiguousarray(data[:n]), np.ascontiguousarray(data[n:])
    true_scores, truth = exact(base, queries, K)

    schemes: dict[str, dict] = {"float32 (reference)": {"recall@10": 1.0, "bytes_per_vector": 4 * args.dim}}
    schemes["fp16 (on_disk 2x / sq fp16)"] = sq_scheme(base, queries, truth, "QT_fp16")
    schemes["int8 trained per dimension (faiss SQ8)"] = sq_scheme(base, queries, truth, "QT_8bit")
    for sigmas in (None, 8.0, 6.0, 4.0, 3.0):
        name = "byte, scale 127 (never clips)" if sigmas is None else f"byte, {sigmas:g} sigmas to 127"
        schemes[name] = byte_scheme(base, queries, truth, true_scores, sigmas)
    schemes["binary 1-bit (32x), no rescoring"] = binary_scheme(base, queries, truth, None)
    for over in (3.0, 5.0, 10.0):
        schemes[f"binary 1-bit (32x), rescore {over:g}x k"] = binary_scheme(base, queries, truth, over)
    for name, fig in schemes.items():
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fig.items() if k != "recall@10"}
        print(f"{name:45s} recall@10 {fig['recall@10']:.4f}  {extra}", flush=True)
    figures = {"n": n, "dim": args.dim, "queries": nq, "k": K, "data": "clustered unit vectors (bench.common)",
               "search": "exhaustive over the compressed codes, against exact float32",
               "byte_clip_sigmas_in_use": om.BYTE_CLIP_SIGMAS, "schemes": schemes}
    write_results("compression", figures)
    return figures


if __name__ == "__main__":
    main()
