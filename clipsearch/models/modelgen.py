"""Random-weight CLIP checkpoints built locally, with no network.

Tests use the "tiny" preset; benchmarks use "vit-b-32", the architecture of
openai/clip-vit-base-patch32 (compute cost does not depend on the weights' values). Both are
written as a normal Hugging Face checkpoint directory (config, safetensors, tokenizer files,
preprocessor config) and load through the same `from_pretrained` path as production.
"""

from __future__ import annotations

import json
from pathlib import Path

# Words that become single tokens, so token counts look like real CLIP's for typical queries.
_WORDS = (
    "a an the of on in at with and two three dogs dog cat cats beach sunset mountain mountains "
    "city street night photo picture red blue green yellow black white people person man woman "
    "child car cars tree trees forest sea ocean sky snow house building food coffee flowers "
    "flower bird birds water river lake road bridge portrait landscape close up running sitting "
    "playing walking standing over under near small large old new sunny cup wooden table covered "
    "for by from is are this that photo photograph colorful bright dark"
).split()

PRESETS = {
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  max_position_embeddings=77),
        vision=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                    image_size=224, patch_size=32),
        projection_dim=16,
    ),
    "vit-b-32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                  max_position_embeddings=77),
        vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                    image_size=224, patch_size=32),
        projection_dim=512,
    ),
}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


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


def build_tokenizer(dest: Path) -> int:
    """Write a small byte-level BPE CLIP tokenizer to `dest`; returns its vocabulary size."""
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
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tok.save_pretrained(str(dest))
    return len(vocab)


def build_random_clip(dest: str | Path, preset: str = "tiny", *, seed: int = 0, model_id: str | None = None) -> Path:
    """Write a random-weight CLIP checkpoint of `preset` to `dest` and return the path."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(dest)
    tok = json.loads((dest / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    text_vocab = vocab_size if preset == "tiny" else 49408
    proj = spec["projection_dim"]
    # transformers 5: projection_dim must sit inside both sub-configs too, or loading one tower
    # alone (CLIPTextModelWithProjection) builds a projection of the default size.
    config = CLIPConfig(
        text_config=dict(spec["text"], vocab_size=text_vocab, projection_dim=proj,
                         bos_token_id=specials.get("<|startoftext|>", 0),
                         eos_token_id=specials.get("<|endoftext|>", 1),
                         pad_token_id=specials.get("<|endoftext|>", 1)),
        vision_config=dict(spec["vision"], projection_dim=proj),
        projection_dim=proj,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(str(dest), safe_serialization=True)
    size = spec["vision"]["image_size"]
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }, indent=2))
    (dest / "clipsearch_model.json").write_text(json.dumps(
        {"model_id": model_id or f"clipsearch/random-{preset}-seed{seed}", "random_weights": True}))
    return dest


def main(argv: list[str] | None = None) -> int:
    """python -m clipsearch.modelgen DEST [preset]"""
    import sys

    args = sys.argv[1:] if argv is None else argv
    print(build_random_clip(args[0], args[1] if len(args) > 1 else "tiny"))
    return 0
