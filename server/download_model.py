"""Download a checkpoint (CLIP, SigLIP, SigLIP 2) for the container image, at build time (run time
is offline).

    python -m server.download_model laion/CLIP-ViT-B-32-laion2B-s34B-b79K /opt/model

Fetches only what inference needs (config, safetensors weights, tokenizer and preprocessor files,
SigLIP's SentencePiece `spiece.model`; the PyTorch .bin only when the repository has no
safetensors) and records the hub id in the model card `clipsearch_model.json`
(clipsearch/models/card.py; this script runs alone in the Dockerfile, so it writes the two fields
itself), so the model loaded from the directory keeps the identity the index was built with.
Public models need no token; never pass one as a build argument.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# config, tokenizer (vocab, merges, tokenizer.json; SigLIP's spiece.model), preprocessor
SMALL_FILES = ["*.json", "*.txt", "*.model"]


def weight_patterns(files: list[str]) -> list[str]:
    """transformers' own weights: `model.safetensors` (or its shards), else other safetensors, else
    the PyTorch .bin. LAION's repositories also hold open_clip's copy of the same weights
    (`open_clip_*`), which transformers never reads: not downloaded."""
    names = [f for f in files if f.endswith(".safetensors") and not f.startswith("open_clip")]
    if any(f == "model.safetensors" or f.startswith("model-") for f in names):
        return ["model*.safetensors"]
    if names:
        return ["*.safetensors"]
    if "pytorch_model.bin" in files:
        return ["pytorch_model.bin"]
    raise SystemExit(f"no safetensors or pytorch_model.bin in the repository: {sorted(files)}")


def download(model_id: str, dest: Path, revision: str | None = None) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(model_id, revision=revision)
    snapshot_download(model_id, revision=revision, local_dir=dest, allow_patterns=SMALL_FILES + weight_patterns(files))
    (dest / "clipsearch_model.json").write_text(json.dumps({"model_id": model_id, "revision": revision}) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_id")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--revision", help="a commit or tag to pin (default: main)")
    args = ap.parse_args(argv)
    path = download(args.model_id, args.dest, args.revision)
    print(f"{args.model_id} -> {path}: {sorted(p.name for p in path.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
