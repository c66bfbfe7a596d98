"""The model card: `clipsearch_model.json` beside a model's files, saying what the model is.

One file, one meaning, whoever writes it: the model's identity (the id every index it builds
records), its family, dimension and licence, whether it is a random-weight stand-in, the min_score
this checkpoint suggests, and, in a directory written by the ONNX export, the export's graphs
(`onnx`). Written by `clipsearch.models.modelgen` (stand-ins), `server/download_model.py` (the
container's weights: id and revision only) and `clipsearch.models.export`; read by both encoders.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CARD_FILE = "clipsearch_model.json"

# Licences of the checkpoints the documentation names (docs/models.md), from their model cards.
KNOWN_LICENCES = {
    "openai/clip-vit-base-patch32": "MIT",
    "openai/clip-vit-base-patch16": "MIT",
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": "MIT",
    "google/siglip-base-patch16-224": "Apache-2.0",
    "google/siglip2-base-patch16-224": "Apache-2.0",
    "google/siglip2-base-patch32-256": "Apache-2.0",
}


@dataclass
class ModelCard:
    model_id: str
    family: str | None = None
    dim: int | None = None
    licence: str | None = None
    random_weights: bool = False  # a clipsearch.models.modelgen stand-in: it runs, its rankings mean nothing
    suggested_min_score: float | None = None
    revision: str | None = None
    onnx: dict[str, Any] | None = None  # the ONNX export's graphs, tokenizer and settings
    extra: dict[str, Any] = field(default_factory=dict)  # anything else a writer recorded, kept as is

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelCard":
        known = {f.name for f in fields(cls)} - {"extra"}
        card = cls(model_id=str(raw.get("model_id") or ""), extra={k: v for k, v in raw.items() if k not in known})
        for key in known - {"model_id"}:
            if key in raw:
                setattr(card, key, raw[key])
        card.random_weights = raw.get("random_weights") is True  # only the stand-in writer's own flag counts
        return card

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        return {**self.extra, **out}

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def read_card(directory: str | Path) -> ModelCard | None:
    """The card in `directory`, or None when there is none or it is not a JSON object."""
    file = Path(directory) / CARD_FILE
    try:
        raw = json.loads(file.read_text()) if file.is_file() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return ModelCard.from_dict(raw) if isinstance(raw, dict) else None


def resolve_model_id(source: str, explicit: str | None = None) -> str:
    """The model's identity recorded in every index it builds.

    A hub id is its own identity. For a local directory: an explicit id (MODEL_ID beside
    MODEL_PATH) wins, then the card's, then the `_name_or_path` in config.json if it names a hub
    id, then the directory's name.
    """
    if explicit:
        return explicit
    path = Path(source)
    if not path.is_dir():
        return source
    card = read_card(path)
    candidates = [card.model_id if card else None]
    try:
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        candidates.append(config.get("_name_or_path") if isinstance(config, dict) else None)
    except (OSError, ValueError):
        pass
    for value in candidates:
        if value and not Path(value).is_absolute() and not Path(value).exists():
            return str(value)
    return path.resolve().name


def has_random_weights(source: str) -> bool:
    """Whether `source` is a random-weight stand-in (`clipsearch.models.modelgen` marks the ones it
    writes): such a model runs like the real one, but its scores and rankings mean nothing."""
    card = read_card(source) if Path(source).is_dir() else None
    return bool(card and card.random_weights)


def siglip_min_score(logit_scale: float, logit_bias: float) -> float | None:
    """The cosine at which SigLIP's sigmoid(cos * exp(scale) + bias) is one half (families.py)."""
    scale = math.exp(logit_scale)
    if not math.isfinite(scale) or scale <= 0 or not math.isfinite(logit_bias):
        return None
    return round(-logit_bias / scale, 4)
