"""Shared fixtures: tiny random-weight checkpoints of every family built locally, generated images."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP checkpoint (config, safetensors, tokenizer, preprocessor config)."""
    from clipsearch.models.modelgen import build_stand_in

    return build_stand_in(tmp_path_factory.mktemp("model") / "tiny-clip", "tiny", model_id="clipsearch/tiny-test")


# The tiny stand-in of each family (clipsearch.models.modelgen presets).
FAMILY_PRESETS = {"clip": "tiny", "siglip": "siglip-tiny", "siglip2": "siglip2-tiny"}


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory, tiny_model_dir):
    """`stand_in(family)`: that family's tiny random-weight checkpoint, built once per session."""
    from clipsearch.models.modelgen import build_stand_in

    built = {"clip": tiny_model_dir}

    def get(family: str) -> Path:
        if family not in built:
            preset = FAMILY_PRESETS[family]
            built[family] = build_stand_in(tmp_path_factory.mktemp("model") / preset, preset,
                                           model_id=f"clipsearch/{preset}-test")
        return built[family]

    return get


@pytest.fixture(scope="session")
def stand_in_onnx(tmp_path_factory, stand_in):
    """`stand_in_onnx(family)`: the ONNX export of `stand_in(family)` (int8 text tower too), once."""
    from clipsearch.models.export import export

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            out = tmp_path_factory.mktemp("onnx") / f"{family}-onnx"
            export(str(stand_in(family)), out, int8_text=True)
            built[family] = out
        return built[family]

    return get


@pytest.fixture
def tiny_model_env(monkeypatch, tiny_model_dir):
    """The environment of a process using the tiny model and the default (embedded) backend."""
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("TORCH_THREADS", "1")
    monkeypatch.delenv("MODEL_ID", raising=False)
    monkeypatch.delenv("BACKEND", raising=False)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    from clipsearch.models.torch_encoder import TorchEncoder

    return TorchEncoder(str(tiny_model_dir), threads=1, load=("text", "vision"))


def make_image(seed: int, size=(64, 48), fmt: str = "JPEG", mode: str = "RGB", **save_kwargs) -> bytes:
    """A distinct, deterministic image: a random low-frequency pattern, upscaled."""
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BILINEAR)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


@pytest.fixture
def image_bytes():
    return make_image


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """Twelve distinct JPEG/PNG photos in nested folders."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(12):
        sub = root / ("sub" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        fmt, ext = ("PNG", "png") if i % 4 == 0 else ("JPEG", "jpg")
        (sub / f"photo{i:02d}.{ext}").write_bytes(make_image(i, size=(80 + i, 60), fmt=fmt))
    return root


@pytest.fixture
def fake_opensearch():
    """A strict fake OpenSearch on a free 127.0.0.1 port (tests/fake_opensearch.py): `.url`,
    `.fail()`, `.drop()`, `.delay()`, `.reject_items()` for faults."""
    from fake_opensearch import FakeOpenSearch

    with FakeOpenSearch() as fake:
        yield fake
