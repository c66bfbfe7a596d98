"""CLIP encoders: text and image to L2-normalised float32 vectors.

`Encoder` is the interface ingest and the server depend on. `TorchClipEncoder` is the
transformers implementation; the text and image towers load separately and lazily, so a text
query never pays for the vision weights.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from clipsearch.models.preprocess import PreprocessConfig, preprocess_images

MAX_TEXT_TOKENS = 77


@runtime_checkable
class Encoder(Protocol):
    model_id: str
    preprocess_config: PreprocessConfig
    random_weights: bool  # a stand-in from clipsearch.modelgen: it runs, its rankings mean nothing

    @property
    def dim(self) -> int: ...

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray: ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def resolve_model_id(source: str, explicit: str | None = None) -> str:
    """The model's identity recorded in every index it builds.

    A hub id is its own identity. For a local directory: an explicit id (MODEL_ID beside
    MODEL_PATH) wins, then `clipsearch_model.json` (written by our export and test tools), then
    the `_name_or_path` in config.json if it names a hub id, then the directory's name.
    """
    if explicit:
        return explicit
    path = Path(source)
    if not path.is_dir():
        return source
    for name, key in (("clipsearch_model.json", "model_id"), ("config.json", "_name_or_path")):
        f = path / name
        if f.is_file():
            value = json.loads(f.read_text()).get(key)
            if value and not Path(value).is_absolute() and not Path(value).exists():
                return str(value)
    return path.resolve().name


def has_random_weights(source: str) -> bool:
    """Whether `source` is a random-weight stand-in (`clipsearch.modelgen` marks the ones it writes):
    such a model runs like CLIP, but its scores and rankings mean nothing."""
    marker = Path(source) / "clipsearch_model.json"
    try:
        return marker.is_file() and json.loads(marker.read_text()).get("random_weights") is True
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class TorchClipEncoder:
    """CLIP through PyTorch + transformers, on CUDA when present, CPU threads otherwise."""

    def __init__(
        self,
        source: str,
        *,
        model_id: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        cpu_bf16: bool = False,
        load: Sequence[str] = ("text",),
    ):
        import torch

        _quiet_transformers()
        self.source = source
        self.model_id = resolve_model_id(source, model_id)
        self.random_weights = has_random_weights(source)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)
        self.cpu_bf16 = cpu_bf16
        self.preprocess_config = PreprocessConfig.from_pretrained(source if Path(source).is_dir() else None)
        self._text = self._vision = self._tokenizer = None
        self._lock = threading.Lock()
        self._dim = None
        for tower in load:
            self._tower(tower)

    # -- loading ---------------------------------------------------------------------------
    def _tower(self, which: str):
        if which not in ("text", "vision"):
            raise ValueError(f"unknown tower {which!r}")
        model = self._text if which == "text" else self._vision
        if model is not None:
            return model
        with self._lock:  # two first image queries must not load the tower twice
            model = self._text if which == "text" else self._vision
            if model is None:
                model = self._load(which)
        return model

    def _load(self, which: str):
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

        cls = CLIPTextModelWithProjection if which == "text" else CLIPVisionModelWithProjection
        model = cls.from_pretrained(self.source).to(self.device).eval()
        if which == "text":
            self._tokenizer = AutoTokenizer.from_pretrained(self.source)
            self._text = model
        else:
            if not Path(self.source).is_dir():
                self._load_hub_preprocess_config()
            self._vision = model
        self._dim = int(model.config.projection_dim)
        return model

    def _load_hub_preprocess_config(self) -> None:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(self.source, "preprocessor_config.json")
            self.preprocess_config = PreprocessConfig.from_pretrained(Path(path).parent)
        except Exception:  # noqa: BLE001 - CLIP's defaults are right for OpenAI checkpoints
            pass

    @property
    def loaded_towers(self) -> tuple[str, ...]:
        return tuple(n for n, m in (("text", self._text), ("vision", self._vision)) if m is not None)

    @property
    def dim(self) -> int:
        if self._dim is None:
            from transformers import AutoConfig

            self._dim = int(AutoConfig.from_pretrained(self.source).projection_dim)
        return self._dim

    # -- encoding --------------------------------------------------------------------------
    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        if self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts to an (N, dim) array. One text is not padded; long texts are truncated at 77."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._tower("text")
        batch = self._tokenizer(
            texts,
            padding=len(texts) > 1,
            truncation=True,
            max_length=min(MAX_TEXT_TOKENS, int(model.config.max_position_embeddings)),
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
        return l2_normalize(out.float().cpu().numpy())

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess_images(images, self.preprocess_config)

    def encode_pixels(self, pixels) -> np.ndarray:
        """A preprocessed (N, 3, H, W) batch to an (N, dim) array."""
        import torch

        model = self._tower("vision")
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        if self.device.startswith("cuda"):
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            out = model(pixel_values=tensor).image_embeds
        return l2_normalize(out.float().cpu().numpy())

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.preprocess(images))


def load_encoder(settings, *, load: Sequence[str] = ("text",), **kwargs) -> Encoder:
    """The encoder the settings choose: torch (default) or ONNX Runtime."""
    if settings.encoder == "onnx":
        from clipsearch.models.onnx_encoder import OnnxClipEncoder  # no torch import on this path

        return OnnxClipEncoder(settings.onnx_path or settings.model_source, load=load, threads=settings.threads,
                               text_int8=settings.onnx_text_int8)
    if settings.encoder != "torch":
        raise ValueError(f"ENCODER must be 'torch' or 'onnx', got {settings.encoder!r}")
    explicit = settings.model_id if settings.model_path else None
    return TorchClipEncoder(settings.model_source, model_id=explicit, threads=settings.threads, load=load, **kwargs)
