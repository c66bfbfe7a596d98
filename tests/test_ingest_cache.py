"""The embedding cache (ingest's checkpoint) and the batch normalisation of decoded crops."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import IngestError
from clipsearch.images import decode_image
from clipsearch.models.preprocess import PreprocessConfig, preprocess_images
from conftest import REPO, make_image
from ingest.cache import _HEAD, LOG, MAGIC, EmbeddingCache, model_slug
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


def test_damaged_last_record_is_cut_off(tmp_path):
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        cache.append(["a"], vectors(1), [{}])
        cache.append(["b"], vectors(1, seed=1), [{}])
        log = cache.dir / LOG
    data = bytearray(log.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the last vector: its crc no longer matches
    log.write_bytes(bytes(data))
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert len(cache) == 1 and "a" in cache and "b" not in cache
        assert cache.truncated_bytes > 0 and "cut off" in cache.damage_report()


def _records(cache_dir: Path, n: int = 10) -> tuple[Path, list[int], np.ndarray]:
    """A log of n one-vector records keyed k0..k(n-1); returns it, the record offsets, the vectors."""
    v = vectors(n)
    with EmbeddingCache.open(cache_dir, model_id="m/1", dim=8) as cache:
        log, offsets = cache.dir / LOG, []
        for i in range(n):
            offsets.append(log.stat().st_size if log.exists() else 0)
            cache.append([f"k{i}"], v[i : i + 1], [{"i": i}])
    return log, offsets, v


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]


DAMAGE = {
    "flipped vector byte": lambda d, a, b: _flip(d, b - 3),
    "flipped header byte": lambda d, a, b: _flip(d, a + 20),
    "flipped length field": lambda d, a, b: _flip(d, a + 6),  # claims a record far past the end
    "flipped magic": lambda d, a, b: _flip(d, a),
    "bytes lost": lambda d, a, b: d[: a + 30] + d[a + 50 :],
    "record truncated": lambda d, a, b: d[: b - 7] + d[b:],
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_record_in_the_middle_costs_only_its_own_vectors(tmp_path, how):
    log, offsets, v = _records(tmp_path)
    data = log.read_bytes()
    log.write_bytes(DAMAGE[how](data, offsets[4], offsets[5]))
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert sorted(cache._vectors) == sorted(f"k{i}" for i in range(10) if i != 4)
        for i in (3, 5, 9):
            vec, extras = cache.get(f"k{i}")
            assert (vec == v[i]).all() and extras == {"i": i}
        assert (cache.damaged_records, cache.truncated_bytes) == (1, 0)
        assert "skipped 1 damaged record" in cache.damage_report()
        cache.append(["k4"], v[4:5], [{"i": 4}])  # encoded again, appended after the damage
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert len(cache) == 10 and (cache.get("k4")[0] == v[4]).all()


def test_stray_bytes_between_records_lose_nothing(tmp_path):
    log, offsets, _ = _records(tmp_path)
    data = log.read_bytes()
    garbage = b"CSE1" + b"\xff" * 40 + b"not a record" + MAGIC  # even false record starts
    log.write_bytes(data[: offsets[5]] + garbage + data[offsets[5] :])
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert len(cache) == 10 and cache.damaged_records == 1 and cache.damaged_bytes == len(garbage)


def test_a_checksummed_record_ingest_did_not_write_is_skipped(tmp_path):
    """A hostile record whose crc is right but whose header is not ingest's: skipped, not a crash."""
    log, offsets, _ = _records(tmp_path, 3)
    for header in (b'["not", "an", "object"]', b'{"ids": ["x", "y"], "extras": [{}]}', b'{"ids": [1], "extras": [{}]}',
                   b"\xff\xfe not json"):
        body = header + vectors(1).tobytes()
        record = _HEAD.pack(MAGIC, len(header), 1, zlib.crc32(body)) + body
        data = log.read_bytes()
        log.write_bytes(data[: offsets[1]] + record + data[offsets[1] :])
        with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
            assert sorted(cache._vectors) == ["k0", "k1", "k2"] and cache.damaged_records == 1
        log.write_bytes(data)


_APPENDER = """
import sys
import numpy as np
from ingest.cache import EmbeddingCache
root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with EmbeddingCache.open(root, model_id="m/1", dim=8) as cache:
    for i in range(n):
        cache.append([f"{name}{i}"], np.full((1, 8), i, dtype=np.float32), [{"by": name}])
"""


def test_processes_sharing_a_cache_append_whole_records(tmp_path):
    """Ingests into different indexes share one cache per model: three processes appending at
    once leave every record whole, and a fresh open reads all of them."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), name, "60"], cwd=REPO, env=env)
             for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8) as cache:
        assert len(cache) == 180 and (cache.damaged_records, cache.truncated_bytes) == (0, 0)
        assert (cache.get("b59")[0] == 59).all() and cache.get("c7")[1] == {"by": "c"}


@pytest.mark.parametrize("content", ["{truncated", "[1, 2]", "\xff\xfe", ""])
def test_damaged_model_file_is_a_clear_error(tmp_path, content):
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8):
        pass
    (tmp_path / model_slug("m/1") / "model.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(IngestError, match="model.json is not the JSON object"):
        EmbeddingCache.open(tmp_path, model_id="m/1", dim=8)


def test_models_are_kept_apart(tmp_path):
    with EmbeddingCache.open(tmp_path, model_id="m/1", dim=8):
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
