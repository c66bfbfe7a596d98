"""Dataset loaders on generated files in every layout, malformed entries included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets import DatasetError, load_captions, load_labelled_folder


def touch(path: Path, data: bytes = b"\xff\xd8 not really a jpeg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sentences(*texts):
    return [{"raw": t, "tokens": t.split()} for t in texts]


@pytest.fixture
def flickr(tmp_path) -> Path:
    images = tmp_path / "flickr30k-images"
    for i in range(6):
        touch(images / f"{i}.jpg")
    entries = [
        {"filename": "0.jpg", "split": "test", "sentences": sentences("a dog", "a brown dog")},
        {"filename": "1.jpg", "split": "test", "sentences": sentences("two cats ", "", "cats")},  # empty dropped
        {"filename": "2.jpg", "split": "train", "sentences": sentences("train image")},
        {"filename": "3.jpg", "split": "val", "sentences": sentences("val image")},
        {"filename": "missing.jpg", "split": "test", "sentences": sentences("no file")},
        {"filename": "4.jpg", "split": "test", "sentences": []},  # no captions
        {"filename": "5.jpg", "split": "test", "sentences": [{"tokens": ["x"]}, "junk", None]},  # none usable
        {"split": "test", "sentences": sentences("no filename")},
        "not an object",
        {"filename": "0.jpg", "split": "test", "sentences": sentences("listed twice")},
        {"filename": "../escape.jpg", "split": "test", "sentences": sentences("outside")},
    ]
    touch(tmp_path / "escape.jpg")
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    return path


def test_karpathy_flickr_test_split(flickr):
    ds = load_captions(flickr, flickr.parent / "flickr30k-images")
    assert (ds.name, ds.split, ds.layout) == ("flickr30k", "test", "karpathy-json")
    assert [i.key for i in ds.images] == ["0.jpg", "1.jpg"]
    assert all(i.path.is_file() for i in ds.images)
    assert [(c.image, c.text) for c in ds.captions] == [
        ("0.jpg", "a dog"), ("0.jpg", "a brown dog"), ("1.jpg", "two cats"), ("1.jpg", "cats")]
    assert dict(ds.skips.counts) == {"missing image file": 2, "no captions": 2, "malformed entry": 2,
                                     "duplicate entry": 1}
    assert any("missing.jpg" in p for p in ds.skips.problems)


def test_karpathy_other_split_and_default_images_folder(flickr):
    ds = load_captions(flickr, flickr.parent / "flickr30k-images", split="train")
    assert [i.key for i in ds.images] == ["2.jpg"]
    # without --images the captions file's folder is searched (and these files are not there)
    ds = load_captions(flickr)
    assert ds.images == [] and ds.skips.counts["missing image file"] == 5  # 0.jpg listed twice


def test_karpathy_coco_layout_with_filepath(tmp_path):
    touch(tmp_path / "val2014" / "COCO_val2014_1.jpg")
    touch(tmp_path / "COCO_val2014_2.jpg")  # filepath folder missing: found at the top level
    entries = [
        {"filepath": "val2014", "filename": "COCO_val2014_1.jpg", "split": "test",
         "sentences": sentences("a", "b", "c", "d", "e", "f")},
        {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "split": "test", "sentences": sentences("g")},
        {"filepath": "train2014", "filename": "COCO_train2014_3.jpg", "split": "restval", "sentences": sentences("h")},
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    ds = load_captions(tmp_path / "dataset_coco.json", tmp_path)
    assert ds.name == "coco"
    assert [i.key for i in ds.images] == ["val2014/COCO_val2014_1.jpg", "val2014/COCO_val2014_2.jpg"]
    assert len(ds.captions) == 7  # every caption is a query, six for the first image
    assert ds.limit(1).captions == ds.captions[:6]


def test_token_file_with_caption_numbers_header_and_split_file(tmp_path):
    for name in ("1000.jpg", "2000.jpg", "3000.jpg"):
        touch(tmp_path / "img" / name)
    token = tmp_path / "results_20130124.token"
    token.write_text(
        "image\tcaption\n"
        "1000.jpg#0\tA child in pink .\n"
        "1000.jpg#1\tA girl going into a building .\n"
        "2000.jpg#0\tA black dog .\n"
        "no tab on this line\n"
        "2000.jpg#1\t   \n"
        "\n"
        "3000.jpg#0\tTwo men .\n"
        "4000.jpg#0\tNo such image .\n"
    )
    ds = load_captions(token, tmp_path / "img")
    assert (ds.split, ds.layout) == ("all", "captions-tsv")
    assert [i.key for i in ds.images] == ["1000.jpg", "2000.jpg", "3000.jpg"]
    assert [c.text for c in ds.captions if c.image == "1000.jpg"] == ["A child in pink .",
                                                                      "A girl going into a building ."]
    assert dict(ds.skips.counts) == {"malformed line": 2, "missing image file": 1}
    split = tmp_path / "test.txt"
    split.write_text("2000.jpg\n3000.jpg\n\n")
    ds = load_captions(token, tmp_path / "img", split_file=split)
    assert ds.split == "test" and [i.key for i in ds.images] == ["2000.jpg", "3000.jpg"]


def test_plain_tsv_captions(tmp_path):
    touch(tmp_path / "a.png")
    (tmp_path / "captions.tsv").write_text("a.png\tred square\na.png\tsomething red\n")
    ds = load_captions(tmp_path / "captions.tsv")
    assert [(c.image, c.text) for c in ds.captions] == [("a.png", "red square"), ("a.png", "something red")]


@pytest.mark.parametrize("content,match", [
    ("{not json", "not readable JSON"),
    ('{"images": 5}', "Karpathy"),
    ("[1, 2]", "Karpathy"),
])
def test_unreadable_karpathy_files_are_a_clear_error(tmp_path, content, match):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_captions(path)


def test_missing_paths_are_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_captions(tmp_path / "nope.json")
    (tmp_path / "c.tsv").write_text("")
    with pytest.raises(DatasetError, match="images folder"):
        load_captions(tmp_path / "c.tsv", tmp_path / "nope")
    with pytest.raises(DatasetError, match="split file"):
        load_captions(tmp_path / "c.tsv", split_file=tmp_path / "nope.txt")
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="readable"):
        load_captions(tmp_path / "bin.tsv")


def test_labelled_folder_with_split_subfolder(tmp_path):
    root = tmp_path / "cifar100"
    for cls, n in (("apple", 3), ("aquarium_fish", 2), ("bear", 0)):
        (root / "test" / cls).mkdir(parents=True)
        for j in range(n):
            touch(root / "test" / cls / f"{j}.png")
    touch(root / "test" / "apple" / "nested" / "9.jpg")
    touch(root / "test" / "apple" / "notes.txt", b"hello")
    touch(root / "test" / "apple" / ".hidden.png")
    touch(root / "train" / "apple" / "t.png")
    ds = load_labelled_folder(root)
    assert (ds.name, ds.split) == ("cifar100", "test")
    assert ds.classes == ["apple", "aquarium_fish", "bear"]  # empty classes still compete in zero-shot
    assert [i.key for i in ds.images] == ["apple/0.png", "apple/1.png", "apple/2.png", "apple/nested/9.jpg",
                                          "aquarium_fish/0.png", "aquarium_fish/1.png"]
    assert ds.labels["apple/nested/9.jpg"] == "apple"
    assert dict(ds.skips.counts) == {"not an image file": 1}
    assert [i.key for i in load_labelled_folder(root, split="train").images] == ["apple/t.png"]
    # --limit spreads over the classes
    assert [i.key for i in ds.limit(3).images] == ["apple/0.png", "aquarium_fish/0.png", "apple/1.png"]


def test_labelled_folder_without_split_subfolder(tmp_path):
    touch(tmp_path / "cat" / "a.jpg")
    touch(tmp_path / "dog" / "b.jpg")
    ds = load_labelled_folder(tmp_path, name="pets")
    assert (ds.name, ds.split, ds.classes) == ("pets", "all", ["cat", "dog"])


def test_labelled_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_labelled_folder(tmp_path / "nope")
    touch(tmp_path / "loose.jpg")
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_labelled_folder(tmp_path)


# -- from dataset items to index documents ----------------------------------------------------------
def test_collection_maps_documents_back_to_every_item(tmp_path):
    from eval.collection import content_hashes, map_collection, sha256_file, stage
    from eval.datasets import ImageItem, Skips

    a = touch(tmp_path / "x" / "a.jpg", b"same bytes")
    b = touch(tmp_path / "y" / "a.jpg", b"same bytes")  # same name, same bytes, other folder
    c = touch(tmp_path / "c.jpg", b"other bytes")
    items = [ImageItem("x/a", a), ImageItem("y/a", b), ImageItem("c", c), ImageItem("gone", tmp_path / "gone.jpg")]
    skips = Skips()
    hashes = content_hashes(items, skips)
    assert set(hashes) == {"x/a", "y/a", "c"} and dict(skips.counts) == {"unreadable image file": 1}
    coll = map_collection(hashes, [sha256_file(a), "some-other-photo"])
    assert coll.doc_of == {"x/a": sha256_file(a), "y/a": sha256_file(a)}
    assert coll.items_of == {sha256_file(a): ["x/a", "y/a"]} and coll.duplicate_items == 1
    assert coll.not_indexed == ["c"] and (coll.index_docs, coll.extra_docs) == (2, 1)
    staged = stage(items[:3], tmp_path / "staged")
    files = sorted(staged.iterdir())
    assert len(files) == 3 and [f.read_bytes() for f in files] == [b"same bytes", b"same bytes", b"other bytes"]
