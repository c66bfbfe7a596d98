"""Text to token ids by a family's rule, with the `tokenizers` library only (no transformers).

Both encoders tokenise through `TextTokenizer`, so their ids are the same by construction; the
tests check it against transformers' own tokenizers called as each model card says. The rule
(`families.TextRule`) decides what differs: SigLIP's text is canonicalised and padded to its 64
positions, CLIP's is neither (one text unpadded, a batch padded to its longest, with a mask).
Truncation is the tokenizer's own, which keeps room for the end token the post-processor adds.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from clipsearch.models.families import TextRule

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")


def canonicalize(text: str) -> str:
    """SigLIP's text cleaning, as transformers' SiglipTokenizer.canonicalize_text does it (after
    big_vision's prompt_engineering.py): lower-case, ASCII punctuation removed, whitespace runs
    collapsed to one space, ends stripped. (open_clip also runs ftfy first; not done here.)"""
    return _SPACES.sub(" ", text.lower().translate(_PUNCTUATION)).strip()


def pad_token_id(tokenizer: "Tokenizer", tokenizer_config: dict | None) -> int:
    """The pad id transformers would use: tokenizer_config's pad token, else its end token, else 0."""
    cfg = tokenizer_config or {}
    for key in ("pad_token", "eos_token"):
        token = cfg.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return 0


class TextTokenizer:
    """`tokenizer` (a `tokenizers.Tokenizer`) applied by `rule`; returns int64 ids and mask."""

    def __init__(self, tokenizer: "Tokenizer", rule: TextRule, pad_id: int):
        tokenizer.no_padding()  # padding is ours to do per batch (a shared tokenizer's state is not)
        tokenizer.enable_truncation(max_length=rule.max_tokens)
        self.tokenizer, self.rule, self.pad_id = tokenizer, rule, pad_id

    @classmethod
    def from_dir(cls, path: str | Path, rule: TextRule) -> "TextTokenizer":
        """From `tokenizer.json` (and `tokenizer_config.json` for the pad token) in `path`."""
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing")
        tok = Tokenizer.from_file(str(file))
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else None
        return cls(tok, rule, pad_token_id(tok, cfg if isinstance(cfg, dict) else None))

    def prepare(self, text: str) -> str:
        return canonicalize(text) if self.rule.canonicalize else text

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask (int64), right-padded by the rule."""
        encodings = self.tokenizer.encode_batch([self.prepare(t) for t in texts])
        longest = max((len(e.ids) for e in encodings), default=0)
        width = self.rule.max_tokens if self.rule.pad_to_max else longest
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask
