from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipsearch.config import DEFAULT_MODEL_ID, Settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults():
    s = Settings.from_env({})
    assert s.model.source == DEFAULT_MODEL_ID and s.index.backend == "faiss" and s.model.encoder == "torch"
    assert s.model.id is None and s.index.path == "data/index"


def test_model_path_wins_over_model_id():
    s = Settings.from_env({"MODEL_PATH": "/models/clip", "MODEL_ID": "openai/clip-vit-large-patch14"})
    assert s.model.source == "/models/clip" and s.model.id == "openai/clip-vit-large-patch14"


@pytest.mark.parametrize("name, value", [("HNSW_THRESHOLD", "many"), ("PRELOAD_IMAGE_TOWER", "perhaps"),
                                         ("MAX_IMAGE_BYTES", "1.5")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_password_not_in_repr():
    assert "hunter2" not in repr(Settings.from_env({"OPENSEARCH_PASSWORD": "hunter2"}))


def test_sections_read_alone_and_together():
    from clipsearch.config import IndexSettings, LimitSettings, ModelSettings, OpenSearchSettings

    env = {"ENCODER": "ONNX", "TORCH_THREADS": "0", "INDEX_PATH": "/srv/idx", "OPENSEARCH_TIMEOUT": "3",
           "AWS_DEFAULT_REGION": "eu-west-1", "MAX_IMAGE_PIXELS": "100"}
    s = Settings.from_env(env)
    assert s.model == ModelSettings.from_env(env) and s.model.encoder == "onnx" and s.model.threads is None
    assert s.index == IndexSettings.from_env(env) == IndexSettings(path="/srv/idx")
    assert s.opensearch == OpenSearchSettings.from_env(env) == OpenSearchSettings(timeout=3, region="eu-west-1")
    assert s.limits == LimitSettings.from_env(env) and s.limits.max_image_pixels == 100
    # AWS_REGION wins over the older AWS_DEFAULT_REGION; a blank value is unset.
    assert OpenSearchSettings.from_env({"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "eu-west-1"}).region == "us-east-1"
    assert IndexSettings.from_env({"INDEX_PATH": "  "}).path == "data/index"


@pytest.mark.parametrize("name, value, message", [
    ("OPENSEARCH_TIMEOUT", "abc", "OPENSEARCH_TIMEOUT must be an integer, got 'abc'"),
    ("OPENSEARCH_FORCE_MERGE", "maybe", "OPENSEARCH_FORCE_MERGE must be true or false, got 'maybe'"),
    ("CLIPSEARCH_RETRY_BUDGET", "long", "CLIPSEARCH_RETRY_BUDGET must be a number, got 'long'"),
])
def test_bad_values_say_what_was_expected(name, value, message):
    from frontend.config import FrontendSettings

    with pytest.raises(ValueError) as info:
        (FrontendSettings if name.startswith("CLIPSEARCH_") else Settings).from_env({name: value})
    assert str(info.value) == message


def test_every_field_names_its_variable_once():
    from frontend.config import FrontendSettings

    names = Settings.variables() + FrontendSettings.variables()
    assert len(names) == len(set(names)) and all(n == n.upper() for n in names)


# Variables in the README's table that no settings section reads, and the file that reads each.
READ_ELSEWHERE = {"DEMO_LAMBDA_PORT": "scripts/demo.py", "DEMO_GATEWAY_PORT": "scripts/demo.py",
                  "DEMO_UI_PORT": "scripts/demo.py", "DEMO_UI_ADDRESS": "scripts/demo.py"}


def readme_table_variables() -> set[str]:
    """The variables named in the first column of the README's configuration table."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| variable | default | meaning |") + 2
    names: set[str] = set()
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def test_the_readme_table_lists_exactly_the_variables_read():
    from frontend.config import FrontendSettings

    read = set(Settings.variables()) | set(FrontendSettings.variables())
    table = readme_table_variables()
    assert read - table == set(), "read by the settings but missing from the README's table"
    assert table - read == set(READ_ELSEWHERE), "in the README's table but read by nothing"
    for name, reader in READ_ELSEWHERE.items():
        assert f'"{name}"' in (REPO / reader).read_text(), f"{reader} no longer reads {name}"
