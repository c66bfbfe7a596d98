"""The encode stage: a batch of crops -> L2-normalised float32 vectors, one forward pass."""

from __future__ import annotations

import numpy as np

from clipsearch.index.base import vector_problem
from clipsearch.models import Encoder
from ingest.decode import normalize_batch
from ingest.stages.base import Entry, Failures


class EncodeStage:
    """Sets each entry's `vector`. A vector the index cannot hold (a model that overflows on
    some input: NaN, the wrong size) fails that image alone."""

    def __init__(self, encoder: Encoder, dim: int):
        self.encoder, self.dim = encoder, dim
        self.ready = False  # the vision tower is loaded and has run once

    def warm_up(self) -> None:
        """Load the vision tower. Called only once something needs encoding, so a run that finds
        everything indexed or cached never pays for the model."""
        if "vision" not in getattr(self.encoder, "loaded_towers", ()):  # else loaded by the caller already
            cfg = self.encoder.preprocess_config
            self.encoder.encode_pixels(np.zeros((1, 3, cfg.crop_height, cfg.crop_width), dtype=np.float32))
        self.ready = True

    def __call__(self, batch: list[Entry]) -> tuple[list[Entry], Failures]:
        pixels = normalize_batch([entry.crop for entry in batch], self.encoder.preprocess_config)
        vectors = self.encoder.encode_pixels(pixels)
        ok: list[Entry] = []
        failed: Failures = []
        for entry, vector in zip(batch, vectors):
            entry.crop = None
            problem = vector_problem(vector, self.dim)
            if problem is None:
                entry.vector = vector
                ok.append(entry)
            else:
                failed.append((entry, f"invalid_vector: the encoder's {problem}"))
        return ok, failed
