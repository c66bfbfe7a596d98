"""Every family (CLIP, SigLIP, SigLIP 2) through both encoders, against transformers' own classes.

The tiny stand-ins (conftest `stand_in`) have random weights, so encoders are compared as
DESIGN.md says: maximum absolute difference, cosine after subtracting the collection's mean, and
top-k agreement over an indexed collection. CLIP's own, deeper tests: test_encoder.py, test_onnx.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image

from clipsearch.index import Document
from clipsearch.index.faiss_index import FaissIndex
from clipsearch.models import UnsupportedModel, family_of
from clipsearch.models.card import read_card, siglip_min_score
from clipsearch.models.onnx_encoder import OnnxEncoder
from clipsearch.models.preprocess import PreprocessConfig, to_pixels
from clipsearch.models.tokenizer import canonicalize
from clipsearch.models.torch_encoder import TorchEncoder
from tests.conftest import REPO, make_image

FAMILIES = ["clip", "siglip", "siglip2"]
SIGLIPS = ["siglip", "siglip2"]
TEXTS = ["", "a", "two dogs", "Two DOGS on the Beach!", "a photo of a cat sitting on a wooden table",
         "  lots   of\twhite\nspace  ", "Ünïcödé café", "日本語のテキスト", "二匹の犬", "كلب على الشاطئ", "собака",
         "🐕🐶 emoji", "<eos> </s> <pad> literal specials", "don't it's", "▁underscore_ and ▁", "x" * 300,
         " ".join(["sunset over the mountains"] * 40)]


def images(n: int, offset: int = 0) -> list[Image.Image]:
    return [Image.open(io.BytesIO(make_image(offset + i, size=(64 + i % 7 * 9, 48 + i % 5 * 11)))).convert("RGB")
            for i in range(n)]


def centred_cosine(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    a, b = a - mean, b - mean
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def torch_encoders(stand_in):
    cache: dict[str, TorchEncoder] = {}

    def get(family: str) -> TorchEncoder:
        if family not in cache:
            cache[family] = TorchEncoder(str(stand_in(family)), threads=1, load=("text", "vision"))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def hf_tokenizers(stand_in):
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = AutoTokenizer.from_pretrained(str(stand_in(family)))
        return cache[family]

    return get


# -- which family ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_the_checkpoint_config_picks_the_family(stand_in, family):
    assert family_of(str(stand_in(family))).name == family
    card = read_card(stand_in(family))
    assert card.family == family and card.random_weights is True and card.dim


@pytest.mark.parametrize("config, tokenizer_class, message", [
    ({"model_type": "siglip2"}, None, "NaFlex"),
    ({"model_type": "bert"}, None, "model_type 'bert'"),
    ({}, None, "model_type None"),
    ({"model_type": "siglip"}, "GemmaTokenizerFast", None),  # SigLIP 2: the same model type, Gemma's tokenizer
])
def test_families_refuse_what_they_cannot_read(tmp_path, config, tokenizer_class, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tokenizer_class:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    if message is None:
        assert family_of(str(tmp_path)).name == "siglip2"
        return
    with pytest.raises(UnsupportedModel, match=message):
        family_of(str(tmp_path))


def test_a_directory_without_config_is_refused_clearly(tmp_path):
    with pytest.raises(UnsupportedModel, match="no readable config.json"):
        family_of(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedModel, match="no readable config.json"):
        family_of(str(tmp_path))


# -- tokenisation --------------------------------------------------------------------------------
def _reference_ids(hf, family: str, texts: list[str]) -> np.ndarray:
    """transformers' tokenizer called as each model card says (padding="max_length", 64) on text
    cleaned first, as open_clip's tokenizer wrapper does for both families (HFTokenizer, clean
    "canonicalize"): SiglipTokenizer would clean it again (a no-op) but match special-token
    literals such as "</s>" before cleaning, and Gemma's tokenizer does not clean at all."""
    prepared = [canonicalize(t) for t in texts]
    return hf(prepared, padding="max_length", max_length=64, truncation=True, return_tensors="np")["input_ids"]


@pytest.mark.parametrize("family", SIGLIPS)
def test_siglip_tokenises_like_transformers(torch_encoders, hf_tokenizers, family):
    ids, mask = torch_encoders(family).tokenizer(TEXTS)
    assert ids.shape == (len(TEXTS), 64)  # padded to the trained length, even one text
    np.testing.assert_array_equal(ids, _reference_ids(hf_tokenizers(family), family, TEXTS))
    eos = 1  # "</s>" (T5's layout) and "<eos>" (Gemma's) are both id 1
    lengths = mask.sum(1)
    assert all(row[n - 1] == eos for row, n in zip(ids, lengths))  # the end token kept, also when truncated
    single, _ = torch_encoders(family).tokenizer(["two dogs"])
    assert single.shape == (1, 64)


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=st.sampled_from(list("abcXYZ dogs!?.,'_▁\t\nüé日本犬كلبя🐕<>/")), max_size=90),
                      min_size=1, max_size=3),
       family=st.sampled_from(SIGLIPS))
def test_any_text_tokenises_like_transformers(torch_encoders, hf_tokenizers, texts, family):
    ids, _ = torch_encoders(family).tokenizer(texts)
    np.testing.assert_array_equal(ids, _reference_ids(hf_tokenizers(family), family, texts))


def test_onnx_and_torch_tokenise_alike(torch_encoders, stand_in_onnx):
    """SigLIP ships only spiece.model: the export's converted tokenizer.json must give the same ids."""
    for family in FAMILIES:
        ours = OnnxEncoder(stand_in_onnx(family), threads=1).tokenize(TEXTS)
        theirs = torch_encoders(family).tokenizer(TEXTS)
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
    assert (stand_in_onnx("siglip") / "tokenizer.json").is_file()


def test_siglip2_tokenises_other_scripts_without_unknown_tokens(torch_encoders, stand_in_onnx):
    """Gemma's BPE falls back to bytes: Japanese and Arabic become pieces or <0xNN>, never <unk>."""
    enc = OnnxEncoder(stand_in_onnx("siglip2"), threads=1)
    tok = enc.tokenizer.tokenizer
    unk = tok.token_to_id("<unk>")
    queries = ["日本語のテキスト", "二匹の犬", "كلب على الشاطئ", "صورة قطة", "東京タワーの夜景"]
    ids, mask = enc.tokenize(queries)
    for row, n in zip(ids, mask.sum(1)):
        pieces = [tok.id_to_token(int(i)) for i in row[: n - 1]]
        assert unk not in row[:n] and len(pieces) >= 2, pieces
        assert any(p.startswith("<0x") for p in pieces) or all(len(p) > 1 or ord(p) > 127 for p in pieces)
    assert tok.id_to_token(int(ids[1][0])) != tok.id_to_token(int(ids[2][0]))
    assert len({tuple(r) for r in ids}) == len(queries)  # no two collapse to the same ids
    vectors = enc.encode_text(queries)
    assert len({v.round(6).tobytes() for v in vectors}) == len(queries)
    np.testing.assert_allclose(vectors, torch_encoders("siglip2").encode_text(queries), atol=1e-5)
    # SigLIP (English only, SentencePiece without byte fallback) does collapse them: the contrast.
    siglip = torch_encoders("siglip").tokenizer.tokenizer
    assert siglip.token_to_id("<unk>") in siglip.encode(canonicalize("日本語のテキスト")).ids


# -- pixels --------------------------------------------------------------------------------------
def test_siglip_preprocessing_matches_transformers(stand_in):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    for family in SIGLIPS:
        hf = SiglipImageProcessorPil.from_pretrained(str(stand_in(family)))
        cfg = PreprocessConfig.from_pretrained(stand_in(family), family_of(str(stand_in(family))))
        assert cfg.mode == "resize" and cfg.mean == (0.5, 0.5, 0.5)
        for i, size in enumerate([(300, 451), (451, 300), (224, 224), (50, 60), (1001, 99), (1, 500)]):
            img = Image.open(io.BytesIO(make_image(i, size=size))).convert("RGB")
            ref = hf(images=[img], return_tensors="np")["pixel_values"][0]
            np.testing.assert_allclose(to_pixels(img, cfg), ref, atol=1e-5)


def test_preprocessing_defaults_follow_the_family(tmp_path):
    from clipsearch.models.families import CLIP, SIGLIP2

    assert PreprocessConfig.from_pretrained(tmp_path, SIGLIP2).mode == "resize"  # no preprocessor_config.json
    assert PreprocessConfig.from_pretrained(tmp_path, CLIP).mode == "crop"


# -- the torch encoder against transformers' full model -------------------------------------------
@pytest.mark.parametrize("family", SIGLIPS)
def test_torch_towers_equal_the_full_siglip_model(torch_encoders, stand_in, family):
    import torch
    from transformers import SiglipModel

    enc = torch_encoders(family)
    full = SiglipModel.from_pretrained(str(stand_in(family))).eval()
    texts = ["two dogs on a beach", "a cat", "日本語"]
    ids, _ = enc.tokenizer(texts)
    imgs = images(3)
    with torch.no_grad():
        # As the model card's snippet runs it, minus the attention mask SigLIP was trained without.
        ref_t = full.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
        ref_i = full.get_image_features(pixel_values=torch.from_numpy(enc.preprocess(imgs))).pooler_output
    ref_t = (ref_t / ref_t.norm(dim=-1, keepdim=True)).numpy()
    ref_i = (ref_i / ref_i.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(enc.encode_text(texts), ref_t, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(imgs), ref_i, atol=1e-5)
    assert enc.dim == 32 and enc.family == family and enc.random_weights


# -- the rewritten text graph --------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    {"num_hidden_layers": 3, "hidden_act": "gelu_pytorch_tanh"},
    {"num_hidden_layers": 1, "hidden_act": "gelu", "pad_token_id": 0},
])
def test_pooled_text_matches_siglip_forward(cfg):
    import torch
    from transformers import SiglipTextConfig, SiglipTextModel

    from clipsearch.models.export import parity_batch
    from clipsearch.models.families import SIGLIP
    from clipsearch.models.text_graph import PooledText

    torch.manual_seed(0)
    config = SiglipTextConfig(**{"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
                                 "max_position_embeddings": 16, "projection_size": 24, "pad_token_id": 1, **cfg})
    model = SiglipTextModel(config).eval()
    ids, _ = parity_batch(config, family=SIGLIP)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
        got = PooledText(model)(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (len(ids), 24) and len(np.unique(want.round(4), axis=0)) == len(ids)


# -- ONNX against torch, per family --------------------------------------------------------------
def _index(tmp_path: Path, name: str, model_id: str, vectors: np.ndarray) -> FaissIndex:
    index = FaissIndex.open(tmp_path / name, model_id=model_id, dim=vectors.shape[1])
    index.upsert(Document(f"img{i}", v, {"n": i}) for i, v in enumerate(vectors))
    return index


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_torch(torch_encoders, stand_in_onnx, family, tmp_path):
    torch_enc = torch_encoders(family)
    onnx_enc = OnnxEncoder(stand_in_onnx(family), load=("text", "vision"), threads=1)
    card = json.loads((stand_in_onnx(family) / "clipsearch_model.json").read_text())
    assert card["family"] == family and card["random_weights"] is True and card["onnx"]["text_graph"] == "pooled"
    assert card["onnx"]["text_inputs"] == (["input_ids", "attention_mask"] if family == "clip" else ["input_ids"])
    assert (onnx_enc.model_id, onnx_enc.dim, onnx_enc.family) == (torch_enc.model_id, torch_enc.dim, family)
    imgs, queries = images(40), images(6, offset=500)
    for ours, theirs in ((onnx_enc.encode_text(TEXTS), torch_enc.encode_text(TEXTS)),
                         (onnx_enc.encode_images(imgs), torch_enc.encode_images(imgs))):
        assert ours.dtype == np.float32
        assert np.abs(ours - theirs).max() < 1e-5
        assert centred_cosine(ours, theirs, theirs.mean(0)).min() >= 0.9999
    single = np.vstack([onnx_enc.encode_text(t) for t in TEXTS])  # one text equals itself in a batch
    assert np.abs(single - onnx_enc.encode_text(TEXTS)).max() < 1e-5
    index = _index(tmp_path, family, torch_enc.model_id, torch_enc.encode_images(imgs))
    for a, b in zip(np.vstack([torch_enc.encode_text(TEXTS), torch_enc.encode_images(queries)]),
                    np.vstack([onnx_enc.encode_text(TEXTS), onnx_enc.encode_images(queries)])):
        assert [h.id for h in index.search(a, k=10)] == [h.id for h in index.search(b, k=10)]


@pytest.mark.parametrize("family", SIGLIPS)
def test_int8_text_tower_for_siglip(stand_in_onnx, family):
    fp32 = OnnxEncoder(stand_in_onnx(family), threads=1).encode_text(TEXTS)
    q = OnnxEncoder(stand_in_onnx(family), threads=1, text_int8=True).encode_text(TEXTS)
    assert np.abs(q - fp32).max() > 0 and (q * fp32).sum(1).min() >= 0.99


def test_siglip_export_falls_back_to_the_traced_module(stand_in, torch_encoders, tmp_path, monkeypatch):
    from clipsearch.models.export import export
    from clipsearch.models.text_graph import PooledText

    forward = PooledText.forward
    monkeypatch.setattr(PooledText, "forward", lambda self, *a: forward(self, *a) * 1.01)
    with pytest.warns(UserWarning, match="exporting the traced transformers module instead"):
        export(str(stand_in("siglip2")), tmp_path / "onnx", towers=("text",))
    assert read_card(tmp_path / "onnx").onnx["text_graph"] == "traced"
    ours = OnnxEncoder(tmp_path / "onnx", threads=1).encode_text(TEXTS)
    assert np.abs(ours - torch_encoders("siglip2").encode_text(TEXTS)).max() < 1e-5


# -- cards and scores ------------------------------------------------------------------------------
def test_suggested_min_score_per_family(torch_encoders):
    import math

    assert torch_encoders("clip").card.suggested_min_score == 0.28  # LAION's filter for ViT-B/32
    # SigLIP's even-odds cosine from the checkpoint's own scale and bias (the stand-in: log 10, -10).
    assert siglip_min_score(math.log(10), -10.0) == 1.0
    assert siglip_min_score(math.log(117.0), -12.9) == pytest.approx(0.1103, abs=1e-4)
    assert siglip_min_score(float("inf"), 0.0) is None
    for family in SIGLIPS:
        assert torch_encoders(family).card.suggested_min_score == 1.0


NO_TORCH = """
import json, sys
from clipsearch.config import ModelSettings
from clipsearch.models import load_encoder
enc = load_encoder(ModelSettings.from_env(), load=("text", "vision"))
from PIL import Image
v = enc.encode_text(["二匹の犬", "كلب"]); w = enc.encode_images([Image.new("RGB", (40, 90), (200, 10, 10))])
print(json.dumps({"family": enc.family, "shape": list(v.shape), "image": list(w.shape),
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))}))
"""


@pytest.mark.parametrize("family", SIGLIPS)
def test_onnx_path_never_imports_torch_for_siglip(stand_in_onnx, family):
    env = dict(os.environ, ENCODER="onnx", ONNX_PATH=str(stand_in_onnx(family)), TORCH_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", NO_TORCH], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"family": family, "shape": [2, 32], "image": [1, 32], "heavy": []}


# -- memory: a 256k-entry vocabulary costs only the rows a query reads -----------------------------
PEAK_RSS = """
import json, sys
from clipsearch.models.onnx_encoder import OnnxEncoder
enc = OnnxEncoder(sys.argv[1], threads=1)
enc.encode_text(["two dogs on the beach", "二匹の犬", "كلب"])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({k: int(status[k].split()[0]) // 1024 for k in ("VmHWM", "RssFile", "RssAnon")}))
"""


@pytest.mark.slow
def test_a_text_query_pages_in_only_the_embedding_rows_it_reads(tmp_path, monkeypatch):
    """SigLIP 2's 256,000-entry table, here 256,000 x 256 float32 = 250 MB beside tiny layers: ONNX
    Runtime memory-maps it from text.onnx.data and a query touches a few rows, so the process stays
    far below the table's size (it would hold all of it if the export embedded the weights or the
    runtime copied them)."""
    from clipsearch.models import modelgen
    from clipsearch.models.export import export
    from clipsearch.models.families import SIGLIP2

    tower = dict(hidden_size=256, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1,
                 layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
    preset = modelgen.Preset(SIGLIP2, dict(tower, max_position_embeddings=64), dict(tower, image_size=32, patch_size=16),
                             text_vocab=256_000)
    monkeypatch.setitem(modelgen.PRESETS, "siglip2-wide-vocab", preset)
    source = modelgen.build_stand_in(tmp_path / "model", "siglip2-wide-vocab")
    export(str(source), tmp_path / "onnx", towers=("text",))
    table_mb = 256_000 * 256 * 4 / 2**20
    assert (tmp_path / "onnx" / "text.onnx.data").stat().st_size / 2**20 > table_mb
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / "onnx")], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"table {table_mb:.0f} MB; process peak {rss}")
    assert rss["VmHWM"] < table_mb * 0.6 and rss["RssFile"] < table_mb / 4


def test_modelgen_command_line(tmp_path, capsys):
    """`python -m clipsearch.modelgen DEST PRESET` as users and checks call it."""
    from clipsearch.models.modelgen import PRESETS, main

    assert main([]) == 2 and "siglip2-b16" in capsys.readouterr().out  # the presets, listed
    assert main([str(tmp_path / "x"), "siglip3"]) == 2 and "unknown preset 'siglip3'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    out = subprocess.run([sys.executable, "-m", "clipsearch.modelgen", str(tmp_path / "s2"), "siglip2-tiny"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert read_card(tmp_path / "s2").family == "siglip2" and family_of(str(tmp_path / "s2")).name == "siglip2"
    assert {p.family.name for p in PRESETS.values()} == set(FAMILIES)


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_siglip_plain_resize_of_extreme_images_is_bounded(stand_in, stand_in_onnx, kind):
    """SigLIP resizes the whole image (no crop): 1x15000 and 15000x1 JPEGs to 224 x 224 must
    still take megabytes (PIL's two passes hold at most 224 x 15000), not gigabytes."""
    from peak_memory import preprocess_peak_growth

    growth = preprocess_peak_growth(kind, stand_in("siglip2") if kind == "torch" else stand_in_onnx("siglip2"))
    assert max(growth.values()) < 64 * 2**20, growth
