"""The whole harness on the tiny random-weight model with generated images.

With random weights the recall values mean nothing, so these tests check structure, counts and
invariants, and two things that are exact whatever the weights: an image used as its own query
finds itself first (so hits map back to the right dataset items), and our text->image and
image->text recall equal a brute-force computation over the vectors the index holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsearch.images import read_image_file
from clipsearch.index.base import Document
from clipsearch.index.faiss_index import FaissIndex
from eval.run import main
from tests.conftest import REPO, make_image

WORDS = "dog cat beach sunset mountain city street tree forest sea sky snow house car bird river".split()
N_TEST = 16


@pytest.fixture(autouse=True)
def env(monkeypatch, tiny_model_dir):
    for name in ("MODEL_ID", "BACKEND", "INDEX_PATH", "HNSW_THRESHOLD", "ENCODER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("TORCH_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def flickr(tmp_path_factory) -> Path:
    """A Karpathy-layout set: 16 test images (2 captions each), 4 train, a byte-identical copy,
    a corrupt file and a missing one in the test split."""
    root = tmp_path_factory.mktemp("flickr")
    images = root / "flickr30k-images"
    images.mkdir()
    entries = []
    for i in range(N_TEST + 4):
        (images / f"{i}.jpg").write_bytes(make_image(i, size=(64 + i, 48)))
        entries.append({"filename": f"{i}.jpg", "split": "test" if i < N_TEST else "train",
                        "sentences": [{"raw": f"a {WORDS[i % 16]} near the {WORDS[(i * 7) % 16]}"},
                                      {"raw": f"two {WORDS[(i + 3) % 16]} at night"}]})
    (images / "dup.jpg").write_bytes((images / "3.jpg").read_bytes())
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    entries += [
        {"filename": "dup.jpg", "split": "test", "sentences": [{"raw": "a copy of image three"}]},
        {"filename": "corrupt.jpg", "split": "test", "sentences": [{"raw": "unreadable"}, {"raw": "broken"}]},
        {"filename": "missing.jpg", "split": "test", "sentences": [{"raw": "no such file"}]},
    ]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled") / "cifar100"
    for c, cls in enumerate(("apple", "aquarium_fish", "bear")):
        (root / "test" / cls).mkdir(parents=True)
        for j in range(4):
            (root / "test" / cls / f"{j}.png").write_bytes(make_image(100 + 10 * c + j, fmt="PNG"))
    return root


def fill_index(index_dir: Path, files, encoder) -> None:
    """What ingest's folder source stores (id = sha256 of the bytes), written directly."""
    index = FaissIndex.open(index_dir, model_id=encoder.model_id, dim=encoder.dim)
    docs = []
    for f in files:
        try:
            image = read_image_file(f)
        except Exception:  # noqa: BLE001 - the corrupt file, as ingest skips it
            continue
        docs.append(Document(hashlib.sha256(f.read_bytes()).hexdigest(), encoder.encode_images([image])[0],
                             {"source": "folder", "path": str(f.resolve())}))
    index.upsert(docs)
    index.save()


@pytest.fixture(scope="module")
def flickr_index(flickr, tiny_encoder, tmp_path_factory) -> Path:
    index_dir = tmp_path_factory.mktemp("idx") / "flickr"
    fill_index(index_dir, sorted((flickr / "flickr30k-images").iterdir()), tiny_encoder)
    return index_dir


def run_eval(argv, tmp_path, capsys) -> tuple[dict, str]:
    out = tmp_path / "report.json"
    code = main([*argv, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return json.loads(out.read_text()), printed


def brute_force_recall(index_dir: Path, report: dict, flickr: Path, encoder, ks) -> tuple[dict, dict]:
    """Recall from the index's stored vectors with plain numpy: the independent computation."""
    data = json.loads((flickr / "dataset_flickr30k.json").read_text())
    index = FaissIndex.load(index_dir)
    ids = index.ids()
    vectors = np.stack([index.get(i).vector for i in ids])
    doc_of = {}
    for e in data["images"]:
        f = flickr / "flickr30k-images" / e["filename"]
        if e["split"] == "test" and f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if digest in ids:
                doc_of[e["filename"]] = ids.index(digest)
    captions = [(s["raw"], e["filename"]) for e in data["images"] if e["filename"] in doc_of
                for s in e["sentences"]]
    text = encoder.encode_text([c for c, _ in captions])
    scores = text @ vectors.T  # (captions, docs)
    t2i = [1 + int(np.sum(np.delete(row, doc_of[img]) >= row[doc_of[img]]))
           for row, (_, img) in zip(scores, captions)]
    caption_doc = np.array([doc_of[img] for _, img in captions])
    i2t = []
    for img, d in doc_of.items():
        col = scores[:, d]
        rel = caption_doc == d
        i2t.append(1 + int(np.sum(col[~rel] >= col[rel].max())))
    recall = lambda ranks: {f"R@{k}": float(np.mean([r <= k for r in ranks])) for k in ks}  # noqa: E731
    return recall(t2i), recall(i2t)


# -- the full path, production ingest included ---------------------------------------------------
def test_retrieval_end_to_end_through_ingest(flickr, tiny_encoder, tmp_path, capsys):
    pytest.importorskip("ingest.cli", reason="the ingest branch has not landed on main yet")
    index_dir = tmp_path / "index"
    report, printed = run_eval(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images",
                                str(flickr / "flickr30k-images"), "--index", str(index_dir)], tmp_path, capsys)
    c = report["counts"]
    assert report["ingest"]["argv"][:4] == ["python", "-m", "ingest", "folder"]
    assert c["skipped"] == {"missing image file": 1}
    assert c["images_evaluated"] == N_TEST + 2  # 16 + the copy + the corrupt file
    assert c["not_indexed"] == 1  # ingest skipped the corrupt file
    assert c["duplicate_images"] == 1 and c["index_documents"] == N_TEST
    assert c["text_queries"] == 2 * N_TEST + 1 and c["captions_of_unindexed_images"] == 2
    assert report["metrics"]["image_to_image_self"]["R@1"] == 1.0
    t2i, i2t = brute_force_recall(index_dir, report, flickr, tiny_encoder, [1, 5, 10])
    assert report["metrics"]["text_to_image"] == pytest.approx(t2i)
    assert report["metrics"]["image_to_text"] == pytest.approx(i2t)
    assert "text->image R@1" in printed and "58.80 [1]" in printed
    # run again on the same index: ingest adds nothing, the figures do not move
    again, _ = run_eval(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images",
                         str(flickr / "flickr30k-images"), "--index", str(index_dir)], tmp_path, capsys)
    assert again["counts"]["index_documents"] == N_TEST and again["metrics"] == report["metrics"]


def test_zeroshot_end_to_end_through_ingest(folders, tmp_path, capsys):
    pytest.importorskip("ingest.cli", reason="the ingest branch has not landed on main yet")
    report, printed = run_eval(["zeroshot", str(folders), "--k", "1,3,12"], tmp_path, capsys)
    zs, cq = report["metrics"]["zero_shot"], report["metrics"]["class_query"]
    assert report["dataset"]["name"] == "cifar100" and report["dataset"]["split"] == "test"
    assert report["counts"]["image_queries"] == 12 and report["counts"]["class_queries"] == 3
    assert set(zs) == {"top-1", "top-3"}  # top-12 is meaningless over 3 classes
    assert zs["top-3"] == 1.0  # every class is ranked: the right one is always among them
    assert cq["hit@12"] == 1.0 and cq["P@12"] == pytest.approx(4 / 12)
    assert report["metrics"]["image_to_image_self"]["R@1"] == 1.0
    assert "55.15 [1]" in printed and "rclip" in printed


def test_an_ingest_failure_stops_the_run(flickr, tiny_encoder, tmp_path, capsys):
    pytest.importorskip("ingest.cli", reason="the ingest branch has not landed on main yet")
    other = FaissIndex(tmp_path / "other", model_id="someone/else", dim=tiny_encoder.dim)
    other.upsert([Document("x", np.ones(tiny_encoder.dim, dtype=np.float32))])
    other.save()  # ingest refuses to add our model's vectors to it and exits 1
    code = main(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images", str(flickr / "flickr30k-images"),
                 "--index", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code == 2 and "ingest stopped with exit code 1" in err and "Traceback" not in err


def test_ingest_into_opensearch_fills_the_index_the_evaluation_names(flickr, fake_opensearch, tmp_path, capsys,
                                                                     monkeypatch):
    """Ingest gets the evaluation's own settings: the dataset goes into --index, never into
    OPENSEARCH_INDEX (the collection users search), and the environment is left as it was."""
    import requests

    from clipsearch.index.opensearch_client import clear_cache

    monkeypatch.setenv("OPENSEARCH_URL", fake_opensearch.url)
    monkeypatch.setenv("OPENSEARCH_INDEX", "photos")
    monkeypatch.setenv("OPENSEARCH_REPLICAS", "0")
    clear_cache()
    environ = dict(os.environ)
    try:
        report, _ = run_eval(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images",
                              str(flickr / "flickr30k-images"), "--backend", "opensearch", "--index", "eval-flickr",
                              "--self-check", "0"], tmp_path, capsys)
    finally:
        clear_cache()
    assert dict(os.environ) == environ
    assert report["ingest"]["argv"][:5] == ["OPENSEARCH_INDEX=eval-flickr", "python", "-m", "ingest", "folder"]
    assert report["ingest"]["summary"]["indexed"] == N_TEST and report["ingest"]["summary"]["failed"] == 1
    assert report["counts"]["index_documents"] == N_TEST and report["backend"] == "opensearch"
    assert requests.head(f"{fake_opensearch.url}/eval-flickr", timeout=10).status_code == 200
    assert requests.head(f"{fake_opensearch.url}/photos", timeout=10).status_code == 404


# -- the harness on an index filled directly (no ingest) ------------------------------------------
def test_retrieval_report_structure_and_exact_recall(flickr, flickr_index, tiny_encoder, tmp_path, capsys):
    report, printed = run_eval(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images",
                                str(flickr / "flickr30k-images"), "--index", str(flickr_index), "--skip-ingest",
                                "--k", "1,2,5,10", "--vs-exact"], tmp_path, capsys)
    assert report["task"] == "retrieval" and report["model_id"] == "clipsearch/tiny-test"
    assert report["backend"] == "faiss" and report["index"]["index_type"] == "flat"
    assert report["dataset"]["split"] == "test" and report["ties"] == "pessimistic"
    assert report["ingest"] == {"skipped": True}
    assert report["counts"]["not_indexed"] == 1 and report["counts"]["duplicate_images"] == 1
    assert report["counts"]["distractor_documents"] == 4  # the train images the direct fill added
    for group in ("text_to_image", "image_to_text", "image_to_image_self"):
        values = [report["metrics"][group][f"R@{k}"] for k in (1, 2, 5, 10)]
        assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)
    assert report["metrics"]["image_to_image_self"]["R@1"] == 1.0
    # the exact index agrees with exact search over its own vectors, down to the tie-break
    assert report["metrics"]["text_to_image_vs_exact"] == {f"overlap@{k}": 1.0 for k in (1, 2, 5, 10)}
    assert [r["group"] for r in report["reference"]] == ["text_to_image", "image_to_text"]
    t2i, i2t = brute_force_recall(flickr_index, report, flickr, tiny_encoder, [1, 2, 5, 10])
    assert report["metrics"]["text_to_image"] == pytest.approx(t2i)
    assert report["metrics"]["image_to_text"] == pytest.approx(i2t)
    assert "note: the references are for openai/clip-vit-base-patch32" in printed


def test_hnsw_on_the_same_collection(flickr, flickr_index, tmp_path, capsys):
    report, _ = run_eval(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images",
                          str(flickr / "flickr30k-images"), "--index", str(flickr_index), "--skip-ingest",
                          "--hnsw-threshold", "1", "--no-image-to-text", "--limit", "8"], tmp_path, capsys)
    assert report["index"]["index_type"] == "hnsw" and report["index"]["params"]["hnsw_threshold"] == 1
    assert set(report["metrics"]) == {"text_to_image", "image_to_image_self"}
    assert report["counts"]["images_evaluated"] == 8 and report["counts"]["self_check_queries"] == 8
    assert report["metrics"]["image_to_image_self"]["R@1"] == 1.0


def test_a_broken_ranking_gives_lower_recall(flickr, flickr_index, tmp_path, capsys, monkeypatch):
    import clipsearch.index

    real_open = clipsearch.index.open_index

    class Reversed:
        """The real index with its ranking turned upside down: the worst documents first."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def search(self, vector, k=10, **kw):
            return list(reversed(self.inner.search(vector, k=self.inner.count(), **kw)))[:k]

    argv = ["retrieval", str(flickr / "dataset_flickr30k.json"), "--images", str(flickr / "flickr30k-images"),
            "--index", str(flickr_index), "--skip-ingest", "--ties", "order", "--vs-exact"]
    good, _ = run_eval(argv, tmp_path, capsys)
    monkeypatch.setattr(clipsearch.index, "open_index", lambda *sections: Reversed(real_open(*sections)))
    bad, _ = run_eval(argv, tmp_path, capsys)
    assert good["metrics"]["image_to_image_self"]["R@1"] == 1.0
    assert bad["metrics"]["image_to_image_self"]["R@1"] == 0.0
    assert bad["metrics"]["image_to_image_self"]["R@5"] < good["metrics"]["image_to_image_self"]["R@5"]
    assert good["metrics"]["text_to_image_vs_exact"]["overlap@1"] == 1.0
    assert bad["metrics"]["text_to_image_vs_exact"]["overlap@1"] == 0.0


def test_zeroshot_on_an_index_filled_directly(folders, tiny_encoder, tmp_path, capsys):
    index_dir = tmp_path / "index"
    fill_index(index_dir, sorted((folders / "test").rglob("*.png")), tiny_encoder)
    report, _ = run_eval(["zeroshot", str(folders), "--index", str(index_dir), "--skip-ingest",
                          "--prompt", "a photo of a {}.", "--limit", "6", "--self-check", "0", "--vs-exact"],
                         tmp_path, capsys)
    assert report["dataset"]["prompt"] == "a photo of a {}."
    assert report["counts"]["image_queries"] == 6 and report["counts"]["distractor_documents"] == 6
    assert "image_to_image_self" not in report["metrics"]
    assert set(report["metrics"]["class_query_vs_exact"].values()) == {1.0}
    assert report["metrics"]["zero_shot"]["top-1"] in {i / 6 for i in range(7)}


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["retrieval", "x.json", "--k", "0"],
    ["retrieval", "x.json", "--k", "a,b"],
    ["retrieval", "x.json", "--limit", "-3"],
    ["retrieval", "x.json", "--backend", "sqlite"],
    ["zeroshot", "folder", "--prompt", "no placeholder"],
    ["zeroshot", "folder", "--self-check", "-1"],
    ["nonsense"],
])
def test_bad_options_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_unusable_inputs_are_clear_errors(flickr, folders, tmp_path, capsys, tiny_encoder):
    json_file = str(flickr / "dataset_flickr30k.json")
    images = str(flickr / "flickr30k-images")
    cases = [
        (["retrieval", str(tmp_path / "nope.json")], "does not exist"),
        (["retrieval", json_file, "--images", images, "--split", "nosuchsplit", "--skip-ingest"], "no usable images"),
        (["retrieval", json_file, "--images", images, "--index", str(tmp_path / "empty"), "--skip-ingest"],
         "no embedded index"),
        (["zeroshot", str(folders), "--index", str(tmp_path / "empty"), "--skip-ingest"], "no embedded index"),
        # never ingest a dataset into the OpenSearch collection users search
        (["retrieval", json_file, "--images", images, "--backend", "opensearch"], "--index NAME"),
    ]
    other = FaissIndex(tmp_path / "other", model_id="someone/else", dim=tiny_encoder.dim)
    other.upsert([Document("x", np.ones(tiny_encoder.dim, dtype=np.float32))])
    other.save()
    cases.append((["retrieval", json_file, "--images", images, "--index", str(tmp_path / "other"), "--skip-ingest"],
                  "someone/else"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_an_index_without_the_dataset_is_refused(flickr, folders, tiny_encoder, tmp_path, capsys):
    index_dir = tmp_path / "index"
    fill_index(index_dir, sorted((folders / "test").rglob("*.png")), tiny_encoder)
    code = main(["retrieval", str(flickr / "dataset_flickr30k.json"), "--images", str(flickr / "flickr30k-images"),
                 "--index", str(index_dir), "--skip-ingest"])
    assert code == 2 and "none of the 18 images is in the index" in capsys.readouterr().err


def test_module_help():
    out = subprocess.run([sys.executable, "-m", "eval", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "retrieval" in out.stdout and "zeroshot" in out.stdout
    out = subprocess.run([sys.executable, "-m", "eval", "retrieval", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert "--hnsw-threshold" in out.stdout and "--backend" in out.stdout and "--limit" in out.stdout
