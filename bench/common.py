"""Small helpers shared by the benchmark scripts: timing, percentiles, results files, models."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("BENCH_CACHE", Path(__file__).resolve().parent.parent / "data" / "bench-cache"))


def timed(fn: Callable[[], object], repeat: int, warmup: int = 3) -> np.ndarray:
    """Wall-clock milliseconds of `repeat` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1000
    return out


def pct(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "n": int(len(ms))}


def vit_b32_dir() -> Path:
    """The ViT-B/32-sized random-weight checkpoint, built once and cached."""
    from clipsearch.models.modelgen import build_stand_in

    path = CACHE / "random-vit-b-32"
    if not (path / "model.safetensors").is_file():
        build_stand_in(path, "vit-b-32", model_id="clipsearch/random-vit-b-32")
    return path


def clustered_vectors(n: int, dim: int = 512, clusters: int = 2000, spread: float = 0.7, seed: int = 0) -> np.ndarray:
    """Unit vectors drawn around random cluster centres: a crude stand-in for CLIP embeddings.

    Uniform random vectors make every neighbour equally far, so HNSW looks broken on them and
    says nothing about real data; real embeddings sit in clusters (subjects, styles).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        noise = rng.standard_normal((m, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        block = centres[rng.integers(0, clusters, m)] + noise
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def write_results(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    figures = {"benchmark": name, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
