"""`python -m ingest generations`: list the alias's generations and delete old ones, signed like
every other request (an unsigned DELETE gets 403 from a domain), never the one the alias serves."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from clipsearch.config import OpenSearchSettings
from clipsearch.index.opensearch import OpenSearchIndex
from clipsearch.index.opensearch_client import clear_cache, make_client
from fake_opensearch import FakeOpenSearch
from ingest.cli import main
from test_opensearch import docs, fast_bulk


@pytest.fixture
def signed(monkeypatch, tmp_path):
    """A SigV4-checking fake with three generations of alias `photos`: model a (old), model b
    (old), model c (served). The command signs with the boto3 chain: here, keys in the environment."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "AKIAGENERATIONS",
           "AWS_SECRET_ACCESS_KEY": "generations-secret", "AWS_REGION": "eu-west-1", "OPENSEARCH_AUTH": "sigv4",
           "OPENSEARCH_SERVICE": "es", "OPENSEARCH_INDEX": "photos", "OPENSEARCH_REPLICAS": "0"}
    with FakeOpenSearch(sigv4=("eu-west-1", "es")) as fake:
        fake.add_credentials("AKIAGENERATIONS", "generations-secret")
        env["OPENSEARCH_URL"] = fake.url
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        clear_cache()
        settings = OpenSearchSettings.from_env(env)
        client = make_client(settings)
        names = []
        for n, (model, dim) in enumerate((("org/a", 8), ("org/b", 4), ("org/c", 8))):
            index = OpenSearchIndex.from_settings(settings, model_id=model, dim=dim, client=client,
                                                  bulk=fast_bulk(client))
            with index.loading():
                index.upsert(docs(3 + n, seed=n, dim=dim)[0])
            names.append(index.index)
        yield fake, names
        clear_cache()


def test_lists_generations_with_model_documents_and_the_served_one(signed, capsys):
    fake, (a, b, c) = signed
    assert main(["generations", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in listed] == [c, b, a]  # newest first
    assert [(g["model_id"], g["dim"], g["count"], g["live"]) for g in listed] == [
        ("org/c", 8, 5, True), ("org/b", 4, 4, False), ("org/a", 8, 3, False)]
    created = dt.datetime.fromisoformat(listed[0]["created"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600
    assert main(["generations"]) == 0
    table = capsys.readouterr().out
    assert f"*  {c}" in table and "org/b" in table and "documents" in table


def test_deletes_old_generations_signed_and_never_the_served_one(signed, capsys):
    fake, (a, b, c) = signed
    assert main(["generations", "--delete", c]) == 1
    assert "is the generation alias 'photos' serves" in capsys.readouterr().err
    assert main(["generations", "--delete", "photos-not-ours"]) == 1
    assert "is not a generation" in capsys.readouterr().err
    assert set(fake.indices) == {a, b, c}

    before, seen = len(fake.signed_with), len(fake.requests)
    assert main(["generations", "--delete", a]) == 0
    assert f"deleted {a}" in capsys.readouterr().out and set(fake.indices) == {b, c}
    deletes = [r for r in fake.requests[seen:] if r.method == "DELETE"]
    assert [r.path for r in deletes] == [f"/{a}"] and len(fake.signed_with) > before
    assert deletes[0].headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")

    assert main(["generations", "--prune"]) == 0
    assert set(fake.indices) == {c} and fake.aliases == {"photos": {c}}
    assert c in capsys.readouterr().out


def test_the_subcommand_is_listed_and_needs_no_model(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generations" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["generations", "--delete"])
    assert exc.value.code == 2
