"""The Lambda handler's app with BACKEND=opensearch against the strict fake: results with cosine
scores and metadata, search by id, and a failing cluster answered 503 with Retry-After."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipsearch.config import Settings
from clipsearch.index import Document
from clipsearch.index.opensearch import OpenSearchIndex
from clipsearch.index.opensearch_client import clear_cache

app_module = pytest.importorskip("server.app", reason="the server package is not on this branch yet")


@pytest.fixture
def served(fake_opensearch, tiny_encoder, tiny_model_dir, image_bytes):
    from io import BytesIO

    from PIL import Image

    clear_cache()
    settings = Settings.from_env({"BACKEND": "opensearch", "OPENSEARCH_URL": fake_opensearch.url,
                                  "OPENSEARCH_INDEX": "photos", "OPENSEARCH_REPLICAS": "0",
                                  "MODEL_PATH": str(tiny_model_dir), "MODEL_ID": tiny_encoder.model_id,
                                  "TORCH_THREADS": "1"})
    images = [Image.open(BytesIO(image_bytes(i))) for i in range(8)]
    vectors = tiny_encoder.encode_images(images)
    index = OpenSearchIndex.from_settings(settings.opensearch, model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    with index.loading():
        index.upsert([Document(f"photo{i}", vectors[i], {"url": f"https://img.example/{i}.jpg", "width": 64,
                                                         "height": 48, "orientation": ("landscape", "portrait")[i % 2],
                                                         "photographer": f"P{i}"}) for i in range(8)])
        index.save()
    app = app_module.App(settings, encoder=tiny_encoder)
    yield app, vectors
    clear_cache()


def call(app, **body):
    reply = app.handle(body)
    return reply["statusCode"], json.loads(reply["body"]), reply.get("headers") or {}


def test_text_and_id_queries_come_back_with_cosines_and_metadata(served):
    app, vectors = served
    status, body, _ = call(app, query="two dogs", input_type="text", k=3, filters={"orientation": "portrait"})
    assert status == 200 and len(body["results"]) == 3
    assert all(r["orientation"] == "portrait" and -1 <= r["score"] <= 1 and r["url"] for r in body["results"])
    status, body, _ = call(app, query="photo5", input_type="id", k=3)
    assert status == 200 and len(body["results"]) >= 2
    for r in body["results"]:  # the scores clients see are the vectors' cosines
        j = int(r["id"].removeprefix("photo"))
        assert r["score"] == pytest.approx(float(np.dot(vectors[5], vectors[j])), abs=1e-5)
        assert "vector" not in r and "doc_id" not in r
    status, body, _ = call(app, query="nope", input_type="id")
    assert status == 404


def test_a_failing_cluster_is_503_with_retry_after(served, fake_opensearch):
    app, _ = served
    fake_opensearch.fail(503, times=10, path="_search")
    status, body, headers = call(app, query="a red car", input_type="text")
    assert status == 503 and body["error"]["code"] == "backend_unavailable" and int(headers["Retry-After"]) > 0
    fake_opensearch.clear_faults()
    assert call(app, query="a red car", input_type="text")[0] == 200
