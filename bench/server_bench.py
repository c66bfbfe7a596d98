"""Query-service benchmark (issue 5), through the real Lambda emulator (server.local.LocalLambda).

    python -m bench.server_bench [--quick]

ViT-B/32-sized random-weight model, a 25k-vector embedded index (clustered unit vectors recorded
with that model's id), the torch encoder and the ONNX one (`--encoders`). Measures: cold start (emulator process start to the first text answer,
init included), warm text query latency end to end through the emulator (distinct queries, so
the embedding cache does not answer) and with the cache answering, warm image query latency,
and the peak RSS of the runtime (awslambdaric) process with only the text tower, then after
image queries. Targets: text p50 <= 30 ms, p99 <= 60 ms; cold start <= 4.5 s; text-only peak
RSS <= 550 MB.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.common import CACHE, clustered_vectors, pct, vit_b32_dir, write_results

N_DOCS = 25_000
WORDS = ("two three dogs cat beach sunset mountain city street night red blue green people woman child car tree "
         "forest sea sky snow house food coffee flowers bird water river road bridge portrait small old sunny "
         "wooden table running sitting playing walking").split()
TARGETS = {"text_p50_ms": 30, "text_p99_ms": 60, "cold_start_s": 4.5, "text_only_peak_rss_mb": 550}


def index_dir(model_dir: Path) -> Path:
    """25k clustered unit vectors with plausible metadata, recorded with the model's id; cached."""
    from clipsearch.models import resolve_model_id
    from clipsearch.index.base import Document
    from clipsearch.index.faiss_index import FaissIndex
    from clipsearch.index.faiss_files import INDEX_MANIFEST

    path = CACHE / "server-index-25k"
    model_id = resolve_model_id(str(model_dir))
    if (path / INDEX_MANIFEST).is_file() and json.loads((path / INDEX_MANIFEST).read_text())["model_id"] == model_id:
        return path
    vectors = clustered_vectors(N_DOCS, 512, seed=5)
    index = FaissIndex(path, model_id=model_id, dim=512)
    rng = np.random.default_rng(5)
    docs = []
    for i, v in enumerate(vectors):
        w, h = [(6000, 4000), (4000, 6000), (3000, 3000)][i % 3]
        docs.append(Document(f"photo{i:06d}", v, {
            "source": "unsplash", "url": f"https://images.example.com/photo{i:06d}.jpg",
            "page_url": f"https://unsplash.example.com/photos/photo{i:06d}", "photographer": f"Photographer {i % 900}",
            "photographer_username": f"user{i % 900}", "photographer_url": f"https://unsplash.example.com/@user{i % 900}",
            "description": " ".join(rng.choice(WORDS, 8)), "width": w, "height": h,
            "orientation": ["landscape", "portrait", "squarish"][i % 3], "aspect_ratio": round(w / h, 3)}))
    index.upsert(docs)
    index.save()
    return path


def peak_rss_mb(proc) -> float:
    """VmHWM: the process's peak resident set, in MB."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(proc.memory_info().rss / 2**20, 1)


def phrases(n: int, seed: int) -> list[str]:
    """n distinct queries of 3-8 words, each word one token: 5-10 tokens with the start/end tokens."""
    from clipsearch.models.modelgen import _WORDS

    rng, out = random.Random(seed), dict()
    while len(out) < n:
        out[" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8)))] = None
    return list(out)


def bare_encoder_ms(model: Path, queries: list[str]) -> np.ndarray:
    """The same queries through the encoder alone, in this process: the floor the service adds to."""
    from clipsearch.models.torch_encoder import TorchEncoder

    enc = TorchEncoder(str(model), threads=1)
    for q in queries[:10]:
        enc.encode_text(q)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        enc.encode_text(q)
        out[i] = (time.perf_counter() - t0) * 1000
    return out


def jpeg(seed: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((640, 480))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def timed_invoke(stack, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = stack.invoke(body)
    ms = (time.perf_counter() - t0) * 1000
    if out.get("statusCode") != 200:
        raise RuntimeError(f"query failed: {out}")
    return ms, json.loads(out["body"])


def cold_start(env: dict, log: Path) -> float:
    """Seconds from the emulator's process start to the first text answer."""
    from server.local import LocalLambda

    stack = LocalLambda(env=env, log=log)
    try:
        stack.start(wait=False)
        while True:
            try:
                out = stack.invoke({"query": "two dogs", "input_type": "text"}, timeout_s=60)
                break
            except (OSError, TimeoutError):
                if stack.process.poll() is not None:
                    raise RuntimeError(f"emulator exited; see {log}") from None
                time.sleep(0.02)
        elapsed = time.monotonic() - stack.started_at
        if out.get("statusCode") != 200:
            raise RuntimeError(f"first query failed: {out}")
        return elapsed
    finally:
        stack.stop()


def onnx_dir(model: Path) -> Path:
    """The model exported to ONNX (fp32 text and vision towers), cached."""
    from clipsearch.models.card import CARD_FILE
    from clipsearch.models.export import export

    path = CACHE / "server-bench-onnx-vit-b-32"
    card = path / CARD_FILE
    # Exports from before the rewritten text graph (no "text_graph" in the model card) are redone.
    if not card.is_file() or "text_graph" not in json.loads(card.read_text()):
        print("exporting ViT-B/32 to ONNX (once) ...", flush=True)
        export(str(model), path)
    return path


def measure(env: dict, n_cold: int, text_queries: list[str], n_image: int, log: Path) -> dict:
    """Every figure for one encoder configuration, through the emulator."""
    from server.local import LocalLambda

    log.write_text("")
    colds = [cold_start(env, log) for _ in range(n_cold)]
    init_ms = [json.loads(line)["ms"] for line in log.read_text().splitlines() if line.startswith('{"event": "init"')]
    print(f"  cold start (process start -> first text answer): {[round(c, 2) for c in colds]} s", flush=True)
    with LocalLambda(env=env, log=log) as stack:
        proc = stack.runtime_process()
        for q in phrases(10, seed=99):  # warm-up: first calls pay for lazy allocations
            timed_invoke(stack, {"query": q, "input_type": "text"})
        text_ms, text_server_ms, encode_ms, search_ms = [], [], [], []
        for q in text_queries:
            ms, body = timed_invoke(stack, {"query": q, "input_type": "text", "k": 10})
            text_ms.append(ms)
            text_server_ms.append(body["took_ms"]["total"])
            encode_ms.append(body["took_ms"]["encode"])
            search_ms.append(body["took_ms"]["search"])
        cached_ms = [timed_invoke(stack, {"query": "two dogs", "input_type": "text"})[0] for _ in range(100)]
        gateway_ms = []
        for q in phrases(50, seed=2):
            req = urllib.request.Request(stack.search_url, json.dumps({"query": q, "input_type": "text"}).encode(),
                                         {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            urllib.request.urlopen(req, timeout=60).read()
            gateway_ms.append((time.perf_counter() - t0) * 1000)
        rss_text = peak_rss_mb(proc)
        first_image_ms = timed_invoke(stack, {"query": jpeg(0), "input_type": "image"})[0]
        image_ms = [timed_invoke(stack, {"query": jpeg(i + 1), "input_type": "image"})[0] for i in range(n_image)]
        rss_image = peak_rss_mb(proc)
    figures = {
        "cold_start_s": {"median": round(float(np.median(colds)), 3), "runs": [round(c, 3) for c in colds],
                         "function_init_ms_median": round(float(np.median(init_ms)), 1) if init_ms else None},
        "warm_text": pct(np.array(text_ms)),
        "warm_text_in_handler": pct(np.array(text_server_ms)),
        "warm_text_encode": pct(np.array(encode_ms)),
        "warm_text_search": pct(np.array(search_ms)),
        "warm_text_cached": pct(np.array(cached_ms)),
        "warm_text_via_gateway": pct(np.array(gateway_ms)),
        "first_image_query_ms": round(first_image_ms, 1),
        "warm_image": pct(np.array(image_ms)),
        "peak_rss_text_only_mb": rss_text,
        "peak_rss_after_image_mb": rss_image,
    }
    figures["meets_targets"] = {
        "text_p50": figures["warm_text"]["p50_ms"] <= TARGETS["text_p50_ms"],
        "text_p99": figures["warm_text"]["p99_ms"] <= TARGETS["text_p99_ms"],
        "cold_start": figures["cold_start_s"]["median"] <= TARGETS["cold_start_s"],
        "text_only_rss": rss_text <= TARGETS["text_only_peak_rss_mb"],
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer cold starts and queries")
    ap.add_argument("--encoders", default="torch,onnx", help="which encoders to measure (default torch,onnx)")
    args = ap.parse_args(argv)

    model = vit_b32_dir()
    index = index_dir(model)
    base = {"MODEL_PATH": str(model), "INDEX_PATH": str(index), "HF_HUB_OFFLINE": "1"}
    variants = {"torch": {**base, "ENCODER": "torch"}}
    if "onnx" in args.encoders:
        variants["onnx"] = {**base, "ENCODER": "onnx", "ONNX_PATH": str(onnx_dir(model))}
    variants = {k: v for k, v in variants.items() if k in args.encoders.split(",")}
    n_cold, n_text, n_image = (3, 150, 15) if args.quick else (5, 500, 40)
    log = Path(tempfile.mkdtemp(prefix="server-bench-")) / "stack.log"

    load_before = os.getloadavg()
    text_queries = phrases(n_text, seed=1)
    bare = bare_encoder_ms(model, text_queries)
    print(f"bare torch encoder, same queries, this process: p50 {np.percentile(bare, 50):.1f} ms", flush=True)
    figures: dict = {
        "model": "random ViT-B/32 (clipsearch/random-vit-b-32)", "index": {"count": N_DOCS, "type": "flat"},
        "path": "direct invocation through the Lambda emulator (awslambdaric + handler), client-side wall clock",
        "targets": TARGETS, "bare_torch_encoder_same_queries": pct(bare),
    }
    for name, env in variants.items():
        print(f"encoder {name}:", flush=True)
        figures[name] = measure(env, n_cold, text_queries, n_image, log)
    figures["load_average_1m"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    print(json.dumps(figures, indent=2))
    write_results("server", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
