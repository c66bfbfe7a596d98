"""The `Encoder` interface ingest, the server and the evaluation depend on, and the one loader.

Two implementations with the same vectors: `TorchEncoder` (transformers; ingest, local runs) and
`OnnxEncoder` (ONNX Runtime + tokenizers, no torch: the Lambda image). Either one loads any
family's checkpoint (`families.py`); vectors are L2-normalised float32, so inner product = cosine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from clipsearch.models.card import ModelCard
from clipsearch.models.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from clipsearch.config import ModelSettings


@runtime_checkable
class Encoder(Protocol):
    model_id: str
    family: str  # families.FAMILIES' key: "clip", "siglip", "siglip2"
    card: ModelCard
    preprocess_config: PreprocessConfig
    random_weights: bool  # a stand-in from clipsearch.models.modelgen: it runs, its rankings mean nothing

    @property
    def dim(self) -> int: ...

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray: ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_encoder(settings: "ModelSettings", *, load: Sequence[str] = ("text",), **kwargs) -> Encoder:
    """The encoder the model settings choose: torch (default) or ONNX Runtime, for the checkpoint's family."""
    if settings.encoder == "onnx":
        from clipsearch.models.onnx_encoder import OnnxEncoder  # no torch import on this path

        return OnnxEncoder(settings.onnx_path or settings.source, load=load, threads=settings.threads,
                           text_int8=settings.onnx_text_int8)
    if settings.encoder != "torch":
        raise ValueError(f"ENCODER must be 'torch' or 'onnx', got {settings.encoder!r}")
    from clipsearch.models.torch_encoder import TorchEncoder

    explicit = settings.id if settings.path else None
    return TorchEncoder(settings.source, model_id=explicit, threads=settings.threads, load=load, **kwargs)
