"""Each family end to end: a folder ingested with its stand-in, served under the real Lambda emulator
with ENCODER=torch and with ENCODER=onnx, answering text, image, URL and id queries over HTTP.

Expected rankings come from this process: the torch encoder of the same stand-in searching the
same index (random weights: rankings mean nothing, but both encoders must give the same ones).
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
import requests
from server_support import FileServer, send

from clipsearch.config import IndexSettings, ModelSettings, Settings
from clipsearch.index.faiss_index import FaissIndex
from clipsearch.models.torch_encoder import TorchEncoder
from server.local import LocalLambda

pytestmark = pytest.mark.e2e
LOOPBACK_RUNTIME = str(Path(__file__).resolve().parent / "loopback_runtime.py")
QUERIES = {"clip": ["two dogs", "a red car on the street at night"],
           "siglip": ["two dogs", "A Red CAR, on the street!"],
           # SigLIP 2 is multilingual: Japanese and Arabic tokenise to pieces and bytes, never <unk>.
           "siglip2": ["two dogs", "二匹の犬が海辺にいる", "كلب على الشاطئ"]}


@pytest.fixture(scope="module")
def ingested(stand_in, photo_folder, tmp_path_factory):
    """`ingested(family)`: (index path, its torch encoder), the folder ingested once per family."""
    from ingest.cli import execute

    cache: dict[str, tuple[Path, TorchEncoder]] = {}

    def get(family: str):
        if family not in cache:
            path = tmp_path_factory.mktemp(f"index-{family}")
            settings = Settings(model=ModelSettings(path=str(stand_in(family)), threads=1),
                                index=IndexSettings(path=str(path)))
            summary = execute(["folder", str(photo_folder), "--index", str(path), "--no-cache", "--quiet"], settings)
            assert summary.failed == [], summary.failed
            cache[family] = path, TorchEncoder(str(stand_in(family)), threads=1, load=("text", "vision"))
        return cache[family]

    return get


def doc_of(index: FaissIndex, name: str) -> str:
    """The id ingest gave the photo file `name` (a content hash)."""
    ids = [i for i in index.ids() if Path(index.get(i).metadata["path"]).name == name]
    assert len(ids) == 1, (name, ids)
    return ids[0]


@pytest.mark.parametrize("encoder", ["torch", "onnx"])
@pytest.mark.parametrize("family", ["clip", "siglip", "siglip2"])
def test_a_family_served_under_the_emulator(family, encoder, ingested, stand_in, stand_in_onnx, photo_folder,
                                            tmp_path):
    index_path, torch_enc = ingested(family)
    index = FaissIndex.load(index_path)
    assert index.count() == 12 and index.model_id == torch_enc.model_id
    env = {"MODEL_PATH": str(stand_in(family)), "MODEL_ID": "", "INDEX_PATH": str(index_path), "BACKEND": "faiss",
           "ENCODER": encoder, "ONNX_PATH": str(stand_in_onnx(family)) if encoder == "onnx" else "",
           "TORCH_THREADS": "1"}
    photo = lambda name: next(photo_folder.rglob(name)).read_bytes()  # noqa: E731
    files = FileServer({"/p05.jpg": send(200, {"Content-Type": "image/jpeg"}, photo("photo05.jpg"))})
    with files, LocalLambda(env=env, log=tmp_path / "stack.log", python=[sys.executable, LOOPBACK_RUNTIME]) as stack:
        assert stack.ready_status == 200, (tmp_path / "stack.log").read_text()[-3000:]

        def search(body: dict) -> dict:
            r = requests.post(stack.search_url, json={"k": 5, **body}, timeout=60)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["model"] == torch_enc.model_id and answer["family"] == family
            assert "random weights" in answer["warning"]  # every family's stand-in says so
            return answer

        for text in QUERIES[family]:
            expected = [h.id for h in index.search(torch_enc.encode_text(text)[0], k=5)]
            assert [x["id"] for x in search({"query": text, "input_type": "text"})["results"]] == expected
        # An image finds itself first, whichever way it arrives; an id finds its neighbours.
        image = photo("photo03.jpg")
        hits = search({"query": base64.b64encode(image).decode(), "input_type": "image"})["results"]
        assert hits[0]["id"] == doc_of(index, "photo03.jpg") and hits[0]["score"] > 0.999
        hits = search({"query": files.url("/p05.jpg"), "input_type": "url"})["results"]
        assert hits[0]["id"] == doc_of(index, "photo05.jpg") and hits[0]["score"] > 0.999
        seven = doc_of(index, "photo07.jpg")
        expected = [h.id for h in index.search(index.get(seven).vector, k=6) if h.id != seven][:5]
        assert [x["id"] for x in search({"query": seven, "input_type": "id"})["results"]] == expected
        health = requests.get(stack.health_url, timeout=30).json()
        assert health["family"] == family and health["towers"] == ["text", "vision"]
