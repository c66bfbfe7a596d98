"""The ONNX Runtime encoder against the torch one: same tokens, same vectors, same search results,
and no torch on its import path. Both encoders run the same tiny random checkpoint.

Random weights make every embedding nearly the same vector (DESIGN.md, "Comparing encoders with
random weights"), so besides the plain cosine these tests compare the maximum absolute
difference, the cosine after subtracting the collection's mean, and top-k agreement over an index.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image

from clipsearch.config import ModelSettings
from clipsearch.models import load_encoder, resolve_model_id
from clipsearch.models.onnx_encoder import OnnxEncoder
from clipsearch.errors import InvalidInput
from clipsearch.models.export import export, main as export_main
from clipsearch.index import Document
from clipsearch.index.faiss_index import FaissIndex
from tests.conftest import REPO, make_image

TEXTS = [
    "", " ", "a", "two dogs", "Two DOGS on the Beach!", "a photo of a cat sitting on a wooden table",
    "  lots   of\twhite\nspace  ", "Ünïcödé café naïve résumé", "日本語のテキスト", "🐕🐶 emoji dogs 🌅",
    "e\u0301 combining accent", "<|endoftext|> literal special tokens <|startoftext|>", "don't it's we're",
    "numbers 1234567890 and 3.14", "punctuation!!! ??? ... ---", "x" * 500,
    " ".join(["sunset over the mountains"] * 40),  # far past 77 tokens
]


def images(n: int, offset: int = 0) -> list[Image.Image]:
    return [Image.open(io.BytesIO(make_image(offset + i, size=(64 + i % 7 * 9, 48 + i % 5 * 11)))).convert("RGB")
            for i in range(n)]


def centred_cosine(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    a, b = a - mean, b - mean
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="session")
def onnx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export(str(tiny_model_dir), out, int8_text=True)
    return out


@pytest.fixture(scope="session")
def onnx_encoder(onnx_dir) -> OnnxEncoder:
    return OnnxEncoder(onnx_dir, load=("text", "vision"), threads=1)


# -- export ----------------------------------------------------------------------------------
def test_export_writes_graphs_tokenizer_and_card(onnx_dir, tiny_model_dir):
    card = json.loads((onnx_dir / "clipsearch_model.json").read_text())
    assert card["model_id"] == resolve_model_id(str(tiny_model_dir)) == "clipsearch/tiny-test"
    assert card["family"] == "clip" and card["dim"] == 16 and card["suggested_min_score"] == 0.28
    assert card["random_weights"] is True  # carried over from the stand-in checkpoint's card
    assert OnnxEncoder(onnx_dir, load=()).random_weights is True
    onnx = card["onnx"]
    assert onnx["max_text_tokens"] == 77 and onnx["opset"] == 17 and onnx["text_inputs"] == ["input_ids", "attention_mask"]
    assert onnx["towers"] == {"text": "text.onnx", "vision": "vision.onnx"}
    assert onnx["quantization"] == {"text_int8": "text.int8.onnx"}
    for name in ("text.onnx", "vision.onnx", "text.int8.onnx", "tokenizer.json", "preprocessor_config.json",
                 "text.onnx.data", "vision.onnx.data", "text.int8.onnx.data"):
        f = onnx_dir / name
        assert f.stat().st_size > 0, name
        assert f.stat().st_mode & 0o444 == 0o444, f"{name} must be readable by the Lambda's user"
    # Weights live in the .data files (memory-mapped at load), not in the graphs.
    assert (onnx_dir / "text.onnx.data").stat().st_size > 2 * (onnx_dir / "text.onnx").stat().st_size
    # The index's model check sees the same identity whichever encoder or directory is used.
    assert resolve_model_id(str(onnx_dir)) == "clipsearch/tiny-test"


def test_graphs_have_dynamic_batch_and_sequence_axes(onnx_dir):
    import onnx

    text = onnx.load(str(onnx_dir / "text.onnx"), load_external_data=False).graph
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in text.input}
    assert shapes == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert [o.name for o in text.output] == ["text_embeds"]
    vision = onnx.load(str(onnx_dir / "vision.onnx"), load_external_data=False).graph
    assert [d.dim_param or d.dim_value for d in vision.input[0].type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    assert vision.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_export_cli(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "text-only"
    assert export_main([str(tiny_model_dir), str(out), "--towers", "text", "--model-id", "org/renamed"]) == 0
    assert "exported org/renamed (clip, 16-d, towers text)" in capsys.readouterr().out
    card = json.loads((out / "clipsearch_model.json").read_text())
    assert card["model_id"] == "org/renamed" and card["onnx"]["towers"] == {"text": "text.onnx"}
    assert not (out / "vision.onnx").exists() and not (out / "text.int8.onnx").exists()
    enc = OnnxEncoder(out, threads=1)
    assert enc.encode_text("a dog").shape == (1, 16)
    with pytest.raises(InvalidInput, match="no vision tower"):
        enc.encode_images(images(1))


@pytest.mark.parametrize("args, message", [
    (["--towers", "text,audio"], "towers must be"),
    (["--towers", ","], "towers must be"),
    (["--towers", "vision", "--int8-text"], "needs the text tower"),
])
def test_export_cli_rejects_bad_options(tiny_model_dir, tmp_path, capsys, args, message):
    assert export_main([str(tiny_model_dir), str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err


def test_export_cli_rejects_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    assert export_main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not a model checkpoint directory" in capsys.readouterr().err


# -- the rewritten text graph (clipsearch.text_graph) ------------------------------------------
@pytest.mark.parametrize("cfg", [
    {"eos_token_id": 2, "hidden_act": "quick_gelu"},  # pre-#24773 configs: pooled at the highest id
    {"eos_token_id": 99, "hidden_act": "gelu", "pad_token_id": 99},  # padded with end-of-text
    {"eos_token_id": 40, "hidden_act": "quick_gelu", "pad_token_id": None, "num_hidden_layers": 1},
])
def test_pooled_text_matches_transformers_forward(cfg):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from clipsearch.models.export import parity_batch
    from clipsearch.models.text_graph import PooledText

    torch.manual_seed(0)
    config = CLIPTextConfig(**{"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
                               "num_hidden_layers": 3, "max_position_embeddings": 20, "projection_dim": 8,
                               "bos_token_id": 0, **cfg})
    model = CLIPTextModelWithProjection(config).eval()
    ids, mask = parity_batch(config)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).text_embeds.numpy()
        got = PooledText(model)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The batch exercises what it claims: padding, the longest input, and distinct pooled positions.
    assert mask.min() == 0 and mask.sum(1).max() == ids.shape[1] and len(np.unique(want.round(4), axis=0)) == len(ids)


def test_export_writes_the_rewritten_text_graph(onnx_dir):
    import onnx

    assert json.loads((onnx_dir / "clipsearch_model.json").read_text())["onnx"]["text_graph"] == "pooled"
    ops = [n.op_type for n in onnx.load(str(onnx_dir / "text.onnx"), load_external_data=False).graph.node]
    assert ops.count("Softmax") == 2  # the tiny model's two layers, attention as transformers computes it


def test_export_falls_back_to_the_traced_module_when_the_rewrite_differs(tiny_model_dir, tiny_encoder, tmp_path,
                                                                        monkeypatch):
    from clipsearch.models.text_graph import PooledText

    forward = PooledText.forward
    monkeypatch.setattr(PooledText, "forward", lambda self, ids, mask: forward(self, ids, mask) * 1.01)
    with pytest.warns(UserWarning, match="does not match .* exporting the traced transformers module instead"):
        export(str(tiny_model_dir), tmp_path / "onnx", towers=("text",))
    assert json.loads((tmp_path / "onnx" / "clipsearch_model.json").read_text())["onnx"]["text_graph"] == "traced"
    ours, theirs = OnnxEncoder(tmp_path / "onnx", threads=1).encode_text(TEXTS), tiny_encoder.encode_text(TEXTS)
    assert np.abs(ours - theirs).max() < 1e-5


def test_export_falls_back_when_the_rewrite_cannot_be_built(tiny_model_dir, tiny_encoder, tmp_path, monkeypatch):
    from clipsearch.models.text_graph import PooledText

    def unbuildable(self, model):
        raise AttributeError("'CLIPTextTransformer' object has no attribute 'encoder'")

    monkeypatch.setattr(PooledText, "__init__", unbuildable)
    with pytest.warns(UserWarning, match="cannot be built: AttributeError"):
        export(str(tiny_model_dir), tmp_path / "onnx", towers=("text",))
    assert json.loads((tmp_path / "onnx" / "clipsearch_model.json").read_text())["onnx"]["text_graph"] == "traced"
    ours, theirs = OnnxEncoder(tmp_path / "onnx", threads=1).encode_text(TEXTS), tiny_encoder.encode_text(TEXTS)
    assert np.abs(ours - theirs).max() < 1e-5


def test_a_graph_onnxruntime_cannot_run_is_a_mismatch(tiny_model_dir, tmp_path):
    from clipsearch.models.export import _check_text_graph, exportable_tower

    text, cfg = exportable_tower(str(tiny_model_dir), "text")
    broken = tmp_path / "text.onnx"
    broken.write_bytes(b"not a protobuf")
    assert _check_text_graph(broken, text, cfg).startswith("onnxruntime cannot run it")


def test_export_fails_clearly_when_no_text_graph_matches(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import clipsearch.models.export as export_onnx

    monkeypatch.setattr(export_onnx, "_check_text_graph", lambda *a: "largest difference 3.00e-01 of the largest value")
    with pytest.warns(UserWarning):
        assert export_main([str(tiny_model_dir), str(tmp_path / "out"), "--towers", "text"]) == 2
    assert "the exported text tower does not match" in capsys.readouterr().err
    assert not (tmp_path / "out" / "clipsearch_model.json").exists()  # never a card over a wrong graph


# -- tokenisation ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hf_tokenizer(tiny_model_dir):
    """transformers' own tokenizer of the tiny checkpoint: the reference for ours."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _hf_ids(hf_tokenizer, texts, padding):
    batch = hf_tokenizer(texts, padding=padding, truncation=True, max_length=77, return_tensors="np")
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("text", TEXTS)
def test_one_text_tokenises_like_transformers(onnx_encoder, hf_tokenizer, text):
    ids, mask = onnx_encoder.tokenize([text])
    hf_ids, hf_mask = _hf_ids(hf_tokenizer, [text], padding=False)
    np.testing.assert_array_equal(ids, hf_ids)
    np.testing.assert_array_equal(mask, hf_mask)
    assert ids.shape[1] <= 77 and mask.all()  # one text: no padding
    assert ids[0, -1] == onnx_encoder.tokenizer.tokenizer.token_to_id("<|endoftext|>")  # end token kept


def test_a_batch_pads_like_transformers(onnx_encoder, hf_tokenizer):
    ids, mask = onnx_encoder.tokenize(TEXTS)
    hf_ids, hf_mask = _hf_ids(hf_tokenizer, TEXTS, padding=True)
    np.testing.assert_array_equal(ids, hf_ids)
    np.testing.assert_array_equal(mask, hf_mask)
    assert ids.shape == (len(TEXTS), 77)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=120), min_size=1, max_size=4))
def test_any_text_tokenises_like_transformers(onnx_encoder, hf_tokenizer, texts):
    ids, mask = onnx_encoder.tokenize(texts)
    hf_ids, hf_mask = _hf_ids(hf_tokenizer, texts, padding=len(texts) > 1)
    np.testing.assert_array_equal(ids, hf_ids)
    np.testing.assert_array_equal(mask, hf_mask)


# -- parity ----------------------------------------------------------------------------------
def test_text_vectors_match_torch(onnx_encoder, tiny_encoder):
    ours, theirs = onnx_encoder.encode_text(TEXTS), tiny_encoder.encode_text(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.abs(ours - theirs).max() < 1e-5
    assert (ours * theirs).sum(1).min() >= 0.9999
    assert centred_cosine(ours, theirs, theirs.mean(0)).min() >= 0.9999
    # One text unpadded equals the same text inside a padded batch.
    single = np.vstack([onnx_encoder.encode_text(t) for t in TEXTS])
    assert np.abs(single - ours).max() < 1e-5


def test_image_vectors_match_torch(onnx_encoder, tiny_encoder):
    imgs = images(12)
    ours, theirs = onnx_encoder.encode_images(imgs), tiny_encoder.encode_images(imgs)
    assert ours.dtype == np.float32 and ours.shape == (12, 16)
    assert np.abs(ours - theirs).max() < 1e-5
    assert (ours * theirs).sum(1).min() >= 0.9999
    assert centred_cosine(ours, theirs, theirs.mean(0)).min() >= 0.9999
    np.testing.assert_array_equal(onnx_encoder.preprocess(imgs), tiny_encoder.preprocess(imgs))


def _index(tmp_path: Path, name: str, vectors: np.ndarray) -> FaissIndex:
    index = FaissIndex.open(tmp_path / name, model_id="clipsearch/tiny-test", dim=vectors.shape[1])
    index.upsert(Document(f"img{i}", v, {"n": i}) for i, v in enumerate(vectors))
    return index


def test_an_index_from_one_encoder_answers_the_other(onnx_encoder, tiny_encoder, tmp_path):
    """Ingest with torch and serve with ONNX (the deployment), and the other way round."""
    imgs, queries = images(60), images(8, offset=1000)
    by_torch = _index(tmp_path, "torch", tiny_encoder.encode_images(imgs))
    by_onnx = _index(tmp_path, "onnx", onnx_encoder.encode_images(imgs))
    for encode_query in (lambda e: e.encode_text(TEXTS), lambda e: e.encode_images(queries)):
        q_torch, q_onnx = encode_query(tiny_encoder), encode_query(onnx_encoder)
        for a, b in zip(q_torch, q_onnx):
            expected = [h.id for h in by_torch.search(a, k=5)]
            assert [h.id for h in by_torch.search(b, k=5)] == expected
            assert [h.id for h in by_onnx.search(a, k=5)] == expected
            assert [h.id for h in by_onnx.search(b, k=5)] == expected


def test_int8_text_tower_is_close_and_reported(onnx_dir, onnx_encoder, tmp_path):
    int8 = load_encoder(ModelSettings(encoder="onnx", onnx_path=str(onnx_dir), onnx_text_int8=True, threads=1))
    assert isinstance(int8, OnnxEncoder) and int8._files["text"].name == "text.int8.onnx"
    fp32, q = onnx_encoder.encode_text(TEXTS), int8.encode_text(TEXTS)
    assert q.dtype == np.float32 and np.abs(q - fp32).max() > 0  # really another graph
    assert (q * fp32).sum(1).min() >= 0.999
    # Measured on this checkpoint: mean-centred cosine 0.9994 on average, 0.998 at worst.
    assert centred_cosine(q, fp32, fp32.mean(0)).mean() >= 0.99


# -- the encoder's own behaviour -------------------------------------------------------------
def test_text_load_leaves_the_image_tower_for_later_and_loads_it_once(onnx_dir, monkeypatch):
    enc = OnnxEncoder(onnx_dir, threads=1)
    assert enc.loaded_towers == ("text",)
    enc.encode_text(["a dog", "two cats"])
    assert enc.loaded_towers == ("text",)
    loads, real = [], enc._load
    monkeypatch.setattr(enc, "_load", lambda which: loads.append(which) or real(which))
    barrier = threading.Barrier(6)
    results: list[np.ndarray] = []

    def query():
        barrier.wait()
        results.append(enc.encode_images(images(2)))

    threads = [threading.Thread(target=query) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["vision"] and len(results) == 6 and enc.loaded_towers == ("text", "vision")
    assert all(np.array_equal(r, results[0]) for r in results)


def test_encoder_interface_and_empty_batches(onnx_encoder):
    from clipsearch.models import Encoder

    assert isinstance(onnx_encoder, Encoder)
    assert onnx_encoder.model_id == "clipsearch/tiny-test" and onnx_encoder.dim == 16
    assert onnx_encoder.encode_text([]).shape == (0, 16)
    assert onnx_encoder.encode_images([]).shape == (0, 16)
    assert onnx_encoder.encode_pixels(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 16)


@pytest.mark.parametrize("bad", [[None], ["ok", 3], [b"bytes"]])
def test_non_text_is_a_clear_error(onnx_encoder, bad):
    with pytest.raises(InvalidInput, match="strings"):
        onnx_encoder.encode_text(bad)


@pytest.mark.parametrize("shape", [(3, 224, 224), (1, 1, 224, 224), (1, 3, 200, 224), (2, 4, 224, 224)])
def test_pixels_of_the_wrong_shape_are_a_clear_error(onnx_encoder, shape):
    with pytest.raises(InvalidInput, match=r"\(N, 3, 224, 224\)"):
        onnx_encoder.encode_pixels(np.zeros(shape, np.float32))


def test_missing_or_incomplete_exports_say_how_to_fix(onnx_dir, tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="clipsearch.export_onnx"):
        OnnxEncoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not describe an ONNX export"):
        OnnxEncoder(tiny_model_dir)  # a torch checkpoint: its card lists no graphs
    for garbage in ("{not json", "[1, 2]", '{"format": "onnx"}', '{"format": "onnx", "towers": {}, "dim": 16}', "\xff",
                    '{"model_id": "m", "dim": 16, "onnx": []}', '{"model_id": "m", "dim": 16, "onnx": {"towers": 3}}',
                    '{"model_id": "m", "onnx": {"towers": {}}}'):
        broken = tmp_path / "broken"
        broken.mkdir(exist_ok=True)
        (broken / "clipsearch_model.json").write_text(garbage)
        with pytest.raises(FileNotFoundError, match="not describe an ONNX export"):
            OnnxEncoder(broken)
    (broken / "clipsearch_model.json").write_text('{"model_id": "m", "dim": 16, "family": "bert", "onnx": {"towers": {}}}')
    with pytest.raises(ValueError, match="unknown model family 'bert'"):
        OnnxEncoder(broken)
    text_only = tmp_path / "text-only"
    export(str(tiny_model_dir), text_only, towers=("text",))
    with pytest.raises(FileNotFoundError, match="--int8-text"):
        OnnxEncoder(text_only, text_int8=True)
    shutil.copytree(text_only, tmp_path / "damaged")
    (tmp_path / "damaged" / "text.onnx.data").unlink()
    with pytest.raises(ValueError, match="text.onnx.data.*re-run clipsearch.export_onnx"):
        OnnxEncoder(tmp_path / "damaged")
    (tmp_path / "damaged" / "text.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="cannot load .*text.onnx"):
        OnnxEncoder(tmp_path / "damaged")
    (text_only / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        OnnxEncoder(text_only)


def test_settings_read_onnx_text_int8():
    assert ModelSettings.from_env({}).onnx_text_int8 is False
    assert ModelSettings.from_env({"ONNX_TEXT_INT8": "true"}).onnx_text_int8 is True
    with pytest.raises(ValueError, match="ONNX_TEXT_INT8"):
        ModelSettings.from_env({"ONNX_TEXT_INT8": "maybe"})


# -- no torch on this path -------------------------------------------------------------------
NO_TORCH_SCRIPT = """
import io, json, sys
import numpy as np
from clipsearch.config import Settings
from clipsearch.models import load_encoder
from clipsearch.images import decode_image
from clipsearch.index import Document, open_index
settings = Settings.from_env()
enc = load_encoder(settings.model)
text = enc.encode_text("two dogs on the beach")
data = open(sys.argv[1], "rb").read()
image = enc.encode_images([decode_image(data)])
index = open_index(settings.index, settings.opensearch, model_id=enc.model_id, dim=enc.dim)
index.upsert([Document("a", image[0], {}), Document("b", text[0], {})])
hits = index.search(text[0], k=2)
print(json.dumps({"type": type(enc).__name__, "hits": [h.id for h in hits], "towers": enc.loaded_towers,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))}))
"""


def test_onnx_path_never_imports_torch_or_transformers(onnx_dir, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_image(7))
    env = dict(os.environ, ENCODER="onnx", ONNX_PATH=str(onnx_dir), INDEX_PATH=str(tmp_path / "index"),
               TORCH_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(photo)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["type"] == "OnnxEncoder" and report["hits"][0] == "b"
    assert report["towers"] == ["text", "vision"]
    assert report["heavy"] == []


# -- the ViT-B/32 architecture ---------------------------------------------------------------
@pytest.mark.slow
def test_vit_b32_parity(tmp_path):
    """The deployed architecture: 12-layer towers, 512-d; random weights, so compare like DESIGN says."""
    from bench.common import vit_b32_dir
    from clipsearch.models.torch_encoder import TorchEncoder

    source = vit_b32_dir()
    export(str(source), tmp_path / "onnx", int8_text=True)
    assert json.loads((tmp_path / "onnx" / "clipsearch_model.json").read_text())["onnx"]["text_graph"] == "pooled"
    torch_enc = TorchEncoder(str(source), threads=2, load=("text", "vision"))
    onnx_enc = OnnxEncoder(tmp_path / "onnx", load=("text", "vision"), threads=2)
    int8 = OnnxEncoder(tmp_path / "onnx", threads=2, text_int8=True)
    assert onnx_enc.model_id == torch_enc.model_id and onnx_enc.dim == torch_enc.dim == 512
    imgs, texts = images(24), TEXTS + [f"a photo of {w} number {i}" for i, w in enumerate(["dogs", "cats"] * 8)]
    for ours, theirs in ((onnx_enc.encode_text(texts), torch_enc.encode_text(texts)),
                         (onnx_enc.encode_images(imgs), torch_enc.encode_images(imgs))):
        assert np.abs(ours - theirs).max() < 1e-4
        assert (ours * theirs).sum(1).min() >= 0.9999
        assert centred_cosine(ours, theirs, theirs.mean(0)).min() >= 0.999
    index = _index(tmp_path, "torch", torch_enc.encode_images(imgs))
    for a, b in zip(torch_enc.encode_text(texts), onnx_enc.encode_text(texts)):
        assert [h.id for h in index.search(a, k=5)] == [h.id for h in index.search(b, k=5)]
    fp32, q = onnx_enc.encode_text(texts), int8.encode_text(texts)
    assert (q * fp32).sum(1).min() >= 0.999
    centred = centred_cosine(q, fp32, fp32.mean(0))
    print(f"int8 text: max abs diff {np.abs(q - fp32).max():.4f}, mean-centred cosine mean {centred.mean():.4f} "
          f"min {centred.min():.4f}")
    assert centred.mean() >= 0.98  # measured 0.996 (per-channel int8); 0.98 catches a regression


# -- the ONNX image's dependencies -----------------------------------------------------------
def test_onnx_requirements_are_the_runtime_without_torch():
    from bench.depsize import closure, requirement_names

    torch_side = set(requirement_names(REPO / "requirements.txt"))
    onnx_side = set(requirement_names(REPO / "requirements-onnx.txt"))
    torch_only = {"torch", "transformers", "safetensors", "sentencepiece"}
    assert torch_only <= torch_side
    assert onnx_side == (torch_side - torch_only) | {"onnxruntime"}
    # Nothing pulls torch or transformers back in transitively (as installed here).
    assert not {"torch", "transformers", "sentencepiece"} & set(closure(REPO / "requirements-onnx.txt"))
    assert "torch" in closure(REPO / "requirements.txt")


# -- the server with ENCODER=onnx ------------------------------------------------------------
HANDLER_SCRIPT = """
import json, sys
import server.handler as h
event = {"httpMethod": "POST", "path": "/search", "headers": {"content-type": "application/json"},
         "body": json.dumps({"query": "two dogs", "input_type": "text", "k": 3}), "isBase64Encoded": False}
reply = h.handler(event, None)
print(json.dumps({"status": reply["statusCode"], "body": json.loads(reply["body"]),
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))}))
"""


@pytest.fixture(scope="session")
def torch_built_index(tiny_encoder, tmp_path_factory) -> Path:
    """An embedded index ingested with the torch encoder, as the deployment's ingest job does."""
    path = tmp_path_factory.mktemp("index")
    index = FaissIndex.open(path, model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    index.upsert(Document(f"img{i}", v, {"width": 64, "height": 48, "description": f"image {i}"})
                 for i, v in enumerate(tiny_encoder.encode_images(images(40))))
    index.save()
    return path


def test_handler_imports_and_answers_with_onnx_without_torch(onnx_dir, torch_built_index, tiny_encoder):
    pytest.importorskip("server.handler", reason="the server lands on another branch")
    env = dict(os.environ, ENCODER="onnx", ONNX_PATH=str(onnx_dir), INDEX_PATH=str(torch_built_index),
               BACKEND="faiss", TORCH_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", HANDLER_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["status"] == 200, report["body"]
    expected = [h.id for h in FaissIndex.load(torch_built_index).search(tiny_encoder.encode_text("two dogs")[0], k=3)]
    assert [r["id"] for r in report["body"]["results"]] == expected
    assert report["heavy"] == []


@pytest.mark.e2e
def test_emulator_end_to_end_with_the_onnx_encoder(onnx_dir, torch_built_index, tiny_encoder, tmp_path):
    import base64

    import requests

    from clipsearch.images import decode_image
    from server.local import LocalLambda

    index = FaissIndex.load(torch_built_index)
    env = {"ENCODER": "onnx", "ONNX_PATH": str(onnx_dir), "INDEX_PATH": str(torch_built_index), "BACKEND": "faiss",
           "TORCH_THREADS": "1"}
    with LocalLambda(env=env, log=tmp_path / "stack.log") as stack:
        assert stack.ready_status == 200, (tmp_path / "stack.log").read_text()[-3000:]
        for text in ["two dogs", "a red car on the street at night", "Ünïcödé 🐕"]:
            r = requests.post(stack.search_url, json={"query": text, "input_type": "text", "k": 5}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "clipsearch/tiny-test"
            expected = [h.id for h in index.search(tiny_encoder.encode_text(text)[0], k=5)]
            assert [x["id"] for x in body["results"]] == expected
        data = make_image(4242, size=(90, 70))
        r = requests.post(stack.search_url, timeout=60, json={
            "query": base64.b64encode(data).decode(), "input_type": "image", "k": 5})
        assert r.status_code == 200, r.text
        expected = [h.id for h in index.search(tiny_encoder.encode_images([decode_image(data)])[0], k=5)]
        assert [x["id"] for x in r.json()["results"]] == expected
        r = requests.post(stack.search_url, json={"query": "not base64 !!", "input_type": "image"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["message"]
        runtime = stack.runtime_process()
        assert runtime is not None
        assert not any("libtorch" in m.path for m in runtime.memory_maps())  # no torch in the Lambda process


# -- the Docker image (no Docker engine here: what the Dockerfile says, and its runtime's deps) --
def dockerfile_stages(text: str) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]], list[tuple[str, str]]]:
    """Global ARG defaults, each named stage's instructions, and the final (unnamed) stage's."""
    joined = re.sub(r"\\\n\s*", " ", text)
    ins = [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)
           if not m.group(0).lstrip().startswith("#")]
    first_from = next(i for i, (op, _) in enumerate(ins) if op == "FROM")
    global_args = dict(arg.split("=", 1) for op, arg in ins[:first_from] if op == "ARG" and "=" in arg)
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, arg in ins[first_from:]:
        if op == "FROM":
            parts = arg.split()
            current = [(op, parts[0])]
            stages[parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else "<final>"] = current
        else:
            current.append((op, arg))
    return global_args, stages, stages.pop("<final>")


def image_chain(encoder: str) -> list[list[tuple[str, str]]]:
    """The instructions of every stage the image inherits from (FROM chain), for one ENCODER."""
    from scripts.locks import image_platform

    args, stages, final = dockerfile_stages((REPO / "Dockerfile").read_text())
    chain, base = [final], final[0][1].replace("${ENCODER}", encoder)
    while base in stages:
        chain.append(stages[base])
        base = stages[base][0][1]
    assert base == image_platform().base_image
    return chain


def test_dockerfile_builds_onnx_by_default_without_torch():
    args, stages, _ = dockerfile_stages((REPO / "Dockerfile").read_text())
    assert args["ENCODER"] == "onnx"
    onnx = [ins for stage in image_chain("onnx") for ins in stage]
    text = " ".join(arg for _, arg in onnx)
    assert "-r /tmp/locks/onnx.txt" in text and "torch" not in text and "requirements" not in text
    assert ("COPY", "--from=onnx-export /opt/model-onnx /opt/model-onnx") in onnx
    env = " ".join(arg for op, arg in onnx if op == "ENV")
    assert "ENCODER=onnx" in env and "ONNX_PATH=/opt/model-onnx" in env and "HF_HUB_OFFLINE=1" in env
    # The export names the model id the index was built with, and runs where torch is.
    export_stage = " ".join(arg for stage in [stages["onnx-export"], stages["weights"], stages["torch-base"]]
                            for _, arg in stage)
    assert "python -m clipsearch.export_onnx /opt/model /opt/model-onnx --model-id \"${MODEL_ID}\"" in export_stage
    assert "--index-url https://download.pytorch.org/whl/cpu -r /tmp/locks/torch-cpu.txt" in export_stage
    assert "-r /tmp/locks/export.txt" in export_stage


def test_dockerfile_still_builds_the_torch_variant():
    torch_side = [ins for stage in image_chain("torch") for ins in stage]
    text = " ".join(arg for _, arg in torch_side)
    assert "-r /tmp/locks/torch-cpu.txt" in text and "-r /tmp/locks/torch.txt" in text and "onnx" not in text
    env = " ".join(arg for op, arg in torch_side if op == "ENV")
    assert "ENCODER=torch" in env and "MODEL_PATH=/opt/model" in env
    assert [arg for op, arg in torch_side if op == "CMD"] == ['["server.handler.handler"]']
    assert "!locks/" in (REPO / ".dockerignore").read_text().split()


@pytest.mark.e2e
@pytest.mark.slow
def test_handler_runs_under_the_emulator_on_the_image_python_with_only_the_onnx_lock(
        tmp_path, tmp_path_factory, onnx_dir, torch_built_index, tiny_encoder):
    """The ONNX image's site-packages, as near as this machine gets to it: locks/onnx.txt's wheels
    for the image's platform (downloaded from PyPI, hashes checked), installed by the image's
    CPython into a folder that is its only site-packages (it runs with -S: not even its own).
    The real emulator runs the handler there: an import of anything outside the lock, or a wheel
    that does not load on that Python, fails the invocations."""
    import base64

    from image_support import image_python, install_site, lock_wheels, session_dir, tail
    from scripts.locks import image_platform
    from server.local import LocalLambda

    platform = image_platform()
    python = image_python(platform.python)
    if python is None:
        pytest.skip(f"CPython {platform.python}, the image's Python, is not installed here (looked under "
                    f"~/.pyenv/versions and on PATH): the handler did not run on the ONNX lock")
    wheels = session_dir(tmp_path_factory, "image-wheels")
    got = lock_wheels(platform, "locks/onnx.txt", wheels)
    assert got.ok, tail(got.proc)
    site = session_dir(tmp_path_factory, f"site-onnx-{platform.python}")
    installed = install_site(python, "locks/onnx.txt", wheels, site)
    assert installed.returncode == 0, tail(installed)
    top = {p.name for p in site.iterdir()}
    assert {"onnxruntime", "tokenizers", "awslambdaric", "pydantic", "faiss", "PIL"} <= top
    assert not {"torch", "transformers", "safetensors", "psutil", "pytest"} & top
    env = {"ENCODER": "onnx", "ONNX_PATH": str(onnx_dir), "INDEX_PATH": str(torch_built_index), "TORCH_THREADS": "1",
           "PYTHONPATH": str(site)}
    queries = [{"query": "two dogs", "input_type": "text"}, {"query": "img3", "input_type": "id"},
               {"query": base64.b64encode(make_image(5, fmt="PNG")).decode(), "input_type": "image"},
               {"query": "", "input_type": "text"}]
    with LocalLambda(env=env, log=tmp_path / "log", python=[str(python), "-S"]) as stack:
        assert stack.ready_status == 200, (tmp_path / "log").read_text()[-3000:]
        replies = [stack.invoke(q) for q in queries]
        runtime = stack.runtime_process()
        cmdline, maps = runtime.cmdline(), [m.path for m in runtime.memory_maps()]
    assert [r["statusCode"] for r in replies] == [200, 200, 200, 400], (tmp_path / "log").read_text()[-3000:]
    expected = [h.id for h in FaissIndex.load(torch_built_index).search(tiny_encoder.encode_text("two dogs")[0], k=10)]
    assert [r["id"] for r in json.loads(replies[0]["body"])["results"]] == expected
    assert cmdline[:2] == [str(python), "-S"]
    # Every extension module the function loaded came from the lock's site (or the interpreter).
    loaded = [m for m in maps if m.endswith(".so") or ".so." in m]
    assert any(m.startswith(str(site)) and "onnxruntime" in m for m in loaded)
    venv = (sys.prefix, os.path.realpath(sys.prefix))  # this test's own packages
    assert not [m for m in loaded if "site-packages" in m or m.startswith(venv)], loaded


def test_extreme_aspect_ratio_images_encode_in_bounded_memory(onnx_dir):
    """The ONNX image path preprocesses 1x15000 and 15000x1 images in bounded memory too."""
    from peak_memory import preprocess_peak_growth

    growth = preprocess_peak_growth("onnx", onnx_dir)
    assert max(growth.values()) < 64 * 2**20, growth
