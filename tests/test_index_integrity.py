"""The embedded index trusts nothing it reads: checksummed files, checked rows and metadata, text
that UTF-8 can always encode; and the server answers a damaged index with a 503 naming the file."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from server_support import build_index, reply

from clipsearch.config import IndexSettings, ModelSettings, Settings
from clipsearch.errors import IndexCorrupt, IndexMissing, InvalidInput
from clipsearch.index import Document
from clipsearch.index.faiss_index import FaissIndex

DIM = 16
N = 60


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def saved(path: Path, n: int = N, threshold: int = 10**9) -> np.ndarray:
    vecs = unit_rows(n)
    index = FaissIndex(path, model_id="m", dim=DIM, hnsw_threshold=threshold)
    index.upsert(Document(f"p{i}", v, {"n": i, "caption": f"photo {i}"}) for i, v in enumerate(vecs))
    index.save()
    return vecs


def generation(path: Path) -> Path:
    return path / json.loads((path / "manifest.json").read_text())["generation"]


def rewrite(path: Path, name: str, data: bytes, *, checksums: str = "recompute") -> None:
    """Replace a generation file; "recompute" keeps the manifest agreeing (a hostile writer),
    "drop" removes every checksum (an index saved before they existed), "keep" leaves them."""
    (generation(path) / name).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    if checksums == "recompute":
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    elif checksums == "drop":
        manifest.pop("files")
    (path / "manifest.json").write_text(json.dumps(manifest))


def load_both(path: Path, **opts):
    for half in (False, True):
        yield FaissIndex.load(path, half=half, **opts)


# ---------------------------------------------------------------------------------- checksums
@pytest.mark.parametrize("name", ["vectors.npy", "ids.json", "metadata.jsonl", "hnsw.faiss"])
@pytest.mark.parametrize("half", [False, True])
def test_a_flipped_byte_in_any_file_is_refused_naming_it(tmp_path, name, half):
    saved(tmp_path / "idx", threshold=20)  # above the threshold: the graph is saved too
    file = generation(tmp_path / "idx") / name
    data = bytearray(file.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01  # one bit, where a vector component or a letter is
    file.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match=f"{name} is damaged: its contents do not match the sha256") as err:
        FaissIndex.load(tmp_path / "idx", half=half, hnsw_threshold=20)
    assert isinstance(err.value, IndexMissing) and err.value.code == "index_corrupt"
    assert err.value.file == str(file)


def test_a_missing_or_resized_file_is_refused(tmp_path):
    saved(tmp_path / "idx")
    gen = generation(tmp_path / "idx")
    ids = (gen / "ids.json").read_bytes()
    (gen / "ids.json").write_bytes(ids + b" ")
    with pytest.raises(IndexCorrupt, match="ids.json is damaged: .* bytes where its manifest says"):
        FaissIndex.load(tmp_path / "idx")
    (gen / "ids.json").write_bytes(ids)
    (gen / "metadata.jsonl").unlink()
    with pytest.raises(IndexCorrupt, match="metadata.jsonl is damaged: missing"):
        FaissIndex.load(tmp_path / "idx")


def test_every_saved_file_is_listed_with_its_checksum(tmp_path):
    saved(tmp_path / "idx", threshold=20)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    gen = generation(tmp_path / "idx")
    assert sorted(manifest["files"]) == sorted(p.name for p in gen.iterdir())
    for name, entry in manifest["files"].items():
        data = (gen / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_an_index_saved_before_checksums_loads_with_a_warning(tmp_path, caplog):
    vecs = saved(tmp_path / "idx")
    rewrite(tmp_path / "idx", "ids.json", (generation(tmp_path / "idx") / "ids.json").read_bytes(), checksums="drop")
    with caplog.at_level(logging.WARNING, logger="clipsearch.index"):
        for index in load_both(tmp_path / "idx"):
            assert index.search(vecs[5], k=1)[0].id == "p5"
    assert "without checksums" in caplog.text and "any ingest into it" in caplog.text


def test_an_index_saved_before_checksums_with_a_damaged_vectors_file_is_refused_naming_it(tmp_path):
    saved(tmp_path / "idx")
    rewrite(tmp_path / "idx", "vectors.npy", b"not a numpy file at all", checksums="drop")
    for half in (False, True):
        with pytest.raises(IndexMissing, match="vectors.npy|inconsistent"):
            FaissIndex.load(tmp_path / "idx", half=half)
    with pytest.raises(IndexCorrupt, match="vectors.npy is damaged: not a NumPy array file"):
        FaissIndex.load(tmp_path / "idx", half=False)


@pytest.mark.parametrize("manifest, problem", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"format": 1, "model_id": "m", "dim": 16, "count": 60, "generation": "../../etc"}', "generation"),
    (b'{"format": 1, "model_id": "m", "dim": "16", "count": 60, "generation": "gen-000001"}', "dim"),
    (b'{"format": 1, "model_id": "m", "dim": 16, "count": -1, "generation": "gen-000001"}', "count"),
    (b'{"format": 1, "model_id": "m", "dim": 16, "count": 60, "generation": "gen-000001", "files": []}', "files"),
])
def test_a_damaged_manifest_is_refused(tmp_path, manifest, problem):
    saved(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_bytes(manifest)
    with pytest.raises(IndexCorrupt, match=f"manifest.json is damaged: .*{problem}"):
        FaissIndex.load(tmp_path / "idx")


# ------------------------------------------------------------------ rows, even with good checksums
@pytest.mark.parametrize("bad, norm", [(np.nan, "nan"), (np.inf, "inf"), (1e6, "4e\\+06"), (0.0, "0")])
@pytest.mark.parametrize("checksums", ["recompute", "drop"])
def test_a_non_finite_or_non_unit_row_is_refused_naming_it(tmp_path, bad, norm, checksums):
    """Served, such a row never scores (NaN) or outscores everything (huge): refused at load."""
    vecs = saved(tmp_path / "idx")
    vecs[37] = bad
    buf = (tmp_path / "v.npy")
    np.save(buf, vecs)
    rewrite(tmp_path / "idx", "vectors.npy", buf.read_bytes(), checksums=checksums)
    for half in (False, True):
        with pytest.raises(IndexCorrupt, match=f"vectors.npy is damaged: row 37 is not a unit vector \\(norm {norm}"):
            FaissIndex.load(tmp_path / "idx", half=half)


@pytest.mark.parametrize("row, problem", [
    (b"[1, 2]", "line 8 is a JSON list, not an object"),
    (b'"a string"', "line 8 is a JSON str"),
    (b"null", "line 8 is a JSON NoneType"),
    (b'{"n": NaN}', "line 8 is not JSON"),
    (b'{"n": 1', "line 8 is not JSON"),
    (b'{"n": 7}, {"n": 8}', "line 8 is not JSON"),  # two rows on one line would shift the rest
    (b'{"caption": "caf\xe9"}', "line 8 is not UTF-8"),  # Latin-1
])
def test_a_metadata_row_that_is_not_a_json_object_is_refused(tmp_path, row, problem):
    saved(tmp_path / "idx")
    lines = (generation(tmp_path / "idx") / "metadata.jsonl").read_bytes().split(b"\n")
    lines[7] = row
    rewrite(tmp_path / "idx", "metadata.jsonl", b"\n".join(lines))
    with pytest.raises(IndexCorrupt, match=f"metadata.jsonl is damaged: {problem}"):
        FaissIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("ids, problem", [
    (["p0"] * N, "an id appears twice"),
    (list(range(N)), "entry 0 \\(0\\) is not a document id"),
    ([f"p{i}" for i in range(N - 1)], "not a list of 60 ids"),
    (["\udce9"] + [f"p{i}" for i in range(1, N)], "entry 0"),
])
def test_ids_that_cannot_be_served_are_refused(tmp_path, ids, problem):
    saved(tmp_path / "idx")
    rewrite(tmp_path / "idx", "ids.json", json.dumps(ids).encode())
    with pytest.raises(IndexCorrupt, match=f"ids.json is damaged: {problem}"):
        FaissIndex.load(tmp_path / "idx")


# --------------------------------------------------------------------------- lone surrogates
def _utf8_json(value) -> bytes:
    """What a gateway does with a handler's answer: JSON as the handler writes it, then UTF-8."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def test_metadata_text_utf8_cannot_encode_is_saved_and_served_safely(tmp_path):
    """A name decoded with surrogateescape ("caf\\udce9.jpg") no longer fails every save; what is
    stored and served is encodable (a lone surrogate becomes U+FFFD, a pair its character)."""
    index = FaissIndex(tmp_path / "idx", model_id="m", dim=DIM)
    vecs = unit_rows(3)
    index.upsert([Document("a", vecs[0], {"path": "caf\udce9.jpg", "tags": ["\ud83d\ude00", {"k\udc80": 1}]}),
                  Document("b", vecs[1], {"path": "plain.jpg"})])
    index.save()
    for loaded in load_both(tmp_path / "idx"):
        meta = loaded.search(vecs[0], k=1)[0].metadata
        assert meta == {"path": "caf\ufffd.jpg", "tags": ["\U0001F600", {"k\ufffd": 1}]}
        _utf8_json([h.metadata for h in loaded.search(vecs[0], k=2)])


def test_lone_surrogate_escapes_in_a_metadata_file_are_repaired_at_load(tmp_path, caplog):
    saved(tmp_path / "idx")
    lines = (generation(tmp_path / "idx") / "metadata.jsonl").read_bytes().split(b"\n")
    lines[3] = b'{"n": 3, "caption": "bad \\udce9 text", "ok": "\\ud83d\\ude00"}'
    rewrite(tmp_path / "idx", "metadata.jsonl", b"\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="clipsearch.index"):
        for loaded in load_both(tmp_path / "idx"):
            meta = loaded.get("p3").metadata
            assert meta == {"n": 3, "caption": "bad \ufffd text", "ok": "\U0001F600"}
            _utf8_json(meta)
    assert "lone surrogates" in caplog.text


@pytest.mark.parametrize("doc, message", [
    (Document("caf\udce9", unit_rows(1)[0]), "not valid Unicode"),
    (Document("x", unit_rows(1)[0], {"score": float("nan")}), "metadata is not JSON"),
    (Document("x", unit_rows(1)[0], {"when": object()}), "metadata is not JSON"),
])
def test_documents_that_could_not_be_saved_or_served_are_refused_at_upsert(tmp_path, doc, message):
    index = FaissIndex(tmp_path / "idx", model_id="m", dim=DIM)
    with pytest.raises(InvalidInput, match=message):
        index.upsert([doc])
    index.save()  # nothing half-written: the save still works
    assert FaissIndex.load(tmp_path / "idx").count() == 0


# ------------------------------------------------------------------------------------- server
def test_the_server_answers_a_damaged_index_with_a_503_naming_the_file(tmp_path, tiny_encoder, tiny_model_dir):
    from server.app import App

    build_index(tmp_path / "idx", tiny_encoder, n=5)
    vectors = generation(tmp_path / "idx") / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-5] ^= 0x40
    vectors.write_bytes(bytes(data))
    settings = Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1),
                        index=IndexSettings(path=str(tmp_path / "idx")))
    status, headers, body = reply(App(settings, encoder=tiny_encoder).handle({"query": "x", "input_type": "text"}, None))
    assert status == 503 and body["error"]["code"] == "index_corrupt" and int(headers["Retry-After"]) > 0
    assert str(vectors) in body["error"]["message"] and "sha256" in body["error"]["message"]
