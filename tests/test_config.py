from __future__ import annotations

import pytest

from clipsearch.config import DEFAULT_MODEL_ID, Settings


def test_defaults():
    s = Settings.from_env({})
    assert s.model_source == DEFAULT_MODEL_ID and s.backend == "faiss" and s.encoder == "torch"
    assert s.model_id is None and s.index_path == "data/index"


def test_model_path_wins_over_model_id():
    s = Settings.from_env({"MODEL_PATH": "/models/clip", "MODEL_ID": "openai/clip-vit-large-patch14"})
    assert s.model_source == "/models/clip" and s.model_id == "openai/clip-vit-large-patch14"


@pytest.mark.parametrize("name, value", [("HNSW_THRESHOLD", "many"), ("PRELOAD_IMAGE_TOWER", "perhaps"),
                                         ("MAX_IMAGE_BYTES", "1.5")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_password_not_in_repr():
    assert "hunter2" not in repr(Settings.from_env({"OPENSEARCH_PASSWORD": "hunter2"}))
