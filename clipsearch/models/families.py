"""Model families: what a checkpoint's own config says about its towers, tokenizer and pixels.

A family is chosen from the checkpoint's `config.json` (`model_type`) and, where one model type
covers two families, its tokenizer files. Everything that differs between families lives here, as
data; the encoders, the export and the stand-in generator read it and never test a family's name.

Rules, and where they come from (read in huggingface/transformers v5.24 unless said otherwise):

- CLIP (`model_type` "clip": OpenAI, LAION and DataComp checkpoints in transformers format).
  Causal text tower pooled at the end-of-text token, projected (src/transformers/models/clip/
  modeling_clip.py, CLIPTextTransformer.forward); one query is tokenised unpadded, a batch padded
  to its longest text and masked; 77 positions. Pixels: shortest edge resized (bicubic), centre
  crop, OpenAI's mean/std (models/clip/image_processing_pil_clip.py).
- SigLIP (`model_type` "siglip" with a SentencePiece `spiece.model`, SiglipTokenizer). Text tower
  bidirectional ("SigLIP's text model does not use a causal mask"), pooled at the *last position*
  ("which may be padding"), then a linear head (models/siglip/modeling_siglip.py,
  SiglipTextModel.forward). Trained on text padded to 64 tokens: "make sure to pass
  padding="max_length" as that's how the model was trained" (docs model_doc/siglip, usage tips;
  the same sentence in the SiglipTextModel docstring), and without an attention mask: the padding
  is attended to (open_clip issue #984, "there is no explicit masking for the padding tokens";
  transformers PR #26522 removed attention_mask from the checkpoints' model_input_names). Text is
  canonicalised first: lower-cased, punctuation removed, whitespace collapsed
  (SiglipTokenizer.canonicalize_text, after big_vision's prompt_engineering.py). Pixels: a plain
  resize to the square size (bicubic), no crop, mean and std 0.5 (image_processing_pil_siglip.py).
- SigLIP 2, fixed resolution (`model_type` "siglip" too, "backwards compatible with SigLIP", docs
  model_doc/siglip2; its tokenizer is Gemma's: `tokenizer_class` GemmaTokenizer, a byte-fallback
  BPE over 256k entries). The same towers and padding as SigLIP; "trained with lowercased text"
  (open_clip's ViT-B-16-SigLIP2.json cleans with "canonicalize", as for SigLIP; transformers added
  Siglip2Tokenizer, PR #43101, to lower-case and pad to 64 by itself).
- SigLIP 2 NaFlex (`model_type` "siglip2") is refused: its vision tower takes a variable grid of
  patches with a mask and per-image spatial shapes, and resizes its position embeddings per image
  (models/siglip2/modeling_siglip2.py, Siglip2VisionEmbeddings.resize_positional_embeddings), which
  neither our fixed-size preprocessing nor a fixed-shape vision graph covers. Its text tower is the
  fixed-resolution one's; use a fixed-resolution SigLIP 2 checkpoint instead.

Scores: every family's vectors are L2-normalised and ranked by cosine. SigLIP's own probability is
sigmoid(cos * exp(logit_scale) + logit_bias) (SiglipModel.forward), so the cosine at which a
checkpoint calls a pair even odds, -logit_bias / exp(logit_scale), is its suggested min_score
(computed from each checkpoint: `clipsearch.models.card`). CLIP has no calibrated threshold;
LAION filtered image/alt-text pairs with OpenAI's ViT-B/32 at cosine 0.3 (LAION-400M, chosen by
human evaluation) and 0.28 (LAION-5B, laion.ai/blog/laion-5b), which is the CLIP family's suggestion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / _STD, SigLIP's defaults


class UnsupportedModel(ValueError):
    """A checkpoint no family reads; the message says which config value and what to use instead."""

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class TextRule:
    max_tokens: int  # positions the text tower was trained with
    pad_to_max: bool  # every text padded to max_tokens (SigLIP), or a batch to its longest (CLIP)
    attention_mask: bool  # the tower takes a padding mask (CLIP), or attends to the padding (SigLIP)
    canonicalize: bool  # lower-case, drop punctuation, collapse whitespace before tokenising
    pooling: str  # "eos": the end-of-text token's state (CLIP); "last": the last position (SigLIP)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    text: TextRule
    image_mode: str  # "crop": shortest edge + centre crop; "resize": plain resize to the square
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # A fixed suggestion where the checkpoint cannot give one (CLIP); None where each checkpoint's
    # logit scale and bias give it (SigLIP, see the module docstring).
    suggested_min_score: float | None
    # The torch classes of the towers, by name (transformers is imported only where they load).
    text_class: str
    vision_class: str


CLIP = Family(
    name="clip", title="CLIP",
    text=TextRule(max_tokens=77, pad_to_max=False, attention_mask=True, canonicalize=False, pooling="eos"),
    image_mode="crop", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, suggested_min_score=0.28,
    text_class="CLIPTextModelWithProjection", vision_class="CLIPVisionModelWithProjection",
)
_SIGLIP_TEXT = TextRule(max_tokens=64, pad_to_max=True, attention_mask=False, canonicalize=True, pooling="last")
SIGLIP = Family(
    name="siglip", title="SigLIP", text=_SIGLIP_TEXT, image_mode="resize", mean=HALF, std=HALF,
    suggested_min_score=None, text_class="SiglipTextModel", vision_class="SiglipVisionModel",
)
SIGLIP2 = Family(
    name="siglip2", title="SigLIP 2", text=_SIGLIP_TEXT, image_mode="resize", mean=HALF, std=HALF,
    suggested_min_score=None, text_class="SiglipTextModel", vision_class="SiglipVisionModel",
)
FAMILIES: dict[str, Family] = {f.name: f for f in (CLIP, SIGLIP, SIGLIP2)}

# Tokenizer classes of SigLIP 2's Gemma vocabulary, as tokenizer_config.json names them.
_GEMMA_TOKENIZERS = ("GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer")


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: one of {', '.join(FAMILIES)}") from None


def detect(source: str, config: dict[str, Any], tokenizer_config: dict[str, Any] | None) -> Family:
    """The family of a checkpoint from its config.json and tokenizer_config.json contents."""
    model_type = config.get("model_type")
    if model_type == "clip":
        return CLIP
    if model_type == "siglip":
        tok_class = (tokenizer_config or {}).get("tokenizer_class") or ""
        return SIGLIP2 if tok_class in _GEMMA_TOKENIZERS else SIGLIP
    if model_type == "siglip2":
        raise UnsupportedModel(source, "SigLIP 2 NaFlex checkpoints (model_type 'siglip2') are not supported: their "
                                       "vision tower takes variable patch grids; use a fixed-resolution SigLIP 2 "
                                       "checkpoint (e.g. google/siglip2-base-patch16-224, model_type 'siglip')")
    raise UnsupportedModel(source, f"config.json has model_type {model_type!r}: clipsearch reads CLIP ('clip') "
                                   "and SigLIP / SigLIP 2 ('siglip') checkpoints in transformers format")


def read_json(source: str, name: str) -> dict[str, Any] | None:
    """A JSON file of a checkpoint: a local directory's, else from the hub (cached) for a hub id."""
    path = Path(source)
    if path.is_dir():
        file = path / name
    else:
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(source, name))
        except Exception:  # noqa: BLE001 - a missing optional file (tokenizer_config.json) is not an error
            return None
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def family_of(source: str) -> Family:
    """The family of the checkpoint at `source` (a local directory or a hub id)."""
    config = read_json(source, "config.json")
    if config is None:
        raise UnsupportedModel(source, "no readable config.json: MODEL_PATH must be a checkpoint directory in "
                                       "transformers format (config.json, weights, tokenizer files)")
    return detect(source, config, read_json(source, "tokenizer_config.json"))


def embedding_dim(family: Family, config: dict[str, Any]) -> int:
    """The dimension of the vectors: CLIP's projection_dim; SigLIP's vision width (its attention
    pooling head keeps it), which its text head projects to (SiglipTextConfig.projection_size)."""
    if family.text.pooling == "eos":
        return int(config.get("projection_dim", 512))
    return int(config.get("vision_config", {}).get("hidden_size", 768))
