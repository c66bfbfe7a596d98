"""Crossmodal-3600's layout (captions.jsonl + images/KEY.jpg) and the per-language evaluation, run
through production ingest with the SigLIP 2 stand-in (multilingual: its tokenizer reads every script).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.faiss_index import FaissIndex
from eval.datasets import DatasetError, load_captions
from eval.run import main
from tests.conftest import make_image

N = 10
CAPTIONS = {"en": ["a dog on the beach number {i}", "two cats {i}"], "ja": ["海辺の犬 {i}", "二匹の猫 {i}"],
            "ar": ["كلب على الشاطئ {i}"]}


@pytest.fixture(scope="module")
def xm3600(tmp_path_factory) -> Path:
    """N images with English, Japanese and Arabic captions (the last image has no Japanese ones),
    a malformed line, a duplicate key and an entry whose image file is missing."""
    root = tmp_path_factory.mktemp("xm3600")
    (root / "images").mkdir()
    lines = []
    for i in range(N):
        key = f"{i:016x}"
        (root / "images" / f"{key}.jpg").write_bytes(make_image(300 + i, size=(70 + i, 50)))
        entry = {"image/key": key}
        for lang, texts in CAPTIONS.items():
            if lang == "ja" and i == N - 1:
                continue
            entry[lang] = {"caption": [t.format(i=i) for t in texts], "caption/tokenized": ["ignored"]}
        lines.append(json.dumps(entry, ensure_ascii=False))
    lines += ["{not json", json.dumps({"en": {"caption": ["no key"]}}), lines[0],
              json.dumps({"image/key": "missing", "en": {"caption": ["no image file"]}})]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_the_xm3600_layout_is_read_per_language(xm3600):
    ds = load_captions(xm3600 / "captions.jsonl", languages=("en", "ja"))
    assert ds.layout == "xm3600-jsonl" and len(ds.images) == N
    assert {c.language for c in ds.captions} == {"en", "ja"}
    assert sum(c.language == "ja" for c in ds.captions) == 2 * (N - 1)
    assert ds.skips.counts["malformed line"] == 2 and ds.skips.counts["duplicate entry"] == 1
    # no Japanese: the last image, and the entry whose file is missing (counted before the file check)
    assert ds.skips.counts["missing image file"] == 1 and ds.skips.counts["no ja caption"] == 2
    assert ds.images[0].path == xm3600 / "images" / f"{0:016x}.jpg"  # images/ beside captions.jsonl by default
    with pytest.raises(DatasetError, match="images folder"):
        load_captions(xm3600 / "captions.jsonl", xm3600 / "nowhere")


def test_bad_language_codes_are_refused(xm3600, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["retrieval", str(xm3600 / "captions.jsonl"), "--language", "en,klingon"])
    assert exit_.value.code == 2 and "--language takes Crossmodal-3600 codes" in capsys.readouterr().err


def test_per_language_recall_with_the_siglip2_stand_in(xm3600, stand_in, monkeypatch, tmp_path, capsys):
    pytest.importorskip("ingest.cli", reason="the ingest branch has not landed on main yet")
    for name in ("MODEL_ID", "BACKEND", "INDEX_PATH", "ENCODER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_PATH", str(stand_in("siglip2")))
    monkeypatch.setenv("TORCH_THREADS", "1")
    out, index_dir = tmp_path / "report.json", tmp_path / "index"
    assert main(["retrieval", str(xm3600 / "captions.jsonl"), "--language", "en,ja,ar", "--index", str(index_dir),
                 "--out", str(out), "--self-check", "0"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["family"] == "siglip2" and report["model_id"] == "clipsearch/siglip2-tiny-test"
    assert report["dataset"]["languages"] == ["en", "ja", "ar"] and report["dataset"]["layout"] == "xm3600-jsonl"
    assert set(report["metrics"]) == {"text_to_image[ar]", "text_to_image[en]", "text_to_image[ja]"}
    assert report["counts"]["text_queries[ja]"] == 2 * (N - 1) and report["counts"]["text_queries[ar]"] == N
    for values in report["metrics"].values():
        assert set(values) == {"R@1", "R@5", "R@10", "mean"}
        assert values["mean"] == pytest.approx(np.mean([values["R@1"], values["R@5"], values["R@10"]]))
    assert "model clipsearch/siglip2-tiny-test (siglip2, torch)" in printed
    assert "text->image by language" in printed and "\nja " in printed
    # Japanese recall equals a brute-force computation over the vectors the index holds.
    from clipsearch.models.torch_encoder import TorchEncoder

    index = FaissIndex.load(index_dir)
    ids = index.ids()
    docs = np.stack([index.get(i).vector for i in ids])
    row_of = {i: n for n, i in enumerate(ids)}  # a folder document's id is the sha256 of its bytes
    doc_of = {p.stem: row_of[hashlib.sha256(p.read_bytes()).hexdigest()] for p in (xm3600 / "images").iterdir()}
    ds = load_captions(xm3600 / "captions.jsonl", languages=("ja",))
    scores = TorchEncoder(str(stand_in("siglip2")), threads=1).encode_text([c.text for c in ds.captions]) @ docs.T
    ranks = [1 + int(np.sum(np.delete(row, doc_of[c.image]) >= row[doc_of[c.image]]))
             for row, c in zip(scores, ds.captions)]
    assert report["metrics"]["text_to_image[ja]"]["R@1"] == pytest.approx(np.mean([r <= 1 for r in ranks]))
    assert report["metrics"]["text_to_image[ja]"]["R@5"] == pytest.approx(np.mean([r <= 5 for r in ranks]))
