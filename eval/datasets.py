"""Dataset loaders: captioned image sets and labelled image folders, as plain lists.

Layouts read:

- Karpathy-split JSON (`dataset_flickr30k.json`, `dataset_coco.json`): ``{"dataset": ...,
  "images": [{"filename", "filepath" (COCO only), "split", "sentences": [{"raw"}, ...]}]}``.
  Images are looked up under IMAGES/filepath/filename, then IMAGES/filename.
- A captions file with one caption a line, ``IMAGE<TAB>CAPTION``, where IMAGE may carry a
  ``#N`` caption number (Flickr30k's `results_20130124.token`) and a first line
  ``image<TAB>caption`` is a header (`captions.tsv`). It has no splits: a split file (one
  image file name a line, e.g. the Karpathy test list) restricts it, else every image is used.
- Crossmodal-3600 (`captions.jsonl`): one JSON object a line, ``{"image/key": KEY, LANG:
  {"caption": [...], ...}, ...}`` for 36 languages, images at IMAGES/KEY.jpg (the layout
  big_vision's big_vision/datasets/xm3600/xm3600.py reads: captions.zip from
  google.github.io/crossmodal-3600, images.tgz from the Open Images bucket). The languages to
  read are chosen by the caller; each caption keeps its language. No splits: all 3,600 images.
- A labelled folder: one subfolder per class holding its images (CIFAR-100 or ImageNet exported
  to folders), or ROOT/SPLIT/ laid out that way when it exists.

A bad entry (malformed JSON record, empty caption, missing image file) is skipped and counted by
reason in `skipped`, with a few examples in `problems`; it never stops the load.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.images import IMAGE_EXTENSIONS

MAX_PROBLEMS = 20  # examples kept for the report; the counts are complete


@dataclass(frozen=True)
class ImageItem:
    key: str  # the dataset's name for the image: file name, or class/file for folders
    path: Path


@dataclass(frozen=True)
class Caption:
    text: str
    image: str  # ImageItem.key
    language: str | None = None  # multilingual sets (Crossmodal-3600): the caption's language code


@dataclass
class Skips:
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{reason}: {detail}")


@dataclass
class CaptionDataset:
    name: str
    split: str
    layout: str
    images: list[ImageItem]
    captions: list[Caption]
    skips: Skips = field(default_factory=Skips)

    def limit(self, n: int | None) -> "CaptionDataset":
        """The first `n` images (file order) and their captions."""
        if n is None or n >= len(self.images):
            return self
        images = self.images[:n]
        keys = {i.key for i in images}
        captions = [c for c in self.captions if c.image in keys]
        return CaptionDataset(self.name, self.split, self.layout, images, captions, self.skips)


@dataclass
class LabelledDataset:
    name: str
    split: str
    images: list[ImageItem]
    labels: dict[str, str]  # ImageItem.key -> class
    classes: list[str]  # every class folder, including empty ones: zero-shot ranks them all
    skips: Skips = field(default_factory=Skips)

    def limit(self, n: int | None) -> "LabelledDataset":
        """`n` images spread over the classes: round-robin, each class in file order."""
        if n is None or n >= len(self.images):
            return self
        by_class: dict[str, list[ImageItem]] = {c: [] for c in self.classes}
        for item in self.images:
            by_class[self.labels[item.key]].append(item)
        picked: list[ImageItem] = []
        depth = 0
        while len(picked) < n:
            for c in self.classes:
                if depth < len(by_class[c]) and len(picked) < n:
                    picked.append(by_class[c][depth])
            depth += 1
        labels = {i.key: self.labels[i.key] for i in picked}
        return LabelledDataset(self.name, self.split, picked, labels, self.classes, self.skips)


class DatasetError(ValueError):
    """The dataset as a whole cannot be read (no such file, not the expected layout)."""


# -- captioned image sets -------------------------------------------------------------------
def load_captions(
    captions_file: str | Path,
    images_dir: str | Path | None = None,
    *,
    split: str = "test",
    split_file: str | Path | None = None,
    languages: tuple[str, ...] = ("en",),
) -> CaptionDataset:
    """Karpathy JSON (by its .json suffix), Crossmodal-3600 JSON lines (.jsonl; images default to
    the `images` folder beside it) or a token/TSV captions file."""
    path = Path(captions_file)
    if not path.is_file():
        raise DatasetError(f"captions file {path} does not exist")
    root = Path(images_dir) if images_dir is not None else path.parent
    if path.suffix.lower() == ".jsonl" and images_dir is None:
        root = path.parent / "images"
    if not root.is_dir():
        raise DatasetError(f"images folder {root} does not exist")
    if path.suffix.lower() == ".json":
        return load_karpathy(path, root, split=split)
    if path.suffix.lower() == ".jsonl":
        return load_xm3600(path, root, languages=languages)
    return load_token_file(path, root, split_file=split_file)


def load_karpathy(path: Path, root: Path, *, split: str = "test") -> CaptionDataset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} is not a Karpathy-split file: expected an object with an 'images' list")
    name = str(data.get("dataset") or path.stem.removeprefix("dataset_"))
    skips = Skips()
    images: list[ImageItem] = []
    captions: list[Caption] = []
    seen: set[str] = set()
    for n, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            skips.add("malformed entry", f"images[{n}] has no filename")
            continue
        if entry.get("split") != split:
            continue
        sub = entry.get("filepath") if isinstance(entry.get("filepath"), str) else ""
        key = f"{sub}/{entry['filename']}" if sub else entry["filename"]
        if key in seen:
            skips.add("duplicate entry", key)
            continue
        texts = _sentences(entry.get("sentences"))
        if not texts:
            skips.add("no captions", key)
            continue
        file = _find_image(root, sub, entry["filename"])
        if file is None:
            skips.add("missing image file", str(root / sub / entry["filename"]))
            continue
        seen.add(key)
        images.append(ImageItem(key, file))
        captions.extend(Caption(t, key) for t in texts)
    return CaptionDataset(name, split, "karpathy-json", images, captions, skips)


def _sentences(raw) -> list[str]:
    if not isinstance(raw, list):
        return []
    out = []
    for s in raw:
        text = s.get("raw") if isinstance(s, dict) else None
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    return out


def _find_image(root: Path, sub: str, filename: str) -> Path | None:
    if Path(filename).name != filename or filename in (".", "..") or ".." in Path(sub).parts:
        return None  # a name that climbs out of the images folder is not one of ours
    for candidate in (root / sub / filename, root / filename):
        if candidate.is_file():
            return candidate
    return None


def load_token_file(path: Path, root: Path, *, split_file: str | Path | None = None) -> CaptionDataset:
    wanted: set[str] | None = None
    split = "all"
    if split_file is not None:
        split_path = Path(split_file)
        if not split_path.is_file():
            raise DatasetError(f"split file {split_path} does not exist")
        wanted = {line.strip() for line in split_path.read_text(encoding="utf-8").splitlines() if line.strip()}
        split = split_path.stem
    skips = Skips()
    by_image: dict[str, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not a readable text file: {exc}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        image, sep, text = line.partition("\t")
        image = image.strip().split("#", 1)[0]
        if n == 1 and image.lower() == "image" and text.strip().lower() == "caption":
            continue  # header
        if not sep or not image or not text.strip():
            skips.add("malformed line", f"{path.name}:{n}")
            continue
        if wanted is not None and image not in wanted:
            continue
        by_image.setdefault(image, []).append(text.strip())
    images: list[ImageItem] = []
    captions: list[Caption] = []
    for image, texts in by_image.items():
        file = _find_image(root, "", image)
        if file is None:
            skips.add("missing image file", str(root / image))
            continue
        images.append(ImageItem(image, file))
        captions.extend(Caption(t, image) for t in texts)
    return CaptionDataset(path.stem, split, "captions-tsv", images, captions, skips)


XM3600_LANGUAGES = ("ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hr", "hu",
                    "id", "it", "ja", "ko", "mi", "nl", "no", "pl", "pt", "quz", "ro", "ru", "sv", "sw", "te", "th",
                    "tr", "uk", "vi", "zh")  # big_vision's XM3600_LANGUAGES


def load_xm3600(path: Path, root: Path, *, languages: tuple[str, ...] = ("en",)) -> CaptionDataset:
    """Crossmodal-3600's captions.jsonl: the captions of `languages`, each tagged with its language."""
    skips = Skips()
    images: list[ImageItem] = []
    captions: list[Caption] = []
    seen: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not a readable text file: {exc}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        key = entry.get("image/key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not key:
            skips.add("malformed line", f"{path.name}:{n}")
            continue
        if key in seen:
            skips.add("duplicate entry", key)
            continue
        texts = []
        for lang in languages:
            raw = entry.get(lang, {}).get("caption") if isinstance(entry.get(lang), dict) else None
            got = [t.strip() for t in raw if isinstance(t, str) and t.strip()] if isinstance(raw, list) else []
            if not got:
                skips.add(f"no {lang} caption", key)
            texts.extend((t, lang) for t in got)
        if not texts:
            continue
        file = _find_image(root, "", f"{key}.jpg")
        if file is None:
            skips.add("missing image file", str(root / f"{key}.jpg"))
            continue
        seen.add(key)
        images.append(ImageItem(key, file))
        captions.extend(Caption(t, key, lang) for t, lang in texts)
    return CaptionDataset("xm3600", "all", "xm3600-jsonl", images, captions, skips)


# -- labelled folders -----------------------------------------------------------------------
def load_labelled_folder(root: str | Path, *, split: str = "test", name: str | None = None) -> LabelledDataset:
    """Classes are ROOT's (or ROOT/SPLIT's) subfolders, sorted; images are found recursively."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"labelled folder {root} does not exist")
    base = root / split if (root / split).is_dir() else root
    used_split = split if base != root else "all"
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{base} has no class subfolders: expected one folder per class holding its images")
    skips = Skips()
    images: list[ImageItem] = []
    labels: dict[str, str] = {}
    for cls in classes:
        for file in sorted((base / cls).rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            key = f"{cls}/{file.relative_to(base / cls).as_posix()}"
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                skips.add("not an image file", key)
                continue
            images.append(ImageItem(key, file))
            labels[key] = cls
    return LabelledDataset(name or root.name, used_split, images, labels, classes, skips)
