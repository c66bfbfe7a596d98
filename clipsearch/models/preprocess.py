"""Image preprocessing in PIL + numpy, without torch, for every family.

Shared by the torch and ONNX encoders and by ingest's decode workers, so every path produces
the same pixels. Two modes, as the checkpoint's `preprocessor_config.json` says:

- "crop" (CLIP): Hugging Face's CLIPImageProcessor: resize the short side (bicubic), centre-crop;
- "resize" (SigLIP): SiglipImageProcessor: a plain resize to the square size (bicubic, no crop,
  so the aspect ratio is not kept: src/transformers/models/siglip/image_processing_pil_siglip.py,
  `size = {"height": 224, "width": 224}`, no `do_center_crop`);

then rescale to [0, 1] and normalise by the checkpoint's mean and std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.models.families import CLIP, Family


@dataclass(frozen=True)
class PreprocessConfig:
    shortest_edge: int = 224
    crop_height: int = 224  # the output's height and width, in both modes
    crop_width: int = 224
    resample: int = Image.Resampling.BICUBIC
    mean: tuple[float, float, float] = CLIP.mean
    std: tuple[float, float, float] = CLIP.std
    mode: str = "crop"  # "crop": shortest edge + centre crop (CLIP); "resize": plain resize (SigLIP)

    @classmethod
    def for_family(cls, family: Family, size: int = 224) -> "PreprocessConfig":
        """The family's defaults, for a checkpoint without a preprocessor_config.json."""
        return cls(shortest_edge=size, crop_height=size, crop_width=size, mean=family.mean, std=family.std,
                   mode=family.image_mode)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None, family: Family = CLIP) -> "PreprocessConfig":
        """Read `preprocessor_config.json` from a checkpoint directory; the family's defaults otherwise.

        A config with `do_center_crop` (CLIP's) crops; one whose `size` is a height and width and
        that does not crop (SiglipImageProcessor's) resizes."""
        path = Path(model_dir) / "preprocessor_config.json" if model_dir else None
        if path is None or not path.is_file():
            return cls.for_family(family)
        raw = json.loads(path.read_text())
        size = raw.get("size", 224)
        if not raw.get("do_center_crop", "crop_size" in raw) and isinstance(size, dict) and "height" in size:
            h, w = int(size["height"]), int(size.get("width", size["height"]))
            return cls(shortest_edge=min(h, w), crop_height=h, crop_width=w, mode="resize",
                       resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
                       mean=tuple(raw.get("image_mean", family.mean)), std=tuple(raw.get("image_std", family.std)))
        crop = raw.get("crop_size", 224)
        edge = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
        ch, cw = (crop.get("height", 224), crop.get("width", 224)) if isinstance(crop, dict) else (crop, crop)
        return cls(
            shortest_edge=int(edge), crop_height=int(ch), crop_width=int(cw),
            resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
            mean=tuple(raw.get("image_mean", family.mean)), std=tuple(raw.get("image_std", family.std)),
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


def resize_plain(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """SigLIP's resize: straight to the output size, aspect ratio not kept; returns an RGB image."""
    size = (cfg.crop_width, cfg.crop_height)
    return img if img.size == size else img.resize(size, resample=cfg.resample, reducing_gap=None)


def fit(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The image at the tower's input size, by the checkpoint's mode."""
    return resize_plain(img, cfg) if cfg.mode == "resize" else resize_and_crop(img, cfg)


def to_pixels(img: Image.Image, cfg: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """One RGB image to a normalised float32 array of shape (3, H, W)."""
    arr = np.asarray(fit(img, cfg), dtype=np.float32)  # H, W, 3
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
