"""The decode + preprocess stage, run in worker processes (or threads): bytes in, a 224x224 crop out.

Kept free of torch and of the rest of ingest, so a spawned worker starts in a fraction of a
second. Workers return uint8 crops (a quarter of float32's bytes through the pipe) and the main
process normalises a whole batch at once with exactly the arithmetic of
`clipsearch.models.preprocess.to_pixels`, so ingest and the query path produce identical pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from clipsearch.errors import ClipsearchError
from clipsearch.images import decode_image
from clipsearch.models.preprocess import PreprocessConfig, fit


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class Decoded:
    crop: np.ndarray | None  # (H, W, 3) uint8, None when the image failed
    size: tuple[int, int]  # upright width, height of the decoded image
    error: str | None = None


def decode_one(data: bytes, cfg: PreprocessConfig, limits: DecodeLimits) -> Decoded:
    try:
        img = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        crop = np.asarray(fit(img, cfg), dtype=np.uint8)
        return Decoded(crop, img.size)
    except ClipsearchError as exc:  # bad image: reported by the caller, the run goes on
        return Decoded(None, (0, 0), f"{exc.code}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not end a long run
        return Decoded(None, (0, 0), f"decode_failed: {type(exc).__name__}: {exc}")


def decode_chunk(chunk: list[bytes], cfg: PreprocessConfig, limits: DecodeLimits) -> tuple[list[Decoded], float]:
    """Decode several images in one task (fewer round trips); returns them and the busy seconds."""
    t0 = time.perf_counter()
    out = [decode_one(data, cfg, limits) for data in chunk]
    return out, time.perf_counter() - t0


def normalize_batch(crops: list[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """(N, H, W, 3) uint8 crops to the (N, 3, H, W) float32 batch the encoder takes."""
    arr = np.stack(crops).astype(np.float32)
    scale = np.asarray(cfg.std, dtype=np.float32) * 255.0
    shift = np.asarray(cfg.mean, dtype=np.float32) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray((arr / scale - shift).transpose(0, 3, 1, 2))
