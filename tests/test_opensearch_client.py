"""Connecting to OpenSearch: SigV4 (signatures checked by the fake), rotation, basic auth, the cache."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
from botocore.credentials import RefreshableCredentials

from clipsearch.config import OpenSearchSettings
from clipsearch.errors import BackendUnavailable
from clipsearch.index import Document
from clipsearch.index.opensearch import OpenSearchIndex
from clipsearch.index.opensearch_client import clear_cache, get_client, make_client
from fake_opensearch import FakeOpenSearch

UTC = dt.timezone.utc


class Clock:
    def __init__(self):
        self.now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self):
        return self.now


def rotating_credentials(fake: FakeOpenSearch, clock: Clock, lifetime=dt.timedelta(hours=1)):
    """Role-style credentials that expire after `lifetime`; each refresh issues a new key."""
    issued = []

    def refresh():
        n = len(issued)
        key = f"ASIAROTATING{n:04d}"
        fake.add_credentials(key, f"secret-{n}", f"token-{n}")
        issued.append(key)
        return {"access_key": key, "secret_key": f"secret-{n}", "token": f"token-{n}",
                "expiry_time": (clock.now + lifetime).isoformat()}

    first = refresh()
    creds = RefreshableCredentials(first["access_key"], first["secret_key"], first["token"],
                                   dt.datetime.fromisoformat(first["expiry_time"]), refresh, "test",
                                   time_fetcher=clock)
    return creds, issued


def sigv4_settings(fake, service="es") -> OpenSearchSettings:
    return OpenSearchSettings.from_env({"OPENSEARCH_URL": fake.url, "OPENSEARCH_AUTH": "sigv4",
                                        "OPENSEARCH_SERVICE": service, "AWS_REGION": "eu-west-1",
                                        "OPENSEARCH_INDEX": "signed", "OPENSEARCH_REPLICAS": "0"})


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_sigv4_requests_are_signed_and_follow_credential_rotation(service):
    with FakeOpenSearch(sigv4=("eu-west-1", service)) as fake:
        clock = Clock()
        creds, issued = rotating_credentials(fake, clock)
        client = make_client(sigv4_settings(fake, service), credentials=creds)
        assert client.info()["version"]["distribution"] == "opensearch"
        client.indices.create(index="a", body={"settings": {"index": {"knn": True}}})
        assert fake.signed_with == [issued[0]] * 2  # not refreshed while valid
        clock.now += dt.timedelta(minutes=55)  # inside the refresh window: the role rotated
        client.indices.get_mapping(index="a")
        assert len(issued) == 2 and fake.signed_with[-1] == issued[1]
        client.indices.get_mapping(index="a")
        assert fake.signed_with[-1] == issued[1] and len(issued) == 2
        last = fake.requests[-1].headers
        assert re.match(rf"AWS4-HMAC-SHA256 Credential={issued[1]}/\d{{8}}/eu-west-1/{service}/aws4_request, "
                        r"SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, ", last["Authorization"])
        assert last["X-Amz-Security-Token"] == "token-1" and len(last["X-Amz-Content-SHA256"]) == 64


def test_sigv4_index_roundtrip_with_bodies_and_bulk():
    with FakeOpenSearch(sigv4=("eu-west-1", "es")) as fake:
        creds, _ = rotating_credentials(fake, Clock())
        settings = sigv4_settings(fake)
        client = make_client(settings, credentials=creds)
        index = OpenSearchIndex.from_settings(settings, model_id="m", dim=4, client=client)
        with index.loading():
            index.upsert([Document(f"d{i}", np.eye(4)[i], {"orientation": "portrait"}) for i in range(3)])
            index.upsert([Document("odd/id with spaces?&#", np.eye(4)[3], {"orientation": "portrait"})])
            index.save()
        assert index.search(np.eye(4)[2], k=1, filters={"orientation": "portrait"})[0].id == "d2"
        assert index.count() == 4 and index.get("odd/id with spaces?&#").metadata == {"orientation": "portrait"}


def test_sigv4_from_the_boto3_chain(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    with FakeOpenSearch(sigv4=("eu-west-1", "es")) as fake:
        fake.add_credentials("AKIAFROMENV", "env-secret")
        make_client(sigv4_settings(fake)).info()
        assert fake.signed_with == ["AKIAFROMENV"]


def test_wrong_secret_is_refused_and_reported_as_unavailable():
    with FakeOpenSearch(sigv4=("eu-west-1", "es")) as fake:
        fake.add_credentials("AKIAWRONG", "the-real-secret")
        from botocore.credentials import Credentials

        settings = sigv4_settings(fake)
        client = make_client(settings, credentials=Credentials("AKIAWRONG", "a-stale-secret"))
        with pytest.raises(BackendUnavailable, match="403.*OPENSEARCH_AUTH"):
            OpenSearchIndex.from_settings(settings, client=client)


def test_basic_auth():
    with FakeOpenSearch(basic_auth=("admin", "s3cret!")) as fake:
        env = {"OPENSEARCH_URL": fake.url, "OPENSEARCH_AUTH": "basic", "OPENSEARCH_USER": "admin"}
        ok = OpenSearchSettings.from_env({**env, "OPENSEARCH_PASSWORD": "s3cret!"})
        assert make_client(ok).info()["name"] == "fake"
        bad = OpenSearchSettings.from_env({**env, "OPENSEARCH_PASSWORD": "guess"})
        with pytest.raises(BackendUnavailable, match="401"):
            OpenSearchIndex.from_settings(bad, client=make_client(bad))


def test_one_cached_client_per_endpoint_and_identity():
    clear_cache()
    a = OpenSearchSettings.from_env({"OPENSEARCH_URL": "http://127.0.0.1:1"})
    assert get_client(a) is get_client(OpenSearchSettings.from_env({"OPENSEARCH_URL": "http://127.0.0.1:1"}))
    assert get_client(a) is not get_client(OpenSearchSettings.from_env({"OPENSEARCH_URL": "http://127.0.0.1:2"}))
    clear_cache()


@pytest.mark.parametrize("env, match", [
    ({}, "OPENSEARCH_URL is not set"),
    ({"OPENSEARCH_URL": "search.example.com"}, "http"),
    ({"OPENSEARCH_URL": "ftp://x"}, "http"),
    ({"OPENSEARCH_URL": "https://x", "OPENSEARCH_AUTH": "kerberos"}, "OPENSEARCH_AUTH"),
    ({"OPENSEARCH_URL": "https://x", "OPENSEARCH_AUTH": "basic"}, "OPENSEARCH_USER"),
    ({"OPENSEARCH_URL": "https://x", "OPENSEARCH_AUTH": "sigv4"}, "AWS_REGION"),
    ({"OPENSEARCH_URL": "https://x", "OPENSEARCH_AUTH": "sigv4", "AWS_REGION": "eu-west-1",
      "OPENSEARCH_SERVICE": "s3"}, "OPENSEARCH_SERVICE"),
])
def test_bad_connection_settings_say_what_to_fix(env, match):
    with pytest.raises(ValueError, match=match):
        make_client(OpenSearchSettings.from_env(env))


@pytest.mark.parametrize("env, match", [
    ({"OPENSEARCH_ENGINE": "nmslib"}, "nmslib"), ({"OPENSEARCH_DATA_TYPE": "half"}, "DATA_TYPE"),
    ({"OPENSEARCH_MODE": "fast"}, "MODE"), ({"OPENSEARCH_COMPRESSION": "3x"}, "COMPRESSION"),
    ({"OPENSEARCH_M": "1"}, "OPENSEARCH_M"), ({"OPENSEARCH_DATA_TYPE": "byte", "OPENSEARCH_MODE": "on_disk"}, "float"),
    # The k-NN plugin's table: faiss takes 1x 2x 8x 16x 32x, lucene 1x 4x; on_disk needs compression.
    ({"OPENSEARCH_COMPRESSION": "4x"}, "not offered by the faiss engine: use one of 1x, 2x, 8x, 16x, 32x"),
    ({"OPENSEARCH_ENGINE": "lucene", "OPENSEARCH_COMPRESSION": "2x"}, "not offered by the lucene engine"),
    ({"OPENSEARCH_ENGINE": "lucene", "OPENSEARCH_MODE": "on_disk", "OPENSEARCH_COMPRESSION": "32x"}, "lucene"),
    ({"OPENSEARCH_MODE": "on_disk", "OPENSEARCH_COMPRESSION": "1x"}, "on_disk needs a compressed level"),
    ({"OPENSEARCH_ENGINE": "lucene", "OPENSEARCH_SERVICE": "aoss"}, "Serverless"),
])
def test_bad_index_options_are_refused_before_creating_anything(fake_opensearch, env, match):
    settings = OpenSearchSettings.from_env({"OPENSEARCH_URL": fake_opensearch.url, **env})
    with pytest.raises(ValueError, match=match):
        OpenSearchIndex.from_settings(settings, model_id="m", dim=4, client=make_client(settings))
    assert fake_opensearch.indices == {}


def test_new_settings_read_from_the_environment():
    s = OpenSearchSettings.from_env({"OPENSEARCH_ENGINE": "Lucene", "OPENSEARCH_M": "24", "OPENSEARCH_EF_SEARCH": "64",
                           "OPENSEARCH_DATA_TYPE": "byte", "OPENSEARCH_REPLICAS": "0", "OPENSEARCH_FORCE_MERGE": "yes",
                           "OPENSEARCH_MODE": "on_disk", "OPENSEARCH_COMPRESSION": "16X"})
    assert (s.engine, s.m, s.ef_search, s.data_type) == ("lucene", 24, 64, "byte")
    assert s.replicas == 0 and s.force_merge and s.compression == "16x"
    with pytest.raises(ValueError, match="OPENSEARCH_EF_SEARCH"):
        OpenSearchSettings.from_env({"OPENSEARCH_EF_SEARCH": "lots"})


@pytest.mark.parametrize("env, compression", [
    ({"OPENSEARCH_ENGINE": "lucene", "OPENSEARCH_MODE": "on_disk"}, None),  # lucene's on_disk: 4x by default
    ({"OPENSEARCH_ENGINE": "lucene", "OPENSEARCH_COMPRESSION": "4x"}, "4x"),
    ({"OPENSEARCH_MODE": "on_disk", "OPENSEARCH_COMPRESSION": "8x"}, "8x"),
    ({"OPENSEARCH_COMPRESSION": "2x"}, "2x"),
])
@pytest.mark.parametrize("version", ["2.19.2", "3.1.0"])
def test_valid_compressions_are_created_and_rescored(env, compression, version):
    with FakeOpenSearch(version=version) as fake:
        settings = OpenSearchSettings.from_env({"OPENSEARCH_URL": fake.url, "OPENSEARCH_REPLICAS": "0", **env})
        index = OpenSearchIndex.from_settings(settings, model_id="m", dim=4, client=make_client(settings))
        assert index.compression == compression
        with index.loading():
            index.upsert([Document(f"d{i}", np.eye(4)[i]) for i in range(4)])
        assert index.search(np.eye(4)[2], k=1)[0].id == "d2"
        body = fake.requests[-1].body
        assert (b'"rescore"' in body) is (compression != "2x")  # quantised codes are re-scored
