"""Unsplash ingest against a real local HTTP server: archive, metadata, faults, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsearch.index.faiss_index import FaissIndex
from conftest import REPO
from ingest.cli import execute
from ingest.sources.unsplash import photo_metadata, sized_url
from unsplash_server import FakeUnsplash, photo_row


def args(server, tmp_path, *extra, index="idx"):
    return ["unsplash", "--dataset-url", f"{server.url}/lite.zip", "--data-dir", str(tmp_path / "unsplash"),
            "--index", str(tmp_path / index), "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--timeout", "0.5", "--retries", "2", "--backoff", "0.01", "--decode-workers", "0",
            "--batch-size", "4", *extra]


def test_sized_url_keeps_other_parameters():
    assert sized_url("https://images.unsplash.com/photo-1?ixid=a&w=1080", 480) == \
        "https://images.unsplash.com/photo-1?ixid=a&w=480"
    assert sized_url("https://images.unsplash.com/photo-1", 480) == "https://images.unsplash.com/photo-1?w=480"
    assert sized_url("https://images.unsplash.com/photo-1?ixid=a", 0) == "https://images.unsplash.com/photo-1?ixid=a"


def test_metadata_leaves_missing_fields_out():
    full = photo_metadata(photo_row("abc", "https://images.unsplash.com", 1), 480)
    assert full == {
        "source": "unsplash", "url": "https://images.unsplash.com/photos/abc?ixid=abc1&ixlib=rb-4.0.3&w=480",
        "page_url": "https://unsplash.com/photos/abc", "photographer": "First1 Last",
        "photographer_username": "user1", "photographer_url": "https://unsplash.com/@user1",
        "description": "photo number 1", "ai_description": "a generated picture 1", "location": "Town 1, Country",
        "location_country": "Country", "location_city": "Town 1", "blur_hash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
        "submitted_at": "2020-05-17 10:01:02.123", "width": 4001, "height": 3000, "orientation": "landscape",
        "aspect_ratio": 1.33, "featured": False,
    }
    sparse = photo_metadata({"photo_id": "x", "photo_image_url": "https://i/x", "photo_width": "n/a",
                             "photo_height": "", "photo_featured": "?", "photographer_first_name": "Ann"}, 480)
    assert sparse == {"source": "unsplash", "url": "https://i/x?w=480", "photographer": "Ann"}


# photo index -> behaviours, one per request (the last repeats)
FAULTS = {2: ["404"], 3: ["500", "ok"], 4: ["slow", "ok"], 5: ["truncated", "ok"], 6: ["html"],
          7: ["truncated"], 8: ["500", "503", "ok"], 9: ["429", "ok"]}
FAILING = {2: "http_404", 6: "not_an_image", 7: ("connection", "truncated")}


@pytest.mark.e2e
def test_download_faults_then_idempotent_rerun(tiny_model_env, tmp_path):
    with FakeUnsplash(slow_seconds=1.5) as server:
        ids = server.add_photos(10, FAULTS)
        bad_id_line = "not a valid id!\thttps://x\t" + "\t" * 25
        extra_cols = "\t".join(["zz9"] + ["x"] * 40)
        refused = photo_row("refused1", "http://127.0.0.1:1", 0)  # nothing listens on port 1
        server.set_archive(ids, extra_lines=[bad_id_line, extra_cols, "\t".join(refused.values())])
        summary = execute(args(server, tmp_path))

        good = [p for i, p in enumerate(ids) if i not in FAILING]
        failed = {item: reason for item, reason in summary.failed}
        for i, code in FAILING.items():
            assert failed[ids[i]].startswith(code), failed
        assert sum(r.startswith("malformed_row") for r in failed.values()) == 2
        assert failed["refused1"].startswith("connection") and "3 attempts" in failed["refused1"]
        assert len(failed) == len(FAILING) + 3
        assert (summary.found, summary.downloaded, summary.encoded, summary.indexed) == (11, 7, 7, 7)
        assert server.requests[f"/photos/{ids[8]}"] == 3  # two 5xx retried, then the image
        assert server.requests[f"/photos/{ids[4]}"] == 2  # timed out once, retried
        assert server.requests[f"/photos/{ids[7]}"] == 3  # truncated every time: 1 + 2 retries
        assert server.requests[f"/photos/{ids[2]}"] == 1  # a 404 is not retried
        assert server.requests[f"/photos/{ids[9]}"] == 2  # 429, Retry-After honoured, then the image
        assert all(server.widths[p] == "480" for p in ids)

        images = tmp_path / "unsplash" / "images"
        assert sorted(p.name for p in images.iterdir()) == sorted(f"{p}.jpg" for p in good)  # no temp files
        index = FaissIndex.load(tmp_path / "idx")
        assert sorted(index.ids()) == sorted(good)
        doc = index.get(ids[3])
        assert doc.metadata["url"] == f"{server.url}/photos/{ids[3]}?ixid=abc3&ixlib=rb-4.0.3&w=480"
        assert doc.metadata["photographer_url"] == "https://unsplash.com/@user3"
        assert "description" not in index.get(ids[0]).metadata  # empty in the TSV: left out

        # Run twice: nothing downloaded, encoded or written again; failures are tried again.
        before = dict(server.requests)
        again = execute(args(server, tmp_path))
        assert (again.downloaded, again.encoded, again.indexed, again.from_cache) == (0, 0, 0, 0)
        assert again.skipped["already indexed"] == 7
        assert FaissIndex.load(tmp_path / "idx").count() == 7
        for p in good:
            assert server.requests[f"/photos/{p}"] == before[f"/photos/{p}"]
        assert server.requests["/lite.zip"] == 1  # the archive on disk is reused


@pytest.mark.e2e
def test_another_index_reuses_images_and_embeddings(tiny_model_env, tmp_path):
    with FakeUnsplash() as server:
        ids = server.add_photos(6)
        server.set_archive(ids)
        first = execute(args(server, tmp_path, "--limit", "5"))
        assert (first.found, first.encoded, first.indexed) == (5, 5, 5)
        second = execute(args(server, tmp_path, "--limit", "5", index="idx2"))
        assert (second.downloaded, second.encoded, second.from_cache, second.indexed) == (0, 0, 5, 5)
        assert second.skipped["on disk"] == 5
        a, b = FaissIndex.load(tmp_path / "idx"), FaissIndex.load(tmp_path / "idx2")
        assert sorted(a.ids()) == sorted(b.ids()) == sorted(ids[:5])
        for p in ids[:5]:
            assert (a.get(p).vector == b.get(p).vector).all()
            assert a.get(p).metadata == b.get(p).metadata


@pytest.mark.e2e
def test_unreachable_archive_is_a_clear_error(tiny_model_env, tmp_path, capsys):
    from ingest.cli import main

    with FakeUnsplash() as server:
        code = main(args(server, tmp_path)[:2] + [f"{server.url}/missing.zip"] + args(server, tmp_path)[3:])
    assert code == 1
    assert "cannot download the Unsplash dataset: http_404" in capsys.readouterr().err


def _wait_for(predicate, timeout: float, proc=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _cache_log(tmp_path: Path) -> Path | None:
    logs = list((tmp_path / "cache").glob("*/embeddings.log"))
    return logs[0] if logs else None


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_during_encode_then_resume(tiny_model_env, tmp_path, tiny_model_dir):
    """kill -9 after the checkpoint shows progress; the rerun ends with one document per photo."""
    with FakeUnsplash() as server:
        ids = server.add_photos(24)
        server.set_archive(ids)
        cmd = [sys.executable, "-m", "ingest", *args(server, tmp_path, "--batch-size", "2", "--save-every", "2")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd + ["--batch-delay", "0.25"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            progressed = _wait_for(lambda: (log := _cache_log(tmp_path)) is not None and log.stat().st_size > 0
                                   and (tmp_path / "idx" / "manifest.json").is_file(), 60, proc)
            assert progressed, proc.stderr.read().decode() if proc.poll() is not None else "no progress"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        saved = FaissIndex.load(tmp_path / "idx").count()
        assert 0 < saved < 24  # really killed mid-run

        out = subprocess.run(cmd + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["skipped"]["already indexed"] == saved
        assert summary["encoded"] + summary["from_cache"] == 24 - saved
        assert summary["downloaded"] == 0  # every image was already on disk
        index = FaissIndex.load(tmp_path / "idx")
        assert index.count() == 24 and sorted(index.ids()) == sorted(ids)


def test_archive_with_several_photo_files(tmp_path):
    import zipfile

    from ingest.sources.unsplash import read_photos
    from unsplash_server import COLUMNS

    def tsv(rows):
        return "\n".join(["\t".join(COLUMNS)] + ["\t".join(r[c] for c in COLUMNS) for r in rows]) + "\n"

    rows = [photo_row(f"id{i}", "https://images.example", i) for i in range(5)]
    archive = tmp_path / "full.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos.tsv001", tsv(rows[3:] + rows[:1]))  # id0 again: one photo, once
        zf.writestr("photos.tsv000", tsv(rows[:3]))
        zf.writestr("keywords.tsv000", "photo_id\tkeyword\n")
    failures: list = []
    assert [p.id for p in read_photos(archive, 480, None, failures)] == ["id0", "id1", "id2", "id3", "id4"]
    assert [p.id for p in read_photos(archive, 480, 4, failures)] == ["id0", "id1", "id2", "id3"]
    assert failures == []
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(Exception, match="not a readable zip archive"):
        read_photos(tmp_path / "bad.zip", 480, None, failures)
