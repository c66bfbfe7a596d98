"""CLIP image preprocessing in PIL + numpy, without torch.

Shared by the torch and ONNX encoders and by ingest's decode workers, so every path produces
the same pixels. Follows Hugging Face's CLIPImageProcessor: resize the short side (bicubic),
centre-crop, rescale to [0, 1], normalise by the checkpoint's mean and std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.models.modelgen import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class PreprocessConfig:
    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: int = Image.Resampling.BICUBIC
    mean: tuple[float, float, float] = tuple(CLIP_MEAN)
    std: tuple[float, float, float] = tuple(CLIP_STD)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None) -> "PreprocessConfig":
        """Read `preprocessor_config.json` from a checkpoint directory; CLIP's defaults otherwise."""
        path = Path(model_dir) / "preprocessor_config.json" if model_dir else None
        if path is None or not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        size, crop = raw.get("size", 224), raw.get("crop_size", 224)
        edge = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
        ch, cw = (crop.get("height", 224), crop.get("width", 224)) if isinstance(crop, dict) else (crop, crop)
        return cls(
            shortest_edge=int(edge), crop_height=int(ch), crop_width=int(cw),
            resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
            mean=tuple(raw.get("image_mean", CLIP_MEAN)), std=tuple(raw.get("image_std", CLIP_STD)),
        )


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the short side to `shortest_edge`, then centre-crop; returns an RGB image."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), resample=cfg.resample, reducing_gap=None)
    top, left = (new_h - cfg.crop_height) // 2, (new_w - cfg.crop_width) // 2
    if top < 0 or left < 0:  # tiny image: pad like HF does (zeros around), then crop
        canvas = Image.new("RGB", (max(new_w, cfg.crop_width), max(new_h, cfg.crop_height)))
        canvas.paste(img, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
        img, new_w, new_h = canvas, canvas.width, canvas.height
        top, left = (new_h - cfg.crop_height) // 2, (new_w - cfg.crop_width) // 2
    return img.crop((left, top, left + cfg.crop_width, top + cfg.crop_height))


def to_pixels(img: Image.Image, cfg: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """One RGB image to a normalised float32 array of shape (3, H, W)."""
    arr = np.asarray(resize_and_crop(img, cfg), dtype=np.float32)  # H, W, 3
    scale = np.asarray(cfg.std, dtype=np.float32) * 255.0
    shift = np.asarray(cfg.mean, dtype=np.float32) / np.asarray(cfg.std, dtype=np.float32)
    chw = (arr / scale - shift).transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(chw)
    out[...] = chw
    return out


def preprocess_images(images, cfg: PreprocessConfig) -> np.ndarray:
    """A list of RGB images to a float32 batch of shape (N, 3, H, W)."""
    batch = np.empty((len(images), 3, cfg.crop_height, cfg.crop_width), dtype=np.float32)
    for i, img in enumerate(images):
        to_pixels(img, cfg, out=batch[i])
    return batch
