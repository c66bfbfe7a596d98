"""The model families side by side, measured in one run: what a better model costs on the query path.

    python -m bench.models_bench [--quick] [--families clip_vit_b32,siglip2_b16]

Each family's stand-in at its published base size (random weights: cost does not depend on their
values; `clipsearch.models.modelgen` presets), exported to ONNX (fp32 and an int8 text tower) and
served text-only through `server.local`'s emulator stack, as the Lambda runs it:

- cold start: from starting the stack to the first 200 on POST /search (a 25k-vector index of the
  family's dimension), then warm direct invocations on the emulator's port: p50 with the function
  sized for two vCPUs (3,538 MB) and for one (1,769 MB; the handler gives ONNX Runtime one thread
  per whole vCPU, server.app.query_threads), and the runtime process's peak RSS (VmHWM);
- in process: tokenizer load and text-session creation, image encode (img/s, batch 16, 2 threads);
- parity: ONNX against the torch encoder on the same stand-in (max abs diff, mean-centred cosine,
  identical top-10 over an index of the torch image vectors), int8 text against fp32;
- installed size: requirements-onnx.txt's closure plus each family's exported files.

Targets (benchmarks, not tests): ONNX text-only cold start <= 1.2 s, peak RSS <= 400 MB, warm p50
within 2x CLIP ViT-B/32's in the same run; parity max abs diff <= 1e-4 and identical top-10.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE, clustered_vectors, pct, write_results
from bench.depsize import dir_mb, installed_mb

REPO = Path(__file__).resolve().parent.parent
# name: (modelgen preset, the published checkpoints of that architecture)
FAMILY_MODELS = {
    "clip_vit_b32": ("vit-b-32", "openai/clip-vit-base-patch32, laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    "siglip_b16": ("siglip-b16", "google/siglip-base-patch16-224"),
    "siglip2_b16": ("siglip2-b16", "google/siglip2-base-patch16-224"),
    "siglip2_b32_256": ("siglip2-b32-256", "google/siglip2-base-patch32-256"),
}
BASELINE = "clip_vit_b32"
VARIANTS = {"fp32_2vcpu": (3538, False), "fp32_1vcpu": (1769, False), "int8_2vcpu": (3538, True)}
TARGETS = {"cold_start_s": 1.2, "peak_rss_mb": 400.0, "warm_p50_vs_clip_vit_b32": 2.0, "parity_max_abs_diff": 1e-4}
QUERY = "a photo of two dogs on the beach"
QUERIES = [QUERY, "a red car", "snow covered mountains", "a cup of coffee on a wooden table",
           "portrait of a woman in the city at night", "green trees near the river", "old house"]


def prepare(name: str) -> tuple[Path, Path, Path]:
    """The stand-in, its ONNX export (fp32 + int8 text) and a 25k-vector index, built once and cached."""
    from clipsearch.index import Document
    from clipsearch.index.faiss_index import FaissIndex
    from clipsearch.index.faiss_files import INDEX_MANIFEST
    from clipsearch.models import CARD_FILE, read_card
    from clipsearch.models.export import export
    from clipsearch.models.modelgen import build_stand_in

    preset = FAMILY_MODELS[name][0]
    source = CACHE / f"random-{preset}"
    if not (source / CARD_FILE).is_file():
        print(f"building the {preset} stand-in (once) ...", flush=True)
        build_stand_in(source, preset, model_id=f"clipsearch/random-{preset}")
    onnx_dir = CACHE / f"onnx-{preset}"
    card = read_card(onnx_dir)
    if not card or not card.onnx or not card.onnx.get("quantization"):
        print(f"exporting {preset} to ONNX (once) ...", flush=True)
        export(str(source), onnx_dir, int8_text=True)
        card = read_card(onnx_dir)
    index_dir = CACHE / f"models-index-{preset}-25k"
    if not (index_dir / INDEX_MANIFEST).is_file():
        index = FaissIndex.open(index_dir, model_id=card.model_id, dim=card.dim)
        with index.loading():
            index.upsert(Document(f"p{i:05d}", v, {"width": 640, "height": 480})
                         for i, v in enumerate(clustered_vectors(25_000, dim=card.dim)))
            index.save()
    return source, onnx_dir, index_dir


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def stack_run(env: dict[str, str], warm: int) -> dict:
    """Start the emulator stack, time it to the first text answer, then `warm` unique text
    invocations on the emulator's own port; the runtime's peak RSS at the end (text tower only)."""
    import requests

    from server.local import LocalLambda

    body = {"query": QUERY, "input_type": "text", "k": 10}
    stack = LocalLambda(env=env, log=os.devnull)
    t0 = time.perf_counter()
    stack.start(wait=False)
    try:
        with requests.Session() as http:
            while True:
                try:
                    r = http.post(stack.search_url, json=body, timeout=60)
                except requests.ConnectionError:
                    r = None
                if r is not None and r.status_code == 200:
                    break
                if time.perf_counter() - t0 > 180:
                    raise RuntimeError(f"no answer from the stack: {r.status_code if r else 'refused'} "
                                       f"{r.text[:300] if r else ''}")
                time.sleep(0.01)
            cold = time.perf_counter() - t0
            ms, encode_ms = [], []
            for i in range(warm):
                a = time.perf_counter()
                r = http.post(stack.rie_url, json={**body, "query": f"{QUERIES[i % len(QUERIES)]} {i}"}, timeout=60)
                ms.append((time.perf_counter() - a) * 1000)
                r.raise_for_status()
                encode_ms.append(json.loads(r.json()["body"])["took_ms"]["encode"])
            health = http.get(stack.health_url, timeout=30).json()
        runtime = stack.runtime_process()
        return {"cold_s": cold, "warm_ms": ms, "encode_ms": encode_ms, "peak_rss_mb": _vm_hwm_mb(runtime.pid),
                "towers": health.get("towers"), "family": health.get("family"), "threads": health.get("threads"),
                "torch_loaded": any("libtorch" in m.path for m in runtime.memory_maps())}
    finally:
        stack.stop()


def variant_env(onnx_dir: Path, index_dir: Path, memory_mb: int, int8: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "MODEL_PATH", "TORCH_THREADS", "INDEX_MEMORY")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", BACKEND="faiss", ENCODER="onnx",
               ONNX_PATH=str(onnx_dir), ONNX_TEXT_INT8="true" if int8 else "false", INDEX_PATH=str(index_dir),
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory_mb), PRELOAD_IMAGE_TOWER="false")
    return env


def bench_stacks(prepared: dict[str, tuple[Path, Path, Path]], rounds: int, warm: int) -> dict:
    """Every family x variant, rounds interleaved (machine noise hits all alike); medians."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(rounds):
        for name, (_, onnx_dir, index_dir) in prepared.items():
            for variant, (memory_mb, int8) in VARIANTS.items():
                out = stack_run(variant_env(onnx_dir, index_dir, memory_mb, int8), warm)
                runs.setdefault((name, variant), []).append(out)
                print(f"  round {r + 1}/{rounds} {name} {variant}: cold {out['cold_s']:.2f} s, "
                      f"warm p50 {np.median(out['warm_ms'][3:]):.1f} ms, peak {out['peak_rss_mb']:.0f} MB", flush=True)
    figures: dict = {}
    for (name, variant), rs in runs.items():
        warm_ms = np.concatenate([x["warm_ms"][3:] for x in rs])  # the first three warm up
        figures.setdefault(name, {})[variant] = {
            "cold_start_s": round(float(np.median([x["cold_s"] for x in rs])), 3),
            "cold_runs_s": [round(x["cold_s"], 3) for x in rs],
            "warm_query": pct(warm_ms),
            "warm_encode_p50_ms": round(float(np.median(np.concatenate([x["encode_ms"][3:] for x in rs]))), 3),
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in rs)),
            "threads": rs[0]["threads"], "towers": rs[0]["towers"], "family": rs[0]["family"],
            "torch_loaded": any(x["torch_loaded"] for x in rs),
        }
    return figures


def _images(n: int, offset: int = 0):
    from PIL import Image

    rng = np.random.default_rng(offset)
    out = []
    for i in range(n):
        small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(small, "RGB").resize((96 + i % 5 * 17, 80 + i % 3 * 23), Image.Resampling.BILINEAR))
    return out


def in_process(onnx_dir: Path, repeat: int) -> dict:
    """Tokenizer load, text-session creation (fp32, int8) and image encode throughput."""
    from tokenizers import Tokenizer

    from clipsearch.models.onnx_encoder import OnnxEncoder

    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
        loads.append(time.perf_counter() - t0)
    sessions = {}
    for label, int8 in (("fp32", False), ("int8", True)):
        ts = []
        for _ in range(3):
            enc = OnnxEncoder(onnx_dir, load=(), threads=2, text_int8=int8)
            enc._load_tokenizer()  # first, so that the session is timed alone
            t0 = time.perf_counter()
            enc._load("text")
            ts.append(time.perf_counter() - t0)
        sessions[label] = round(float(np.median(ts)), 3)
    enc = OnnxEncoder(onnx_dir, load=("vision",), threads=2)
    pixels = enc.preprocess(_images(16))
    enc.encode_pixels(pixels)  # warm-up
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        enc.encode_pixels(pixels)
        rates.append(len(pixels) / (time.perf_counter() - t0))
    return {"tokenizer_load_s": round(float(np.median(loads)), 3), "tokenizer_json_mb": round(dir_mb(onnx_dir, include=("tokenizer.json",)), 1),
            "text_session_s": sessions, "image_encode_img_per_s_batch16_2threads": round(float(np.median(rates)), 1),
            "image_size": enc.preprocess_config.crop_height}


def parity(source: Path, onnx_dir: Path) -> dict:
    """ONNX fp32 against torch on the same stand-in, and int8 text against fp32 (DESIGN.md's measures)."""
    from clipsearch.index import Document
    from clipsearch.index.faiss_index import FaissIndex
    from clipsearch.models.onnx_encoder import OnnxEncoder
    from clipsearch.models.torch_encoder import TorchEncoder

    words = "dogs cats beach mountains city street car flowers bird river bridge portrait food".split()
    texts = QUERIES + [f"a photo of {a} and {b}" for a in words for b in words[:3]] + ["二匹の犬", "كلب على الشاطئ"]
    torch_enc = TorchEncoder(str(source), threads=2, load=("text", "vision"))
    onnx_enc = OnnxEncoder(onnx_dir, threads=2, load=("text", "vision"))
    int8 = OnnxEncoder(onnx_dir, threads=2, text_int8=True)
    collection, image_queries = _images(64), _images(12, offset=99)
    index = FaissIndex(None, model_id=torch_enc.model_id, dim=torch_enc.dim, hnsw_threshold=2**62)
    index.upsert(Document(f"img{i}", v) for i, v in enumerate(torch_enc.encode_images(collection)))

    def compare(a: np.ndarray, b: np.ndarray) -> dict:
        mean = a.mean(0)
        ca, cb = a - mean, b - mean
        centred = (ca * cb).sum(1) / (np.linalg.norm(ca, axis=1) * np.linalg.norm(cb, axis=1))
        same = [[h.id for h in index.search(x, k=10)] == [h.id for h in index.search(y, k=10)] for x, y in zip(a, b)]
        return {"max_abs_diff": float(f"{np.abs(a - b).max():.3g}"), "mean_centred_cosine_min": round(float(centred.min()), 5),
                "identical_top10": round(float(np.mean(same)), 3), "n": len(a)}

    text_t, text_o = torch_enc.encode_text(texts), onnx_enc.encode_text(texts)
    image_t, image_o = torch_enc.encode_images(image_queries), onnx_enc.encode_images(image_queries)
    return {"text_onnx_fp32_vs_torch": compare(text_t, text_o), "image_onnx_vs_torch": compare(image_t, image_o),
            "text_onnx_int8_vs_fp32": compare(text_o, int8.encode_text(texts)),
            "text_graph": onnx_enc.card.onnx.get("text_graph"),
            "note": "random weights: read the mean-centred cosine and the top-10 agreement, not the plain cosine"}


def sizes(source: Path, onnx_dir: Path) -> dict:
    deps, _ = installed_mb(REPO / "requirements-onnx.txt")
    return {"dependencies_mb": round(deps), "checkpoint_mb": round(dir_mb(source)),
            "onnx_text_fp32_mb": round(dir_mb(onnx_dir, include=("text.onnx",))),
            "onnx_text_int8_mb": round(dir_mb(onnx_dir, include=("text.int8.onnx",))),
            "onnx_vision_mb": round(dir_mb(onnx_dir, include=("vision.onnx",))),
            "tokenizer_mb": round(dir_mb(onnx_dir, include=("tokenizer.json",)), 1),
            "image_total_fp32_mb": round(deps + dir_mb(onnx_dir, exclude=("text.int8",)))}


def verdict(stacks: dict) -> dict:
    base = stacks[BASELINE]["fp32_2vcpu"]["warm_query"]["p50_ms"]
    out = {}
    for name, variants in stacks.items():
        out[name] = {}
        for variant, fig in variants.items():
            ratio = fig["warm_query"]["p50_ms"] / base
            out[name][variant] = {
                "cold_start_s<=1.2": fig["cold_start_s"] <= TARGETS["cold_start_s"],
                "peak_rss_mb<=400": fig["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
                "warm_p50_within_2x_clip_fp32": ratio <= TARGETS["warm_p50_vs_clip_vit_b32"],
                "warm_p50_vs_clip_fp32": round(ratio, 2),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, fewer warm queries")
    ap.add_argument("--families", default=",".join(FAMILY_MODELS), help="comma-separated subset of "
                                                                       f"{', '.join(FAMILY_MODELS)}")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    unknown = set(names) - set(FAMILY_MODELS)
    if unknown or BASELINE not in names:
        ap.error(f"families must include {BASELINE} (the baseline) and come from {', '.join(FAMILY_MODELS)}")
    rounds, warm, repeat = (1, 15, 3) if args.quick else (3, 40, 5)
    load_before = os.getloadavg()
    prepared = {name: prepare(name) for name in names}
    print("emulator stacks: cold start to the first text answer, then warm invocations ...", flush=True)
    stacks = bench_stacks(prepared, rounds, warm)
    figures = {"families": {}, "stacks": stacks, "verdict": verdict(stacks)}
    for name, (source, onnx_dir, _) in prepared.items():
        print(f"{name}: in-process, parity, sizes ...", flush=True)
        figures["families"][name] = {"preset": FAMILY_MODELS[name][0], "architecture_of": FAMILY_MODELS[name][1],
                                     "in_process": in_process(onnx_dir, repeat), "parity": parity(source, onnx_dir),
                                     "installed": sizes(source, onnx_dir)}
    figures.update({
        "mode": "server.local.LocalLambda (Lambda RIE + awslambdaric + handler + gateway), ENCODER=onnx, text tower "
                "only; timed from starting it to the first 200 on POST /search; warm = direct invocations on the "
                "emulator's port; peak RSS = the runtime process's VmHWM after the warm queries",
        "index": "faiss, 25,000 clustered synthetic vectors of each family's dimension (exact search)",
        "rounds": rounds, "warm_queries_per_round": warm, "function_memory_mb": {k: v[0] for k, v in VARIANTS.items()},
        "targets": TARGETS, "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "random-weight stand-ins of each architecture: speed and memory are the real models', scores are not",
    })
    print(json.dumps(figures, indent=2))
    write_results("models", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
