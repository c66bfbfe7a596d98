"""Copying the embedded index from S3 at init, against botocore's Stubber (no network, strict)."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from server_support import build_index

from clipsearch.config import IndexSettings, ModelSettings, Settings
from clipsearch.errors import BackendUnavailable, IndexMissing
from clipsearch.index.faiss_index import FaissIndex
from server.app import App
from server.s3sync import parse_s3_uri, sync_index


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


@pytest.fixture
def s3():
    client = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, tiny_encoder):
    path = tmp_path_factory.mktemp("s3src") / "index"
    build_index(path, tiny_encoder, n=5)
    return path


def expect_index(stub, local_index, bucket="b", prefix="idx", extra_keys=()):
    """Stub the calls sync_index makes for `local_index` uploaded under s3://bucket/prefix."""
    manifest = (local_index / "manifest.json").read_bytes()
    gen = json.loads(manifest)["generation"]
    stub.add_response("get_object", {"Body": body(manifest)}, {"Bucket": bucket, "Key": f"{prefix}/manifest.json"})
    files = sorted((local_index / gen).iterdir())
    keys = [f"{prefix}/{gen}/{f.name}" for f in files] + list(extra_keys)
    stub.add_response("list_objects_v2", {"Contents": [{"Key": k} for k in keys], "IsTruncated": False},
                      {"Bucket": bucket, "Prefix": f"{prefix}/{gen}/"})
    for f in files:
        stub.add_response("get_object", {"Body": body(f.read_bytes())}, {"Bucket": bucket, "Key": f"{prefix}/{gen}/{f.name}"})
    return gen


def test_parse_uri():
    assert parse_s3_uri("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("https://bucket/x", "s3://", "bucket/x"):
        with pytest.raises(IndexMissing, match="s3://bucket/prefix"):
            parse_s3_uri(bad)


def test_copies_the_live_generation_and_the_copy_loads(s3, local_index, tmp_path):
    client, stub = s3
    gen = expect_index(stub, local_index)
    n = sync_index("s3://b/idx", tmp_path / "copy", client=client)
    assert n == 4  # three generation files + the manifest
    copy = FaissIndex.load(tmp_path / "copy")
    original = FaissIndex.load(local_index)
    assert copy.ids() == original.ids() and copy.model_id == original.model_id
    assert (tmp_path / "copy" / gen / "vectors.npy").read_bytes() == (local_index / gen / "vectors.npy").read_bytes()
    # Already there: only the manifest is read again.
    stub.add_response("get_object", {"Body": body((local_index / "manifest.json").read_bytes())},
                      {"Bucket": "b", "Key": "idx/manifest.json"})
    assert sync_index("s3://b/idx", tmp_path / "copy", client=client) == 0


def test_missing_index_says_how_to_create_it(s3, tmp_path):
    client, stub = s3
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    with pytest.raises(IndexMissing, match="aws s3 sync data/index s3://b/idx"):
        sync_index("s3://b/idx", tmp_path / "copy", client=client)


def test_access_denied_is_backend_unavailable(s3, tmp_path):
    client, stub = s3
    stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
    with pytest.raises(BackendUnavailable, match="AccessDenied"):
        sync_index("s3://b/idx", tmp_path / "copy", client=client)


def test_incomplete_upload_is_refused_and_nothing_written(s3, local_index, tmp_path):
    client, stub = s3
    manifest = (local_index / "manifest.json").read_bytes()
    gen = json.loads(manifest)["generation"]
    stub.add_response("get_object", {"Body": body(manifest)}, {"Bucket": "b", "Key": "idx/manifest.json"})
    stub.add_response("list_objects_v2", {"Contents": [{"Key": f"idx/{gen}/ids.json"}], "IsTruncated": False},
                      {"Bucket": "b", "Prefix": f"idx/{gen}/"})
    with pytest.raises(IndexMissing, match="incomplete.*metadata.jsonl, vectors.npy"):
        sync_index("s3://b/idx", tmp_path / "copy", client=client)
    assert not (tmp_path / "copy" / "manifest.json").exists()


def test_keys_escaping_the_directory_are_refused(s3, local_index, tmp_path):
    client, stub = s3
    manifest = json.loads((local_index / "manifest.json").read_text())
    manifest["generation"] = "gen-000001"
    stub.add_response("get_object", {"Body": body(json.dumps(manifest).encode())}, {"Bucket": "b", "Key": "idx/manifest.json"})
    keys = [f"idx/gen-000001/{n}" for n in ("vectors.npy", "ids.json", "metadata.jsonl")] + ["idx/gen-000001/../../../etc/x"]
    stub.add_response("list_objects_v2", {"Contents": [{"Key": k} for k in keys], "IsTruncated": False},
                      {"Bucket": "b", "Prefix": "idx/gen-000001/"})
    with pytest.raises(IndexMissing, match="outside the index directory"):
        sync_index("s3://b/idx", tmp_path / "copy", client=client)
    assert not (tmp_path / "copy").exists()


def test_app_copies_from_s3_at_init(s3, local_index, tmp_path, tiny_encoder, monkeypatch, tiny_model_dir):
    """Embedded mode with INDEX_S3_URI: the app's init copies the index, then serves it."""
    client, stub = s3
    expect_index(stub, local_index, bucket="idx-bucket", prefix="index")
    monkeypatch.setattr(boto3, "client", lambda service, **kw: client if service == "s3" else None)
    settings = Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1),
                        index=IndexSettings(path=str(tmp_path / "tmp-index"), s3_uri="s3://idx-bucket/index"))
    app = App(settings, encoder=tiny_encoder)
    out = app.handle({"query": "two dogs", "input_type": "text"}, None)
    assert out["statusCode"] == 200 and json.loads(out["body"])["count"] == 5


def test_a_damaged_download_is_fetched_again_on_the_next_init(s3, local_index, tmp_path, tiny_encoder, monkeypatch,
                                                              tiny_model_dir):
    """A copy whose bytes differ from its manifest's checksums is refused (503 index_corrupt) and
    discarded, so the next init attempt downloads it again rather than answering 503 for ever."""
    client, stub = s3
    gen = json.loads((local_index / "manifest.json").read_bytes())["generation"]
    damaged = bytearray((local_index / gen / "vectors.npy").read_bytes())
    damaged[-3] ^= 0x10
    manifest = (local_index / "manifest.json").read_bytes()
    stub.add_response("get_object", {"Body": body(manifest)}, {"Bucket": "b", "Key": "idx/manifest.json"})
    files = sorted((local_index / gen).iterdir())
    stub.add_response("list_objects_v2", {"Contents": [{"Key": f"idx/{gen}/{f.name}"} for f in files],
                                          "IsTruncated": False}, {"Bucket": "b", "Prefix": f"idx/{gen}/"})
    for f in files:
        data = bytes(damaged) if f.name == "vectors.npy" else f.read_bytes()  # flipped in transit
        stub.add_response("get_object", {"Body": body(data)}, {"Bucket": "b", "Key": f"idx/{gen}/{f.name}"})
    monkeypatch.setattr(boto3, "client", lambda service, **kw: client if service == "s3" else None)
    settings = Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1),
                        index=IndexSettings(path=str(tmp_path / "tmp-index"), s3_uri="s3://b/idx"))
    app = App(settings, encoder=tiny_encoder, retry_init_s=3600)
    out = app.handle({"query": "two dogs", "input_type": "text"}, None)
    assert out["statusCode"] == 503 and json.loads(out["body"])["error"]["code"] == "index_corrupt"
    assert not (tmp_path / "tmp-index" / "manifest.json").exists() and not (tmp_path / "tmp-index" / gen).exists()
    expect_index(stub, local_index)  # the next attempt downloads every file again, intact this time
    app.retry_init_s = 0
    out = app.handle({"query": "two dogs", "input_type": "text"}, None)
    assert out["statusCode"] == 200 and json.loads(out["body"])["count"] == 5


def test_discard_removes_only_the_copy_s_own_generation(tmp_path):
    from server.s3sync import discard

    (tmp_path / "gen-000002").mkdir()
    (tmp_path / "keep").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"generation": "gen-000002"}))
    discard(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    (tmp_path / "manifest.json").write_text(json.dumps({"generation": "../keep"}))  # never outside
    discard(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    discard(tmp_path / "absent")  # nothing there: nothing to do
