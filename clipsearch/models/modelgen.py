"""Random-weight stand-ins for every family, built locally with no network.

    python -m clipsearch.modelgen DEST [PRESET]      # PRESET default "tiny"; --list shows them

Each is a normal Hugging Face checkpoint directory of the family's real layout (config,
safetensors, the tokenizer files the real checkpoints ship, preprocessor config) and loads through
the same `from_pretrained` path as production; its card (`clipsearch_model.json`) marks it
random-weight, so every answer it produces says its rankings mean nothing.

Tests use the tiny presets; benchmarks use the real architectures' sizes (compute cost does not
depend on the weights' values): "vit-b-32" (openai/clip-vit-base-patch32 and LAION's ViT-B/32),
"siglip-b16" (google/siglip-base-patch16-224), "siglip2-b16" (google/siglip2-base-patch16-224)
and "siglip2-b32-256" (google/siglip2-base-patch32-256). Sizes from open_clip's model configs
(src/open_clip/model_configs/ViT-B-32.json, ViT-B-16-SigLIP.json, ViT-B-16-SigLIP2.json,
ViT-B-32-SigLIP2-256.json: width 768, 12 heads, 12 layers, 64 text positions, text vocabularies
of 32,000 (SigLIP) and 256,000 (SigLIP 2), layer-norm eps 1e-6, tanh-approximated GELU).

Tokenizers, each of its family's kind:
- CLIP: byte-level BPE, written by transformers' CLIPTokenizer (tokenizer.json).
- SigLIP: a SentencePiece Unigram model trained here (`spiece.model`, T5's special ids: pad 0,
  </s> 1, <unk> 2), loaded by SiglipTokenizer, as google/siglip-* ship it (no tokenizer.json).
- SigLIP 2: a Gemma-like BPE over "▁"-joined text with byte fallback (so any script tokenises,
  to real pieces or to <0xNN> bytes, never to <unk>), built with `tokenizers`: the pipeline of
  transformers' GemmaTokenizer (src/transformers/models/gemma/tokenization_gemma.py: BPE
  byte_fallback, normalizer Replace(" ", "▁"), <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4),
  no <bos> and one <eos> per text (SigLIP 2's convention, as flutter_gemma_embeddings documents
  it from the model's own tokenizer.json; not checked against that file here). The base-size
  presets carry all 256,000 entries (the embedding table is what makes SigLIP 2 heavy, and the
  tokenizer file what makes it slow to load); the tiny one a few hundred.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.models.card import ModelCard
from clipsearch.models.families import CLIP, FAMILIES, Family, embedding_dim

# Words that become single tokens, so token counts look like real ones for typical queries.
_WORDS = (
    "a an the of on in at with and two three dogs dog cat cats beach sunset mountain mountains "
    "city street night photo picture red blue green yellow black white people person man woman "
    "child car cars tree trees forest sea ocean sky snow house building food coffee flowers "
    "flower bird birds water river lake road bridge portrait landscape close up running sitting "
    "playing walking standing over under near small large old new sunny cup wooden table covered "
    "for by from is are this that photo photograph colorful bright dark"
).split()
# Words in other scripts that SigLIP 2's stand-in knows as pieces (others fall back to bytes).
_WORDS_OTHER = ["犬", "猫", "写真", "海", "山", "の", "二匹", "كلب", "قطة", "صورة", "البحر", "собака", "кошка"]

_TINY_TOWER = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
_B_TOWER = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
_SIGLIP_NORM = dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


@dataclass(frozen=True)
class Preset:
    family: Family
    text: dict
    vision: dict
    projection_dim: int | None = None  # CLIP's; SigLIP's dimension is its vision width
    text_vocab: int | None = None  # the embedding table's rows; None: the tokenizer's own size
    tokenizer_entries: int = 0  # SigLIP 2: total vocabulary of the generated BPE (0: tiny)
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(CLIP, dict(_TINY_TOWER, max_position_embeddings=77),
                   dict(_TINY_TOWER, image_size=224, patch_size=32), projection_dim=16),
    "vit-b-32": Preset(CLIP, dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                                  max_position_embeddings=77),
                       dict(_B_TOWER, image_size=224, patch_size=32), projection_dim=512, text_vocab=49408),
    "siglip-tiny": Preset(FAMILIES["siglip"], dict(_TINY_TOWER, max_position_embeddings=64, **_SIGLIP_NORM),
                          dict(_TINY_TOWER, image_size=224, patch_size=32, **_SIGLIP_NORM)),
    "siglip2-tiny": Preset(FAMILIES["siglip2"], dict(_TINY_TOWER, max_position_embeddings=64, **_SIGLIP_NORM),
                           dict(_TINY_TOWER, image_size=224, patch_size=32, **_SIGLIP_NORM)),
    "siglip-b16": Preset(FAMILIES["siglip"], dict(_B_TOWER, max_position_embeddings=64, **_SIGLIP_NORM),
                         dict(_B_TOWER, image_size=224, patch_size=16, **_SIGLIP_NORM), text_vocab=32000),
    "siglip2-b16": Preset(FAMILIES["siglip2"], dict(_B_TOWER, max_position_embeddings=64, **_SIGLIP_NORM),
                          dict(_B_TOWER, image_size=224, patch_size=16, **_SIGLIP_NORM), text_vocab=256000,
                          tokenizer_entries=256000),
    "siglip2-b32-256": Preset(FAMILIES["siglip2"], dict(_B_TOWER, max_position_embeddings=64, **_SIGLIP_NORM),
                              dict(_B_TOWER, image_size=256, patch_size=32, **_SIGLIP_NORM), text_vocab=256000,
                              tokenizer_entries=256000),
}


# -- CLIP ----------------------------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: 256 printable characters standing for the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_clip_tokenizer(dest: Path) -> dict[str, int]:
    """A small byte-level BPE CLIP tokenizer in `dest`; returns its special tokens' ids."""
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77).save_pretrained(str(dest))
    return {"vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"]}


# -- SigLIP: SentencePiece Unigram ---------------------------------------------------------------
def build_siglip_tokenizer(dest: Path) -> dict[str, int]:
    """A SentencePiece Unigram model trained here on a few sentences, saved by SiglipTokenizer."""
    import io

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    sentences = [" ".join(_WORDS[i : i + 6]) for i in range(len(_WORDS))]
    model = io.BytesIO()
    # T5's vocabulary layout (SigLIP's is T5's English one): pad 0, </s> 1, <unk> 2, no <s>.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 4), model_writer=model, model_type="unigram",
                                   vocab_size=200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                   eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
    (dest / "spiece.model").write_bytes(model.getvalue())
    tok = SiglipTokenizer(str(dest / "spiece.model"), model_max_length=64)
    tok.save_pretrained(str(dest))
    return {"vocab_size": tok.vocab_size, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.eos_token_id}


# -- SigLIP 2: Gemma-like byte-fallback BPE ------------------------------------------------------
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def _gemma_pieces(entries: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges: specials, the 256 byte tokens, characters, then words built by
    merges one character at a time (every prefix a token), then filler up to `entries`."""
    vocab = {tok: i for i, tok in enumerate(_GEMMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def add_word(word: str) -> None:
        for ch in word:
            vocab.setdefault(ch, len(vocab))
        for end in range(2, len(word) + 1):
            piece = word[:end]
            if piece not in vocab:
                merges.append((word[: end - 1], word[end - 1]))
                vocab[piece] = len(vocab)

    for word in _WORDS + _WORDS_OTHER:
        add_word("▁" + word)
        add_word(word)  # the first word of a text has no "▁" (Gemma adds no prefix space)
    # Filler: syllables over a small alphabet, breadth first, so the vocabulary (and its file, and
    # its load time) has the real one's size; real text rarely hits them, like most of Gemma's.
    letters = "▁abcdefghijklmnopqrstuvwxyz"
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
    for n in itertools.count(2):
        if len(vocab) >= entries:
            break
        for combo in itertools.product(letters, repeat=n):
            if len(vocab) >= entries:
                break
            piece = "".join(combo)
            if piece not in vocab and piece[:-1] in vocab:
                merges.append((piece[:-1], piece[-1]))
                vocab[piece] = len(vocab)
    return vocab, merges


def build_siglip2_tokenizer(dest: Path, entries: int = 0) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = _gemma_pieces(entries)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    tok.add_special_tokens(_GEMMA_SPECIALS)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
        "unk_token": "<unk>", "mask_token": "<mask>", "add_bos_token": False, "add_eos_token": True,
        "model_max_length": 64, "padding_side": "right",
    }, indent=2))
    return {"vocab_size": len(vocab), "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


# -- the checkpoint ------------------------------------------------------------------------------
def _preprocessor_config(family: Family, size: int) -> dict:
    common = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(family.mean), "image_std": list(family.std), "do_convert_rgb": True}
    if family.image_mode == "crop":  # CLIPImageProcessor's
        return {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": size},
                "do_center_crop": True, "crop_size": {"height": size, "width": size}, **common}
    return {"image_processor_type": "SiglipImageProcessor", "size": {"height": size, "width": size}, **common}


def _config(preset: Preset, special: dict[str, int]):
    from transformers import CLIPConfig, SiglipConfig

    vocab = preset.text_vocab or special["vocab_size"]
    ids = {k: v for k, v in special.items() if k != "vocab_size"}
    if preset.family is CLIP:
        proj = preset.projection_dim
        # transformers 5: projection_dim must sit inside both sub-configs too, or loading one tower
        # alone (CLIPTextModelWithProjection) builds a projection of the default size.
        return CLIPConfig(text_config=dict(preset.text, vocab_size=vocab, projection_dim=proj, **ids),
                          vision_config=dict(preset.vision, projection_dim=proj), projection_dim=proj)
    width = preset.vision["hidden_size"]
    return SiglipConfig(text_config=dict(preset.text, vocab_size=vocab, projection_size=width, **ids),
                        vision_config=dict(preset.vision))


def build_stand_in(dest: str | Path, preset: str = "tiny", *, seed: int = 0, model_id: str | None = None) -> Path:
    """Write a random-weight checkpoint of `preset` to `dest` and return the path."""
    import torch
    from transformers import CLIPModel, SiglipModel

    from clipsearch.models.hf import quiet_transformers

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    quiet_transformers()
    spec = PRESETS[preset]
    family = spec.family
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if family is CLIP:
        special = build_clip_tokenizer(dest)
    elif family.name == "siglip":
        special = build_siglip_tokenizer(dest)
    else:
        special = build_siglip2_tokenizer(dest, spec.tokenizer_entries)
    config = _config(spec, special)
    torch.manual_seed(seed)
    model = (CLIPModel if family is CLIP else SiglipModel)(config).eval()
    if family is not CLIP:  # open_clip's initial values (init_logit_bias -10, scale log 10), not zeros
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10))
            model.logit_bias.fill_(-10.0)
    model.save_pretrained(str(dest), safe_serialization=True)
    size = spec.vision["image_size"]
    (dest / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(family, size), indent=2))
    ModelCard(model_id=model_id or f"clipsearch/random-{preset}-seed{seed}", family=family.name,
              dim=embedding_dim(family, config.to_dict()), licence="none: random weights generated locally",
              random_weights=True).write(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """python -m clipsearch.modelgen DEST [PRESET]"""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "--list"):
        print(__doc__.split("\n\n")[1])
        for name, p in PRESETS.items():
            print(f"  {name:16} {p.family.title}")
        return 0 if args else 2
    if len(args) > 1 and args[1] not in PRESETS:
        print(f"error: unknown preset {args[1]!r}: choose one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    print(build_stand_in(args[0], args[1] if len(args) > 1 else "tiny"))
    return 0
