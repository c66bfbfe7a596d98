"""Ingest benchmark: end-to-end pipeline images/s against model-only forward throughput
(same dtype, same batch) and against a naive per-image loop, all in ONE process and run.

    python -m bench.ingest_bench [--quick] [--images N] [--batch 32] [--rounds R]

- model_only: `encode_pixels` on pre-made pixel tensors, the ceiling for the pipeline.
- pipeline:   the real ingest runner and stages over a folder of generated 640x427 JPEGs (read,
              decode + preprocess in this process between batches, the CPU default, or in a
              worker process; batched encode; FAISS upsert and save), with no embedding cache, so
              every image is decoded and encoded.
- naive:      what a first script does: for each file, PIL open, Hugging Face CLIPImageProcessor,
              the same vision tower on a batch of one.
Each round runs every variant once, interleaved, so machine noise hits them alike; figures are
medians over rounds. The model is the ViT-B/32 architecture with random weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE, vit_b32_dir, write_results


def make_photos(n: int) -> Path:
    """n distinct 640x427 JPEGs (shapes on a coloured ground, like real photos compress)."""
    from PIL import Image, ImageDraw

    folder = CACHE / f"ingest-photos-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        path = folder / f"photo-{i:04d}.jpg"
        colours = [tuple(int(c) for c in rng.integers(0, 255, 3)) for _ in range(7)]
        boxes = [(int(rng.integers(0, 580)), int(rng.integers(0, 370)), int(rng.integers(40, 320)),
                  int(rng.integers(40, 210))) for _ in range(6)]
        if path.exists():
            continue
        img = Image.new("RGB", (640, 427), colours[0])
        draw = ImageDraw.Draw(img)
        for colour, (x, y, w, h) in zip(colours[1:], boxes):
            (draw.ellipse if (x + y) % 2 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
        img.save(path, quality=90)
    return folder


def model_only(encoder, n: int, batch: int) -> float:
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    batches = max(1, n // batch)
    t0 = time.perf_counter()
    for _ in range(batches):
        encoder.encode_pixels(pixels)
    return batches * batch / (time.perf_counter() - t0)


def pipeline(encoder, folder: Path, batch: int, workers: int, nice: int = 10) -> tuple[float, dict]:
    from clipsearch.index.faiss_index import FaissIndex
    from ingest.cache import NoCache
    from ingest.progress import Summary
    from ingest.runner import Runner, RunnerOptions, Stages
    from ingest.sources.base import Item

    files = sorted(folder.glob("*.jpg"))
    items = [Item(str(p), p, None, {"source": "folder", "path": str(p)}) for p in files]
    summary = Summary("folder")
    with tempfile.TemporaryDirectory() as tmp:
        index = FaissIndex(Path(tmp) / "idx", model_id=encoder.model_id, dim=encoder.dim)
        options = RunnerOptions(batch_size=batch, decode_workers=workers, worker_nice=nice)
        pipe = Runner(Stages.standard(encoder, index, NoCache(), options), summary, options=options)
        t0 = time.perf_counter()
        pipe.run(items)
        pipe.save()
        elapsed = time.perf_counter() - t0
    assert summary.encoded == len(files) and not summary.failed, summary.render()
    return len(files) / elapsed, {k: round(v, 2) for k, v in summary.stage_seconds.items()}


def naive(encoder, folder: Path) -> float:
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(encoder.source)
    model = encoder._tower("vision")
    files = sorted(folder.glob("*.jpg"))
    t0 = time.perf_counter()
    for path in files:
        image = Image.open(path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            emb = model(pixel_values=inputs["pixel_values"]).image_embeds
        (emb / emb.norm(dim=-1, keepdim=True)).numpy()
    return len(files) / (time.perf_counter() - t0)


RATIOS = {
    "pipeline_vs_model_only_fp32": ("pipeline_fp32", "model_only_fp32"),
    "pipeline_vs_naive_fp32": ("pipeline_fp32", "naive_fp32"),
    "pipeline_worker_process_vs_model_only_fp32": ("pipeline_fp32_worker_process", "model_only_fp32"),
    "pipeline_bf16_vs_model_only_bf16": ("pipeline_bf16", "model_only_bf16"),
    "pipeline_bf16_worker_process_vs_model_only_bf16": ("pipeline_bf16_worker_process", "model_only_bf16"),
    "pipeline_bf16_vs_naive_fp32": ("pipeline_bf16", "naive_fp32"),
}


def ratio(runs: dict[str, list[float]], a: str, b: str) -> float:
    return round(statistics.median(x / y for x, y in zip(runs[a], runs[b])), 3)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 images, 2 rounds")
    ap.add_argument("--images", type=int, help="collection size (default 96, quick 64)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, help="default 8, quick 2 (short rounds: noise from other processes "
                                                "then hits every variant alike)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    n = args.images or (64 if args.quick else 96)
    rounds = args.rounds or (2 if args.quick else 8)

    from clipsearch.models.torch_encoder import TorchEncoder

    folder = make_photos(n)
    model_dir = str(vit_b32_dir())
    fp32 = TorchEncoder(model_dir, threads=args.threads, load=("vision",))
    bf16 = TorchEncoder(model_dir, threads=args.threads, load=("vision",), cpu_bf16=True)
    for enc in (fp32, bf16):
        enc.encode_pixels(np.zeros((2, 3, 224, 224), dtype=np.float32))  # warm-up
    variants = {
        "model_only_fp32": lambda: (model_only(fp32, n, args.batch), None),
        "pipeline_fp32": lambda: pipeline(fp32, folder, args.batch, workers=0),  # the CPU default
        "pipeline_fp32_worker_process": lambda: pipeline(fp32, folder, args.batch, workers=1),
        "naive_fp32": lambda: (naive(fp32, folder), None),
        "model_only_bf16": lambda: (model_only(bf16, n, args.batch), None),
        "pipeline_bf16": lambda: pipeline(bf16, folder, args.batch, workers=0),
        "pipeline_bf16_worker_process": lambda: pipeline(bf16, folder, args.batch, workers=1),
    }
    runs: dict[str, list[float]] = {k: [] for k in variants}
    stages = {}
    for r in range(rounds):
        for name, fn in variants.items():
            rate, stage_seconds = fn()
            runs[name].append(rate)
            if stage_seconds:
                stages[name] = stage_seconds
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()), flush=True)
    med = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    figures = {
        "model": "ViT-B/32 architecture, random weights", "images": n, "image_size": "640x427 JPEG",
        "batch": args.batch, "torch_threads": args.threads, "rounds": rounds, "cpus": os.cpu_count(),
        "images_per_s_median": med, "images_per_s_runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        # Ratios per round (same minute, same noise), then the median over rounds.
        "ratios_median_of_rounds": {name: ratio(runs, a, b) for name, (a, b) in RATIOS.items()},
        "targets": {"pipeline_vs_model_only": 0.9, "pipeline_vs_naive": 2.5},
        "stage_seconds_last_round": stages,
    }
    print("images/s (median):", med, flush=True)
    print("ratios (median of per-round ratios):", figures["ratios_median_of_rounds"], flush=True)
    write_results("ingest", figures)
    return figures


if __name__ == "__main__":
    main()
