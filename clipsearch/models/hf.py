"""The torch side of the model wing: transformers' towers and tokenizers, by family.

Imported only where torch is: the torch encoder, the ONNX export and the stand-in generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.models.card import KNOWN_LICENCES, ModelCard, read_card, resolve_model_id, siglip_min_score
from clipsearch.models.families import Family, UnsupportedModel, embedding_dim, read_json

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tower(source: str, family: Family, which: str, **kwargs):
    """One tower, in eval mode (CLIPTextModelWithProjection, SiglipVisionModel, ...)."""
    import transformers

    if which not in ("text", "vision"):
        raise ValueError(f"unknown tower {which!r}")
    quiet_transformers()
    cls = getattr(transformers, family.text_class if which == "text" else family.vision_class)
    return cls.from_pretrained(source, **kwargs).eval()


def tower_output(family: Family, which: str, out) -> "torch.Tensor":
    """The embedding in a tower's output, before normalisation: CLIP's projected `text_embeds` /
    `image_embeds`; SigLIP's `pooler_output`, which is already the head's output (the text head
    after last-position pooling, the vision attention-pooling head: modeling_siglip.py)."""
    if family.text.pooling == "eos":
        return out.text_embeds if which == "text" else out.image_embeds
    return out.pooler_output


def run_text(model, family: Family, input_ids, attention_mask) -> "torch.Tensor":
    """The text tower's embedding for a batch, given the mask only where the family uses one."""
    mask = attention_mask if family.text.attention_mask else None
    return tower_output(family, "text", model(input_ids=input_ids, attention_mask=mask))


def tokenizer_json(source: str, family: Family) -> "Tokenizer":
    """The checkpoint's fast tokenizer: its tokenizer.json, else converted from its slow files.

    SigLIP checkpoints ship only a SentencePiece `spiece.model`, and transformers (5.24) has no
    slow-to-fast converter for SiglipTokenizer. Its generic SentencePiece converter gives the same
    pieces once the text is canonicalised (our rule does that first; checked against SiglipTokenizer
    in tests/test_families.py) but no end token: SiglipTokenizer appends `</s>` to every text
    (build_inputs_with_special_tokens, "X </s>"), so the post-processor here does too.
    """
    from tokenizers import Tokenizer

    path = Path(source)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if not path.is_dir():
        try:
            from huggingface_hub import hf_hub_download

            return Tokenizer.from_file(hf_hub_download(source, "tokenizer.json"))
        except Exception:  # noqa: BLE001 - no tokenizer.json on the hub: convert the slow one below
            pass
    quiet_transformers()
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(source)
    backend = getattr(slow, "backend_tokenizer", None)
    if backend is not None:
        return backend
    if family.name != "siglip":
        raise UnsupportedModel(source, f"its tokenizer ({type(slow).__name__}) has no tokenizer.json and none can "
                                       "be built")
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import SpmConverter

    fast = SpmConverter(slow).converted()
    eos = str(slow.eos_token)
    fast.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, slow.eos_token_id)])
    return fast


def tokenizer_config(source: str) -> dict[str, Any] | None:
    return read_json(source, "tokenizer_config.json")


def _logit_params(source: str) -> tuple[float, float] | None:
    """SigLIP's `logit_scale` and `logit_bias` from the checkpoint's safetensors, if it has them."""
    from safetensors import safe_open

    path = Path(source)
    index = read_json(source, "model.safetensors.index.json")
    name = (index or {}).get("weight_map", {}).get("logit_scale", "model.safetensors")
    try:
        if path.is_dir():
            file = path / name
        else:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(source, name))
        with safe_open(str(file), "np") as f:
            if not {"logit_scale", "logit_bias"} <= set(f.keys()):
                return None
            return float(f.get_tensor("logit_scale").reshape(-1)[0]), float(f.get_tensor("logit_bias").reshape(-1)[0])
    except Exception:  # noqa: BLE001 - no safetensors (a .bin checkpoint): no suggestion, nothing else lost
        return None


def checkpoint_card(source: str, family: Family, model_id: str | None = None) -> ModelCard:
    """The card of a transformers checkpoint: its own card's fields where it has one (stand-ins,
    the container's download), completed from its config and weights."""
    config = read_json(source, "config.json") or {}
    card = (read_card(source) if Path(source).is_dir() else None) or ModelCard(model_id="")
    card.model_id = resolve_model_id(source, model_id)
    card.family = family.name
    card.dim = embedding_dim(family, config)
    card.licence = card.licence or KNOWN_LICENCES.get(card.model_id)
    if family.suggested_min_score is not None:
        card.suggested_min_score = family.suggested_min_score
    elif (params := _logit_params(source)) is not None:
        card.suggested_min_score = siglip_min_score(*params)
    return card
