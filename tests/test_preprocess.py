"""CLIP preprocessing against transformers' CLIPImageProcessorPil, for ordinary and extreme shapes,
and its memory on images whose whole resize would take gigabytes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.images import decode_image
from clipsearch.models.preprocess import PreprocessConfig, resize_and_crop, to_pixels
from conftest import make_image
from peak_memory import preprocess_peak_growth

ONE_LEVEL = 1 / 255 / min(PreprocessConfig().std)  # one uint8 step after normalisation


def _hf(**kwargs):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kwargs)


def _noise(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


ORDINARY = [(300, 451), (451, 300), (224, 224), (225, 224), (50, 60), (1001, 999), (640, 480), (1920, 1080),
            (1080, 1920), (4000, 3000), (3000, 500), (3, 5), (2, 1), (1, 1)]


@pytest.mark.parametrize("size", ORDINARY)
def test_ordinary_shapes_give_transformers_pixels(size):
    """Photos and pure noise (where any difference in the resampling shows): the same pixels."""
    hf, cfg = _hf(), PreprocessConfig()
    for img in (decode_image(make_image(sum(size), size=size)), _noise(size)):
        ref = hf(images=[img], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(to_pixels(img, cfg), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 300), (300, 1), (3, 2000), (2000, 3), (10, 5000), (20000, 1000)])
def test_extreme_shapes_stay_within_one_level_of_transformers(size):
    """Here only the crop's source region is resampled; transformers' whole resize (feasible at
    these sizes, 60-130 MB) differs from it by at most two uint8 steps in any value (the order
    Pillow picks for its two passes changes where overshoot is clipped; measured: 2)."""
    hf, cfg = _hf(), PreprocessConfig()
    for img in (decode_image(make_image(7, size=size)), _noise(size, seed=1)):
        ref = hf(images=[img], return_tensors="np")["pixel_values"][0]
        assert np.abs(to_pixels(img, cfg) - ref).max() <= 2 * ONE_LEVEL + 1e-5


def test_shortest_edge_below_the_crop_pads_like_transformers(tmp_path):
    """A checkpoint whose resize is smaller than its crop: zeros around, placed where
    transformers places them (an odd margin puts the extra pixel before the image)."""
    hf = _hf(size={"shortest_edge": 201}, crop_size={"height": 224, "width": 224})
    cfg = PreprocessConfig(shortest_edge=201)
    for size in ((300, 451), (451, 300), (1, 1), (1, 3000)):
        img = decode_image(make_image(3, size=size))
        ref = hf(images=[img], return_tensors="np")["pixel_values"][0]
        assert np.abs(to_pixels(img, cfg) - ref).max() <= ONE_LEVEL + 1e-5, size


@pytest.mark.parametrize("size", [(1, 1), (1, 15000), (15000, 1), (2, 1_000_000), (1_000_000, 2), (7, 3)])
def test_any_shape_gives_one_crop(size):
    img = Image.new("RGB", size, (10, 200, 30))
    crop = resize_and_crop(img, PreprocessConfig())
    assert crop.size == (224, 224) and crop.mode == "RGB"
    assert np.abs(np.asarray(crop, dtype=int) - (10, 200, 30)).max() <= 1  # a flat image stays flat


def test_ingest_decode_memory_is_bounded_for_extreme_shapes():
    growth = preprocess_peak_growth("ingest")
    assert max(growth.values()) < 64 * 2**20, growth
