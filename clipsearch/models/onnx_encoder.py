"""CLIP through ONNX Runtime: the query path without torch or transformers.

Reads a directory written by `python -m clipsearch.export_onnx`: `text.onnx`, `vision.onnx`,
`tokenizer.json`, `preprocessor_config.json` and the manifest `clipsearch_model.json`. Only
onnxruntime, tokenizers, numpy and PIL are imported, which is what makes a cold start cheap
(`import torch, transformers` alone costs about 3.9 s on 2 cores; these about 0.12 s).

Output matches `TorchClipEncoder`: the same tokenisation (one text unpadded, truncated at 77
tokens keeping the end token, batches right-padded), the same image preprocessing
(clipsearch.preprocess), L2-normalised float32 vectors.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from clipsearch.models import MAX_TEXT_TOKENS, l2_normalize
from clipsearch.errors import InvalidInput
from clipsearch.models.preprocess import PreprocessConfig, preprocess_images

MANIFEST = "clipsearch_model.json"  # same name as export_onnx.MANIFEST, which imports torch lazily


def read_manifest(path: Path) -> dict:
    """The export's manifest, or a FileNotFoundError saying how to make one."""
    file = path / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not an ONNX export (no {MANIFEST}): create one with "
            f"`python -m clipsearch.export_onnx SOURCE {path}` and point ONNX_PATH at it")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != "onnx" or not {"model_id", "dim", "towers"} <= set(manifest):
        raise FileNotFoundError(f"{file} does not describe an ONNX export: re-run clipsearch.export_onnx")
    return manifest


class OnnxClipEncoder:
    """The `Encoder` interface over ONNX Runtime sessions; the image tower's session loads lazily."""

    def __init__(
        self,
        path: str | Path,
        *,
        load: Sequence[str] = ("text",),
        threads: int | None = None,
        text_int8: bool = False,
    ):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.model_id: str = self.manifest["model_id"]
        self.random_weights = self.manifest.get("random_weights") is True  # exported from a stand-in
        self._dim = int(self.manifest["dim"])
        self.threads = threads
        self.text_int8 = text_int8
        self.preprocess_config = PreprocessConfig.from_pretrained(self.path)
        self._files = self._tower_files(text_int8)
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()
        self._tokenizer = None
        self._pad_id = 0
        self._max_tokens = int(self.manifest.get("max_text_tokens", MAX_TEXT_TOKENS))
        for tower in load:
            self._session(tower)

    def _tower_files(self, text_int8: bool) -> dict[str, Path]:
        files = {t: self.path / f for t, f in self.manifest["towers"].items()}
        if text_int8:
            int8 = self.manifest.get("quantization", {}).get("text_int8")
            if not int8:
                raise FileNotFoundError(
                    f"ONNX_TEXT_INT8 is set but {self.path} has no int8 text tower: export with --int8-text")
            files["text"] = self.path / int8
        return files

    # -- loading ---------------------------------------------------------------------------
    def _session(self, which: str):
        if which not in ("text", "vision"):
            raise ValueError(f"unknown tower {which!r}")
        session = self._sessions.get(which)
        if session is not None:
            return session
        with self._lock:  # two first image queries must not build the session twice
            session = self._sessions.get(which)
            if session is None:
                session = self._load(which)
                self._sessions[which] = session
        return session

    def _load(self, which: str):
        import onnxruntime as ort

        file = self._files.get(which)
        if file is None:
            raise InvalidInput(f"this deployment's ONNX export has no {which} tower: "
                               f"{'image' if which == 'vision' else 'text'} queries are not available")
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: re-run clipsearch.export_onnx into {self.path}")
        if which == "text":
            self._load_tokenizer()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads or 0  # 0: one per physical core
        opts.inter_op_num_threads = 1  # the graphs are sequential; a second pool only costs memory
        # With an explicit thread count above one, workers spin between ops: a blocked worker is
        # woken for each of the graph's ~150 parallel ops, which after an idle gap costs more than
        # the second thread gains (2 idle cores, 10-token text encode, 50 ms between queries: 7.9 ms
        # spinning, 13.1 ms blocking, 11.8 ms on one thread). Spinning takes CPU from neighbours
        # (one CPU-bound process beside it: 14.7 ms against 10.6 ms blocking), which is why the
        # query service asks for a second thread only when it owns a second vCPU (server.app).
        spin = self.threads is not None and self.threads > 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            return ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises bare Exception subclasses (Fail, InvalidProtobuf)
            raise ValueError(f"cannot load {file} ({exc}): re-run clipsearch.export_onnx into {self.path}") from exc

    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer

        file = self.path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: re-run clipsearch.export_onnx into {self.path}")
        tok = Tokenizer.from_file(str(file))
        tok.no_padding()  # padding is ours to do per batch (a shared tokenizer's state is not)
        # The post-processor reserves room for the start and end tokens: the end token survives.
        tok.enable_truncation(max_length=self._max_tokens)
        self._pad_id = self._pad_token_id(tok)
        self._tokenizer = tok

    def _pad_token_id(self, tok) -> int:
        """The pad token transformers would use: tokenizer_config's, else the end token."""
        cfg_file = self.path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        for key in ("pad_token", "eos_token"):
            token = cfg.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if token and tok.token_to_id(token) is not None:
                return int(tok.token_to_id(token))
        return 0

    @property
    def loaded_towers(self) -> tuple[str, ...]:
        return tuple(t for t in ("text", "vision") if t in self._sessions)

    @property
    def dim(self) -> int:
        return self._dim

    # -- encoding --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 input_ids and attention_mask, right-padded to the longest text."""
        self._session("text")
        encodings = self._tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts to an (N, dim) array. One text is not padded; long texts are truncated at 77."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("texts must be strings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        session = self._session("text")
        ids, mask = self.tokenize(texts)
        (out,) = session.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})
        return l2_normalize(out)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess_images(images, self.preprocess_config)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A preprocessed (N, 3, H, W) batch to an (N, dim) array."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        cfg = self.preprocess_config
        if pixels.ndim != 4 or pixels.shape[1:] != (3, cfg.crop_height, cfg.crop_width):
            raise InvalidInput(f"pixels must have shape (N, 3, {cfg.crop_height}, {cfg.crop_width}), "
                               f"got {pixels.shape}")
        if pixels.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        (out,) = self._session("vision").run(["image_embeds"], {"pixel_values": pixels})
        return l2_normalize(out)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.preprocess(images))
