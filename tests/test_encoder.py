"""The torch encoder on the tiny random-weight CLIP checkpoint loaded via from_pretrained (the other
families: tests/test_families.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from clipsearch.config import ModelSettings
from clipsearch.models import load_encoder, resolve_model_id
from clipsearch.models.torch_encoder import TorchEncoder
from clipsearch.images import decode_image
from clipsearch.models.preprocess import PreprocessConfig, to_pixels
from conftest import make_image


def test_model_id_comes_from_the_checkpoint(tiny_encoder, tiny_model_dir):
    assert tiny_encoder.model_id == "clipsearch/tiny-test"
    assert resolve_model_id(str(tiny_model_dir), "org/explicit") == "org/explicit"
    assert resolve_model_id("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"


@pytest.mark.parametrize("marker, expected", [
    ({"model_id": "x", "random_weights": True}, True),
    ({"model_id": "x"}, False),
    ({"model_id": "x", "random_weights": "yes"}, False),  # only the stand-in writer's own flag counts
    (["not", "an", "object"], False),
    ("{truncated", False),
    (None, False),  # no marker at all: a checkpoint from the hub or a user's directory
])
def test_random_weight_stand_ins_are_recognised(tmp_path, marker, expected):
    from clipsearch.models import CARD_FILE, has_random_weights

    if marker is not None:
        (tmp_path / CARD_FILE).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    assert has_random_weights(str(tmp_path)) is expected
    assert has_random_weights("openai/clip-vit-base-patch32") is False


def test_text_vectors_are_unit_float32(tiny_encoder):
    out = tiny_encoder.encode_text(["two dogs on a beach", "a red car", "sunset"])
    assert out.dtype == np.float32 and out.shape == (3, tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])  # different texts, different vectors


def test_single_query_is_not_padded_and_matches_batch(tiny_encoder):
    batch = tiny_encoder.encode_text(["two dogs", "a much longer query about a sunset over the sea"])
    single = tiny_encoder.encode_text("two dogs")
    np.testing.assert_allclose(single[0], batch[0], atol=1e-5)
    ids, mask = tiny_encoder.tokenizer(["two dogs"])
    assert ids.shape[1] < 10 and mask.all()


def test_long_text_is_truncated_not_rejected(tiny_encoder):
    out = tiny_encoder.encode_text("dogs " * 500)
    assert out.shape == (1, tiny_encoder.dim)
    # Everything past 77 tokens is dropped: appending more text changes nothing.
    np.testing.assert_allclose(out, tiny_encoder.encode_text("dogs " * 500 + "cats " * 50), atol=1e-6)


def test_text_query_never_loads_vision_tower(tiny_model_dir):
    enc = TorchEncoder(str(tiny_model_dir))
    enc.encode_text("two dogs")
    assert enc.loaded_towers == ("text",)
    enc.encode_images([decode_image(make_image(1))])
    assert enc.loaded_towers == ("text", "vision")


def test_towers_alone_equal_full_model(tiny_encoder, tiny_model_dir):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    full = CLIPModel.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    texts = ["two dogs on a beach", "a cat"]
    with torch.no_grad():
        ref_t = full.get_text_features(**tok(texts, padding=True, return_tensors="pt"))
        imgs = [decode_image(make_image(i)) for i in range(3)]
        pixels = torch.from_numpy(tiny_encoder.preprocess(imgs))
        ref_i = full.get_image_features(pixel_values=pixels)
    ref_t = getattr(ref_t, "pooler_output", ref_t)
    ref_i = getattr(ref_i, "pooler_output", ref_i)
    ref_t = (ref_t / ref_t.norm(dim=-1, keepdim=True)).numpy()
    ref_i = (ref_i / ref_i.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(tiny_encoder.encode_text(texts), ref_t, atol=1e-5)
    np.testing.assert_allclose(tiny_encoder.encode_images(imgs), ref_i, atol=1e-5)


def test_preprocessing_matches_hugging_face(tiny_model_dir):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    hf = CLIPImageProcessorPil.from_pretrained(str(tiny_model_dir))
    cfg = PreprocessConfig.from_pretrained(tiny_model_dir)
    for i, size in enumerate([(300, 451), (451, 300), (224, 224), (50, 60), (1001, 999)]):
        img = decode_image(make_image(i, size=size))
        ref = hf(images=[img], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(to_pixels(img, cfg), ref, atol=1e-5)


def test_exif_orientation_is_applied_before_encoding(tiny_encoder):
    img = Image.open(io.BytesIO(make_image(3, size=(90, 40))))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    upright = decode_image(buf.getvalue())
    assert upright.size == (40, 90)
    rotated = img.transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_allclose(tiny_encoder.encode_images([upright]), tiny_encoder.encode_images([rotated]), atol=0.02)


def test_cpu_bf16_autocast_is_close_to_fp32(tiny_model_dir, tiny_encoder):
    bf16 = TorchEncoder(str(tiny_model_dir), cpu_bf16=True, load=("vision",))
    imgs = [decode_image(make_image(i)) for i in range(4)]
    a, b = tiny_encoder.encode_images(imgs), bf16.encode_images(imgs)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < 0.1


def test_empty_batches(tiny_encoder):
    assert tiny_encoder.encode_text([]).shape == (0, tiny_encoder.dim)
    assert tiny_encoder.encode_images([]).shape == (0, tiny_encoder.dim)


def test_load_encoder_from_settings(tiny_model_dir):
    enc = load_encoder(ModelSettings.from_env({"MODEL_PATH": str(tiny_model_dir)}))
    assert enc.model_id == "clipsearch/tiny-test"
    enc = load_encoder(ModelSettings.from_env({"MODEL_PATH": str(tiny_model_dir), "MODEL_ID": "org/name"}))
    assert enc.model_id == "org/name"
    with pytest.raises(ValueError, match="ENCODER"):
        load_encoder(ModelSettings.from_env({"MODEL_PATH": str(tiny_model_dir), "ENCODER": "tensorflow"}))


def test_extreme_aspect_ratio_images_encode_in_bounded_memory(tiny_model_dir):
    """1x15000 and 15000x1 JPEGs (4 KB each) through the torch encoder: the peak RSS grows by
    megabytes, not by the 3 GB a whole-image resize before the crop would take."""
    from peak_memory import preprocess_peak_growth

    growth = preprocess_peak_growth("torch", tiny_model_dir)
    assert max(growth.values()) < 64 * 2**20, growth
