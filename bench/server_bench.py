"""Query-service benchmark (issue 5), through the real Lambda emulator (server.local.LocalStack).

    python -m bench.server_bench [--quick]

ViT-B/32-sized random-weight model, a 25k-vector embedded index (clustered unit vectors recorded
with that model's id). Measures: cold start (emulator process start to the first text answer,
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
import random
import tempfile
import time
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
    from clipsearch.encoder import resolve_model_id
    from clipsearch.index.base import Document
    from clipsearch.index.faiss_index import FaissIndex

    path = CACHE / "server-index-25k"
    model_id = resolve_model_id(str(model_dir))
    if (path / "manifest.json").is_file() and json.loads((path / "manifest.json").read_text())["model_id"] == model_id:
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
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + f" {i}" for i in range(n)]


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


def cold_start(env: dict, log: Path) -> tuple[float, float]:
    """(seconds from process start to the first text answer, init ms reported by the function)."""
    from server.local import LocalStack

    stack = LocalStack(env=env, log=log)
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
        return elapsed, 0.0
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer cold starts and queries")
    args = ap.parse_args(argv)
    from server.local import LocalStack

    model = vit_b32_dir()
    index = index_dir(model)
    env = {"MODEL_PATH": str(model), "INDEX_PATH": str(index), "HF_HUB_OFFLINE": "1"}
    n_cold, n_text, n_image = (3, 150, 15) if args.quick else (5, 500, 40)
    log = Path(tempfile.mkdtemp(prefix="server-bench-")) / "stack.log"

    colds = [cold_start(env, log)[0] for _ in range(n_cold)]
    print(f"cold start (process start -> first text answer): {[round(c, 2) for c in colds]} s", flush=True)

    with LocalStack(env=env, log=log) as stack:
        proc = stack.runtime_process()
        for q in phrases(10, seed=99):  # warm-up: first calls pay for lazy allocations
            timed_invoke(stack, {"query": q, "input_type": "text"})
        text_ms, text_server_ms = [], []
        for q in phrases(n_text, seed=1):
            ms, body = timed_invoke(stack, {"query": q, "input_type": "text", "k": 10})
            text_ms.append(ms)
            text_server_ms.append(body["took_ms"]["total"])
        cached_ms = [timed_invoke(stack, {"query": "two dogs", "input_type": "text"})[0] for _ in range(100)]
        gateway_ms = []
        import urllib.request

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
        "model": "random ViT-B/32 (clipsearch/random-vit-b-32)", "index": {"count": N_DOCS, "type": "flat"},
        "path": "direct invocation through the Lambda emulator (awslambdaric + handler), client-side wall clock",
        "cold_start_s": {"median": round(float(np.median(colds)), 3), "runs": [round(c, 3) for c in colds]},
        "warm_text": pct(np.array(text_ms)),
        "warm_text_in_handler": pct(np.array(text_server_ms)),
        "warm_text_cached": pct(np.array(cached_ms)),
        "warm_text_via_gateway": pct(np.array(gateway_ms)),
        "first_image_query_ms": round(first_image_ms, 1),
        "warm_image": pct(np.array(image_ms)),
        "peak_rss_text_only_mb": rss_text,
        "peak_rss_after_image_mb": rss_image,
        "targets": TARGETS,
    }
    figures["meets_targets"] = {
        "text_p50": figures["warm_text"]["p50_ms"] <= TARGETS["text_p50_ms"],
        "text_p99": figures["warm_text"]["p99_ms"] <= TARGETS["text_p99_ms"],
        "cold_start": figures["cold_start_s"]["median"] <= TARGETS["cold_start_s"],
        "text_only_rss": rss_text <= TARGETS["text_only_peak_rss_mb"],
    }
    print(json.dumps(figures, indent=2))
    write_results("server", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
