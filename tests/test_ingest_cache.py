"""The embedding cache (ingest's checkpoint) and the batch normalisation of decoded crops."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import IngestError
from clipsearch.images import decode_image
from clipsearch.models.preprocess import PreprocessConfig, preprocess_images
from conftest import make_image
from ingest.cache import LOG, EmbeddingCache, model_slug
from ingest.decode import DecodeLimits, decode_chunk, normalize_batch


def vectors(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_torn_tail_is_cut_and_appends_go_on(tmp_path):
    v = vectors(5)
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        cache.append(["a", "b"], v[:2], [{"width": 1}, {}])
        cache.append(["c"], v[2:3], [{}])
        log = cache.dir / LOG
    whole = log.stat().st_size
    with open(log, "ab") as fh:  # a writer killed in the middle of its next record
        fh.write(b"CSE1" + b"\x10\x00\x00\x00" + b"\x01\x00" )
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert cache.truncated_bytes == 10 and log.stat().st_size == whole
        assert len(cache) == 3 and "c" in cache and "d" not in cache
        vec, extras = cache.get("a")
        assert (vec == v[0]).all() and extras == {"width": 1}
        cache.append(["d", "a"], v[3:5], [{}, {}])  # a re-encoded id: the last record wins
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert len(cache) == 4 and (cache.get("a")[0] == v[4]).all() and (cache.get("d")[0] == v[3]).all()


def test_corrupt_record_stops_the_log_there(tmp_path):
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        cache.append(["a"], vectors(1), [{}])
        cache.append(["b"], vectors(1, seed=1), [{}])
        log = cache.dir / LOG
    data = bytearray(log.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the last vector: its crc no longer matches
    log.write_bytes(bytes(data))
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert len(cache) == 1 and "a" in cache and "b" not in cache


def test_one_writer_per_model_and_models_kept_apart(tmp_path):
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8):
        with pytest.raises(IngestError, match="another ingest is using"):
            EmbeddingCache.open(tmp_path, model_id="m/1", dim=8)
        with EmbeddingCache.open(tmp_path, model_id="m/2", dim=8) as other:  # another model: its own directory
            assert len(other) == 0
    assert model_slug("a/b") != model_slug("a_b")
    (tmp_path / model_slug("m/1") / "model.json").write_text('{"model_id": "m/1", "dim": 4}')
    with pytest.raises(IngestError, match="holds"):
        EmbeddingCache.open(tmp_path, model_id="m/1", dim=8)


def test_worker_crops_normalise_to_the_query_paths_pixels():
    cfg = PreprocessConfig()
    datas = [make_image(i, size=(300 + 40 * i, 200)) for i in range(3)] + [make_image(9, size=(120, 400), fmt="PNG")]
    decoded, busy = decode_chunk(datas + [b"junk"], cfg, DecodeLimits(10**7, 10**7))
    assert busy > 0 and decoded[-1].crop is None and decoded[-1].error.startswith("invalid_image")
    batch = normalize_batch([d.crop for d in decoded[:-1]], cfg)
    expected = preprocess_images([decode_image(d) for d in datas], cfg)
    assert batch.dtype == np.float32 and batch.shape == expected.shape
    assert np.array_equal(batch, expected)
    assert decoded[0].size == (300, 200) and decoded[3].size == (120, 400)
