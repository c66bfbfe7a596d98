"""The torch encoder: any family's towers through PyTorch + transformers.

The text and image towers load separately and lazily, so a text query never pays for the vision
weights. Tokenisation is `clipsearch.models.tokenizer`'s, the same as the ONNX encoder's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from clipsearch.models.encoder import l2_normalize
from clipsearch.models.families import family_of
from clipsearch.models.preprocess import PreprocessConfig, preprocess_images
from clipsearch.models.tokenizer import TextTokenizer


class TorchEncoder:
    """A checkpoint's towers on CUDA when present, CPU threads otherwise."""

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

        from clipsearch.models.hf import checkpoint_card, quiet_transformers

        quiet_transformers()
        self.source = source
        self.family_spec = family_of(source)
        self.family = self.family_spec.name
        self.card = checkpoint_card(source, self.family_spec, model_id)
        self.model_id = self.card.model_id
        self.random_weights = self.card.random_weights
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)
        self.cpu_bf16 = cpu_bf16
        self.preprocess_config = self._preprocess_config()
        self._text = self._vision = None
        self._tokenizer: TextTokenizer | None = None
        self._lock = threading.Lock()
        for tower in load:
            self._tower(tower)

    def _preprocess_config(self) -> PreprocessConfig:
        if Path(self.source).is_dir():
            return PreprocessConfig.from_pretrained(self.source, self.family_spec)
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(self.source, "preprocessor_config.json")
            return PreprocessConfig.from_pretrained(Path(path).parent, self.family_spec)
        except Exception:  # noqa: BLE001 - no preprocessor config on the hub: the family's defaults
            return PreprocessConfig.for_family(self.family_spec)

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
        from clipsearch.models.hf import load_tower, tokenizer_config, tokenizer_json
        from clipsearch.models.tokenizer import pad_token_id

        model = load_tower(self.source, self.family_spec, which).to(self.device)
        if which == "text":
            tok = tokenizer_json(self.source, self.family_spec)
            self._tokenizer = TextTokenizer(tok, self.family_spec.text, pad_token_id(tok, tokenizer_config(self.source)))
            self._text = model
        else:
            self._vision = model
        return model

    @property
    def tokenizer(self) -> TextTokenizer:
        self._tower("text")
        return self._tokenizer

    @property
    def loaded_towers(self) -> tuple[str, ...]:
        return tuple(n for n, m in (("text", self._text), ("vision", self._vision)) if m is not None)

    @property
    def dim(self) -> int:
        return int(self.card.dim)

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
        """Texts to an (N, dim) array, tokenised by the family's rule (long texts truncated)."""
        import torch

        from clipsearch.models.hf import run_text

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._tower("text")
        ids, mask = self._tokenizer(texts)
        ids_t, mask_t = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = run_text(model, self.family_spec, ids_t, mask_t)
        return l2_normalize(out.float().cpu().numpy())

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess_images(images, self.preprocess_config)

    def encode_pixels(self, pixels) -> np.ndarray:
        """A preprocessed (N, 3, H, W) batch to an (N, dim) array."""
        import torch

        from clipsearch.models.hf import tower_output

        model = self._tower("vision")
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        if self.device.startswith("cuda"):
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            out = tower_output(self.family_spec, "vision", model(pixel_values=tensor))
        return l2_normalize(out.float().cpu().numpy())

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.preprocess(images))
