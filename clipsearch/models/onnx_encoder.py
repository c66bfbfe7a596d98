"""The ONNX Runtime encoder: the query path without torch or transformers, for every family.

Reads a directory written by `python -m clipsearch.export_onnx`: `text.onnx`, `vision.onnx`,
`tokenizer.json`, `preprocessor_config.json` and the model card `clipsearch_model.json`, whose
`onnx` section lists the graphs. Only onnxruntime, tokenizers, numpy and PIL are imported, which
is what makes a cold start cheap (`import torch, transformers` alone costs about 3.9 s on 2
cores; these about 0.12 s).

Output matches `TorchEncoder`: the same tokenisation (`clipsearch.models.tokenizer`, by the
family's rule), the same image preprocessing (`clipsearch.models.preprocess`), L2-normalised
float32 vectors.

Weights stay in the `.data` files beside the graphs, which ONNX Runtime memory-maps rather than
copies (measured: a 256,000 x 768 float32 Gather table, 789 MB on disk, leaves a process at 76 MB
RSS after a query), so a text query pages in only the embedding rows its tokens use: what keeps
SigLIP 2's 256k-entry table from costing its full size in memory.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from clipsearch.errors import InvalidInput
from clipsearch.models.card import CARD_FILE, ModelCard, read_card
from clipsearch.models.encoder import l2_normalize
from clipsearch.models.families import get as get_family
from clipsearch.models.preprocess import PreprocessConfig, preprocess_images
from clipsearch.models.tokenizer import TextTokenizer


def read_export_card(path: Path) -> ModelCard:
    """The export's card, or a FileNotFoundError saying how to make one."""
    file = path / CARD_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not an ONNX export (no {CARD_FILE}): create one with "
            f"`python -m clipsearch.export_onnx SOURCE {path}` and point ONNX_PATH at it")
    card = read_card(path)
    onnx = card.onnx if card else None
    if (not card or not card.model_id or not card.dim or not isinstance(onnx, dict)
            or not isinstance(onnx.get("towers"), dict)):
        raise FileNotFoundError(f"{file} does not describe an ONNX export: re-run clipsearch.export_onnx")
    return card


class OnnxEncoder:
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
        self.card = read_export_card(self.path)
        self.onnx = self.card.onnx
        self.family_spec = get_family(self.card.family or "clip")
        self.family = self.family_spec.name
        self.model_id: str = self.card.model_id
        self.random_weights = self.card.random_weights  # exported from a stand-in
        self._dim = int(self.card.dim)
        self.threads = threads
        self.text_int8 = text_int8
        self.preprocess_config = PreprocessConfig.from_pretrained(self.path, self.family_spec)
        self._files = self._tower_files(text_int8)
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()
        self._tokenizer: TextTokenizer | None = None
        for tower in load:
            self._session(tower)

    def _tower_files(self, text_int8: bool) -> dict[str, Path]:
        files = {t: self.path / f for t, f in self.onnx["towers"].items()}
        if text_int8:
            int8 = self.onnx.get("quantization", {}).get("text_int8")
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
        if which == "text" and self._tokenizer is None:
            # Once: a SigLIP 2 tokenizer (256k entries, 16 MB of JSON) takes ~0.5 s to load and holds
            # the GIL meanwhile, so loading it in a thread beside the session gains nothing
            # (measured on the SigLIP 2 B/16 stand-in: 0.65-1.2 s overlapped, 0.6-1.16 s in turn).
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
        try:
            self._tokenizer = TextTokenizer.from_dir(self.path, self.family_spec.text)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}: re-run clipsearch.export_onnx into {self.path}") from None

    @property
    def tokenizer(self) -> TextTokenizer:
        self._session("text")
        return self._tokenizer

    @property
    def loaded_towers(self) -> tuple[str, ...]:
        return tuple(t for t in ("text", "vision") if t in self._sessions)

    @property
    def dim(self) -> int:
        return self._dim

    # -- encoding --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 input_ids and attention_mask, padded by the family's rule."""
        return self.tokenizer(list(texts))

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts to an (N, dim) array, tokenised by the family's rule (long texts truncated)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("texts must be strings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        session = self._session("text")
        ids, mask = self.tokenize(texts)
        given = {"input_ids": ids, "attention_mask": mask}
        # The graph's own inputs: SigLIP's takes no mask (it attends to its padding).
        (out,) = session.run(["text_embeds"], {i.name: given[i.name] for i in session.get_inputs()})
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
