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
import math
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


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after scaling the short side to `shortest_edge`, the long side truncated:
    `new_long = int(shortest_edge * long / short)`, as transformers' get_resize_output_image_size
    (huggingface/transformers, src/transformers/image_transforms.py, default_to_square=False)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


# Resizing the whole image first, as transformers does, costs new_w * new_h pixels (4 bytes each
# in PIL's RGB) plus a one-axis intermediate of new_w * height or width * new_h: for a 1x15000
# image (4 KB as a JPEG) that is 224 x 3,360,000, about 3 GB. Up to this many pixels the whole
# image is resized exactly as transformers does (identical pixels for every ordinary photo,
# whatever order Pillow picks for its two passes); beyond it only the crop's source region is
# resampled. 4M pixels is 16 MB, beside the up to 160 MB of a decoded 40-megapixel image.
FULL_RESIZE_MAX_PIXELS = 4_000_000
# The widest resampling filter PIL has (LANCZOS) reaches 3 source pixels per unit of scale.
_FILTER_REACH = 3


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the short side to `shortest_edge`, then centre-crop; returns an RGB image.

    transformers' PIL backend crops from `(resized - crop) // 2` and, where the resized image is
    smaller than the crop, pads with zeros placing it at `ceil((crop - resized) / 2)`
    (huggingface/transformers, src/transformers/image_transforms.py, center_crop); both done here.
    (Its torchvision backend, the default CLIPImageProcessor since transformers 5, resamples with
    torch's antialiased bicubic and pads at `(crop - resized) // 2`:
    src/transformers/image_processing_backends.py, TorchvisionBackend.resize / center_crop. Pixels
    differ from PIL's slightly; the padding only for checkpoints whose shortest edge is below the crop.)"""
    width, height = img.size
    new_w, new_h = resized_size(width, height, cfg.shortest_edge)
    if max(new_w * new_h, new_w * height, width * new_h) <= FULL_RESIZE_MAX_PIXELS:
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), resample=cfg.resample, reducing_gap=None)
        return _centre_crop(img, cfg)
    return _crop_then_resize(img, new_w, new_h, cfg)


def _crop_offset(size: int, crop: int) -> tuple[int, int]:
    """Where a centre crop starts in an axis of `size`, and where that axis lands in the crop."""
    return ((size - crop) // 2, 0) if size >= crop else (0, (crop - size + 1) // 2)


def _centre_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    (left, pad_x), (top, pad_y) = _crop_offset(img.width, cfg.crop_width), _crop_offset(img.height, cfg.crop_height)
    region = img.crop((left, top, left + min(img.width, cfg.crop_width), top + min(img.height, cfg.crop_height)))
    return _padded(region, pad_x, pad_y, cfg)


def _padded(region: Image.Image, pad_x: int, pad_y: int, cfg: PreprocessConfig) -> Image.Image:
    if region.size == (cfg.crop_width, cfg.crop_height):
        return region
    canvas = Image.new("RGB", (cfg.crop_width, cfg.crop_height))  # zeros, as transformers pads
    canvas.paste(region, (pad_x, pad_y))
    return canvas


def _source_span(size: int, resized: int, crop: int) -> tuple[float, float, int, int, int, int]:
    """One axis of resize-then-crop in source coordinates: the interval [lo, hi) that becomes the
    output, its output length and placement, and the integer region [first, last) that holds
    every source pixel the filter reads for it."""
    start, pad = _crop_offset(resized, crop)
    out = min(resized, crop)
    scale = size / resized
    lo, hi = start * scale, min(float(size), (start + out) * scale)
    reach = math.ceil(_FILTER_REACH * max(scale, 1.0)) + 1
    return lo, hi, out, pad, max(0, math.floor(lo) - reach), min(size, math.ceil(hi) + reach)


def _crop_then_resize(img: Image.Image, new_w: int, new_h: int, cfg: PreprocessConfig) -> Image.Image:
    """What resizing to (new_w, new_h) and centre-cropping gives, computed from the source region
    the crop needs: PIL maps output pixel j of a `box` resize to source `lo + (j + 0.5) * (hi -
    lo) / out`, the same position as in the whole resize, with the same filter width; the region
    keeps every pixel the filter reaches and ends where the image ends, so edge clamping is the
    same too. Memory is that of the region and the crop, whatever the aspect ratio."""
    x_lo, x_hi, out_w, pad_x, x_first, x_last = _source_span(img.width, new_w, cfg.crop_width)
    y_lo, y_hi, out_h, pad_y, y_first, y_last = _source_span(img.height, new_h, cfg.crop_height)
    region = img.crop((x_first, y_first, x_last, y_last))
    box = (x_lo - x_first, y_lo - y_first, x_hi - x_first, y_hi - y_first)
    return _padded(region.resize((out_w, out_h), resample=cfg.resample, box=box, reducing_gap=None), pad_x, pad_y, cfg)


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
