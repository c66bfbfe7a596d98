"""Folder ingest: content-hash ids, metadata, bad files, incremental runs, kill -9 and resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest

from clipsearch.images import decode_image
from clipsearch.index.faiss_index import FaissIndex
from conftest import REPO, make_image
from ingest.cli import execute, main


@pytest.fixture
def photos(photo_folder, tmp_path) -> Path:
    dest = tmp_path / "photos"
    shutil.copytree(photo_folder, dest)
    return dest


def run(folder, tmp_path, *extra, index="idx"):
    return execute(["folder", str(folder), "--index", str(tmp_path / index), "--cache-dir", str(tmp_path / "cache"),
                    "--quiet", "--decode-workers", "0", "--batch-size", "4", *extra])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header that claims width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_folder_documents_and_vectors(tiny_model_env, photos, tmp_path, tiny_encoder):
    summary = run(photos, tmp_path)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    assert (summary.found, summary.encoded, summary.indexed, len(summary.failed)) == (12, 12, 12, 0)
    index = FaissIndex.load(tmp_path / "idx")
    assert sorted(index.ids()) == sorted(sha(p) for p in files)
    for path in files[:4]:
        doc = index.get(sha(path))
        img = decode_image(path.read_bytes())
        assert doc.metadata == {"source": "folder", "path": str(path.relative_to(photos)), "width": img.width,
                                "height": img.height, "orientation": "landscape", "content_hash": sha(path)}
        # The pipeline's workers + batch normalisation give exactly the query path's vector.
        np.testing.assert_allclose(doc.vector, tiny_encoder.encode_images([img])[0], atol=1e-5)


def test_bad_files_are_skipped_and_reported(tiny_model_env, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "deep" / "er").mkdir(parents=True)
    good = {"a.jpg": make_image(1), "deep/b.png": make_image(2, fmt="PNG"), "deep/er/c.gif": make_image(3, fmt="GIF"),
            "png-named.jpg": make_image(4, fmt="PNG"), "upper.JPEG": make_image(5)}
    whole = make_image(6, size=(300, 200))
    bad = {"empty.jpg": b"", "truncated.jpg": whole[: len(whole) // 2], "bomb.png": bomb_png(10000, 10000),
           "huge-bomb.png": bomb_png(30000, 30000),
           "text.jpg": b"hello, not an image", "page.webp": b"<html></html>", "big.jpg": make_image(7, size=(900, 900))}
    for name, data in {**good, **bad}.items():
        (folder / name).write_bytes(data)
    (folder / "ignored.txt").write_bytes(make_image(8))  # an image, but not by extension: not scanned
    (folder / "dir.jpg").mkdir()  # a directory with an image's name
    os.symlink(folder / "nowhere.jpg", folder / "dangling.jpg")
    summary = run(folder, tmp_path, "--max-bytes", str(len(make_image(7, size=(900, 900))) - 1))

    reasons = {Path(k).name: r for k, r in summary.failed}
    assert set(reasons) == set(bad)
    assert reasons["empty.jpg"].startswith("invalid_image") and "0 bytes" in reasons["empty.jpg"]
    assert reasons["truncated.jpg"].startswith("invalid_image") and "truncated" in reasons["truncated.jpg"]
    assert reasons["bomb.png"].startswith("image_too_large") and "100,000,000 pixels" in reasons["bomb.png"]
    assert reasons["huge-bomb.png"].startswith("image_too_large")
    assert reasons["text.jpg"].startswith("invalid_image") and reasons["page.webp"].startswith("invalid_image")
    assert reasons["big.jpg"].startswith("image_too_large") and "bytes" in reasons["big.jpg"]
    assert (summary.found, summary.indexed) == (len(good) + len(bad), len(good))
    index = FaissIndex.load(tmp_path / "idx")
    assert sorted(Path(index.get(i).metadata["path"]).name for i in index.ids()) == sorted(Path(n).name for n in good)
    text = summary.render()
    assert "FAILED" in text and "bomb.png" in text and "(4 invalid_image, 3 image_too_large)" in text


def test_incremental_changes_deletes_moves(tiny_model_env, photos, tmp_path):
    first = run(photos, tmp_path)
    assert first.indexed == 12
    files = sorted(p for p in photos.rglob("*.jpg"))
    changed, deleted, moved = files[0], files[1], files[2]
    old_changed, old_deleted, moved_id = sha(changed), sha(deleted), sha(moved)
    changed.write_bytes(make_image(500))
    deleted.unlink()
    moved_to = photos / "sub" / "renamed.jpg"
    moved.rename(moved_to)
    (photos / "new.jpg").write_bytes(make_image(501))
    (photos / "copy-of-new.jpg").write_bytes(make_image(501))  # same bytes: one document

    second = run(photos, tmp_path)
    assert second.skipped["unchanged"] == 9
    assert second.skipped["duplicate content"] == 1
    assert second.encoded == 2  # the changed and the new file; the moved one comes from the cache
    assert second.from_cache == 1
    assert second.deleted == 2  # the deleted file's and the changed file's old documents
    index = FaissIndex.load(tmp_path / "idx")
    assert index.count() == 12 - 1 + 1
    ids = set(index.ids())
    assert old_changed not in ids and old_deleted not in ids and sha(changed) in ids
    assert index.get(moved_id).metadata["path"] == "sub/renamed.jpg"

    third = run(photos, tmp_path)  # nothing changed: nothing read, encoded or written
    assert (third.encoded, third.from_cache, third.indexed, third.deleted) == (0, 0, 0, 0)
    assert third.skipped["unchanged"] == 13


def test_touched_file_is_reread_not_reencoded_and_lost_index_is_rebuilt_from_cache(tiny_model_env, photos, tmp_path):
    run(photos, tmp_path)
    touched = next(photos.rglob("*.png"))
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = run(photos, tmp_path)
    assert (again.encoded, again.from_cache, again.indexed, again.deleted) == (0, 1, 1, 0)
    shutil.rmtree(tmp_path / "idx")  # index gone, state and cache kept: rebuilt without encoding
    rebuilt = run(photos, tmp_path)
    assert (rebuilt.encoded, rebuilt.from_cache, rebuilt.indexed) == (0, 12, 12)
    assert FaissIndex.load(tmp_path / "idx").count() == 12


def test_usage_errors(tiny_model_env, tmp_path, capsys):
    assert main(["folder", str(tmp_path / "nope"), "--index", str(tmp_path / "i"), "--quiet"]) == 1
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["folder", str(tmp_path), "--batch-size", "0"])
    assert exc.value.code == 2
    out = subprocess.run([sys.executable, "-m", "ingest", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("unsplash", "folder", "--limit", "--width", "--workers", "--data-dir", "--dataset-url",
                 "--index", "--backend", "--cache-dir", "--batch-size", "--decode-workers", "--save-every"):
        assert word in out.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_then_resume(tiny_model_env, tmp_path):
    """kill -9 mid-run (with a decode worker process); the rerun completes with one document per
    image, none lost, none twice, and the worker does not outlive its killed parent."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"img{i:02d}.jpg").write_bytes(make_image(2000 + i, size=(96, 64)))
    cmd = [sys.executable, "-m", "ingest", "folder", str(folder), "--index", str(tmp_path / "idx"),
           "--cache-dir", str(tmp_path / "cache"), "--quiet", "--batch-size", "2", "--save-every", "2",
           "--decode-workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd + ["--batch-delay", "0.25"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (tmp_path / "idx" / "manifest.json").is_file():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        helpers = psutil.Process(proc.pid).children(recursive=True)  # decode worker, resource tracker
        assert helpers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = FaissIndex.load(tmp_path / "idx").count()
    assert 0 < saved < 30  # really killed mid-run
    _, alive = psutil.wait_procs(helpers, timeout=5)
    assert not alive, f"orphaned after kill -9: {[p.cmdline() for p in alive]}"

    out = subprocess.run(cmd + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    resumed = summary["skipped"].get("unchanged", 0) + summary["from_cache"]
    assert resumed >= saved  # what was done before the kill is not encoded again
    assert resumed + summary["encoded"] == 30
    index = FaissIndex.load(tmp_path / "idx")
    ids = index.ids()
    assert len(ids) == len(set(ids)) == 30
    assert set(ids) == {sha(p) for p in folder.iterdir()}
    assert len({index.get(i).metadata["path"] for i in ids}) == 30


def _cache_log(tmp_path: Path) -> Path:
    (log,) = (tmp_path / "cache").glob("*/embeddings.log")
    return log


@pytest.mark.parametrize("damage, encoded", [("flip", 4), ("cut", 4), ("insert", 0)])
def test_a_damaged_cache_record_costs_only_its_own_images(tiny_model_env, photos, tmp_path, damage, encoded):
    """Three records of four images; the middle one damaged (a flipped byte, 20 bytes lost) costs
    its four images a new encode, and stray bytes between records cost nothing."""
    from ingest.cache import _HEAD

    run(photos, tmp_path)  # batches of 4: three records
    log = _cache_log(tmp_path)
    data = log.read_bytes()
    _, head_len, count, _ = _HEAD.unpack_from(data, 0)
    second = _HEAD.size + head_len + count * 4 * 16  # the tiny model is 16-d
    damaged = {"flip": data[: second + 40] + bytes([data[second + 40] ^ 0xFF]) + data[second + 41 :],
               "cut": data[: second + 40] + data[second + 60 :],
               "insert": data[:second] + b"\x00garbage\xff" * 7 + data[second:]}[damage]
    log.write_bytes(damaged)
    shutil.rmtree(tmp_path / "idx")

    again = run(photos, tmp_path)
    assert (again.encoded, again.from_cache, again.indexed) == (encoded, 12 - encoded, 12)
    assert any("skipped 1 damaged record" in w for w in again.warnings) and "WARNING" in again.render()
    assert FaissIndex.load(tmp_path / "idx").count() == 12


def test_a_damaged_cache_model_file_is_an_ingest_error(tiny_model_env, photos, tmp_path, capsys):
    run(photos, tmp_path)
    (model_file,) = (tmp_path / "cache").glob("*/model.json")
    model_file.write_bytes(b'{"model_id": "clipsearch/tiny-te')
    argv = ["folder", str(photos), "--index", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ingest: error: embedding cache") and "model.json" in err and "Traceback" not in err


@pytest.mark.e2e
@pytest.mark.slow
def test_concurrent_ingests_into_one_index_exclude_each_other(tiny_model_env, tmp_path):
    """Two real `python -m ingest` runs into one index: the second exits at once naming the
    first's pid (it would otherwise overwrite the first's documents with its own at each save),
    or with --wait waits for it; in the end the index has both folders' documents."""
    folders = {}
    for name, seed in (("one", 3000), ("two", 4000)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i in range(8):
            (folders[name] / f"{name}{i}.jpg").write_bytes(make_image(seed + i, size=(96, 64)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cmd(folder, *extra):
        return [sys.executable, "-m", "ingest", "folder", str(folder), "--index", str(tmp_path / "idx"),
                "--cache-dir", str(tmp_path / "cache"), "--quiet", "--batch-size", "2", "--json", *extra]

    first = subprocess.Popen(cmd(folders["one"], "--batch-delay", "0.4"), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "idx" / "ingest.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        busy = subprocess.run(cmd(folders["two"]), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # it really overlapped the first run
        assert busy.returncode == 1
        assert busy.stderr.startswith(f"ingest: error: another ingest (pid {first.pid}) is writing ")
        assert "--wait" in busy.stderr and "Traceback" not in busy.stderr
        waited = subprocess.run(cmd(folders["two"], "--wait"), cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=180)
        assert waited.returncode == 0, waited.stderr
        assert f"another ingest (pid {first.pid})" in waited.stderr and "waiting" in waited.stderr
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    assert json.loads(out.splitlines()[-1])["indexed"] == 8
    assert json.loads(waited.stdout.splitlines()[-1])["index_count"] == 16
    ids = FaissIndex.load(tmp_path / "idx").ids()
    assert sorted(ids) == sorted(sha(p) for f in folders.values() for p in f.iterdir())


def test_vectors_that_are_not_unit_length_are_skipped_and_reported(tiny_model_dir, monkeypatch, photos, tmp_path):
    """A checkpoint whose image projection holds NaN (a broken or overflowing model): every
    image is reported as invalid_vector, nothing reaches the index or the cache, the run ends."""
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["visual_projection.weight"][:] = np.nan
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv("MODEL_PATH", str(broken))
    monkeypatch.setenv("TORCH_THREADS", "1")
    summary = run(photos, tmp_path)
    assert (summary.encoded, summary.indexed, len(summary.failed)) == (12, 0, 12)
    assert all(r == "invalid_vector: the encoder's vector contains NaN or infinity" for _, r in summary.failed)
    assert FaissIndex.load(tmp_path / "idx").count() == 0
    assert _cache_log(tmp_path).stat().st_size == 0


def test_a_cached_vector_that_is_not_unit_length_is_encoded_again(tiny_model_env, photos, tmp_path):
    from ingest.cache import EmbeddingCache

    run(photos, tmp_path)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    with EmbeddingCache.open(tmp_path / "cache", model_id="clipsearch/tiny-test", dim=16) as cache:
        bad = np.stack([np.full(16, np.nan), np.full(16, 3.0)]).astype(np.float32)  # checksummed, but not unit
        cache.append([sha(files[0]), sha(files[5])], bad, [{}, {}])
    shutil.rmtree(tmp_path / "idx")
    again = run(photos, tmp_path)
    assert (again.encoded, again.from_cache, again.indexed, len(again.failed)) == (2, 10, 12, 0)
    assert any("2 vector(s) in the embedding cache were not unit vectors" in w for w in again.warnings)
    index = FaissIndex.load(tmp_path / "idx")
    for f in (files[0], files[5]):
        assert abs(np.linalg.norm(index.get(sha(f)).vector) - 1) < 1e-5


def test_deletions_survive_the_checkpoints_of_a_long_run(tiny_model_env, photos, tmp_path):
    """A run that saves in the middle (more batches than --save-every) still removes the documents
    of files deleted or changed since the last run: the checkpoints rewrite the state, not what the
    run started from."""
    run(photos, tmp_path)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    deleted, changed = files[0], files[1]
    old_ids = {sha(deleted), sha(changed)}
    deleted.unlink()
    changed.write_bytes(make_image(600))
    for i in range(8):
        (photos / f"new{i}.jpg").write_bytes(make_image(610 + i))

    second = run(photos, tmp_path, "--batch-size", "2", "--save-every", "1")  # five saves before the end
    assert (second.encoded, second.deleted, second.index_count) == (9, 2, 11 + 8)
    index = FaissIndex.load(tmp_path / "idx")
    assert not old_ids & set(index.ids())
    assert sorted(index.ids()) == sorted(sha(p) for p in photos.rglob("*") if p.is_file())


def test_a_run_killed_after_a_checkpoint_still_deletes_next_time(tiny_model_env, photos, tmp_path):
    """Killed right after its first index save (state saved, nothing deleted yet): the next run
    deletes what the killed one would have, and each remaining file has exactly one document."""
    import ingest
    from clipsearch.config import Settings
    from ingest.sources.folder import FolderSource

    class Killed(BaseException):
        pass

    class DiesAfterFirstSave(FolderSource):
        def checkpoint(self, done):
            super().checkpoint(done)
            raise Killed  # as kill -9 right after the save: index and state on disk, nothing else

    settings = Settings.from_env({**os.environ, "INDEX_PATH": str(tmp_path / "idx")})
    opts = ingest.IngestOptions(cache_dir=tmp_path / "cache", progress=False, batch_size=2, save_every=1)
    run(photos, tmp_path)
    gone = sorted(p for p in photos.rglob("*") if p.is_file())[0]
    gone_id = sha(gone)
    gone.unlink()
    for i in range(6):
        (photos / f"new{i}.jpg").write_bytes(make_image(620 + i))
    with pytest.raises(Killed):
        ingest.run(DiesAfterFirstSave(photos), settings, opts)
    assert gone_id in FaissIndex.load(tmp_path / "idx").ids()  # the killed run deleted nothing

    resumed = ingest.run(FolderSource(photos), settings, opts)
    assert resumed.deleted == 1 and resumed.encoded == 4  # two new files were written before the kill
    index = FaissIndex.load(tmp_path / "idx")
    assert gone_id not in index.ids() and index.count() == 11 + 6
    assert sorted(index.ids()) == sorted(sha(p) for p in photos.rglob("*") if p.is_file())
