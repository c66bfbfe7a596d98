"""Folder ingest against hostile folders: links out of the folder, FIFOs, devices, /proc, link
loops, file names that are not UTF-8; and what the index and the API reveal of the ingest host."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_support import reply

from clipsearch.config import IndexSettings, ModelSettings, Settings
from clipsearch.index.faiss_index import FaissIndex
from conftest import REPO, make_image
from ingest.cli import execute

SKIP_OUT = "link out of the folder (--follow-links follows it)"
SKIP_SPECIAL = "device or kernel file"
SKIP_NOT_FILE = "not a regular file (FIFO, device, socket or directory)"
SKIP_LOOP = "broken or looping link"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ingest_cmd(folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ingest", "folder", str(folder), "--index", str(tmp_path / "idx"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet", "--json", "--batch-size", "4", *extra]


def run_cli(folder: Path, tmp_path: Path, *extra: str) -> dict:
    """A real `python -m ingest` (a FIFO that blocked it would hit the timeout); its JSON summary."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(ingest_cmd(folder, tmp_path, *extra), cwd=REPO, env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A folder with two real photos and every kind of link and special file; and what is outside."""
    root, outside = tmp_path / "photos", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "dir").mkdir(parents=True)
    inside = {"a.jpg": make_image(1), "sub/b.png": make_image(2, fmt="PNG")}
    for name, data in inside.items():
        (root / name).write_bytes(data)
    out_data = {"secret.jpg": make_image(3), "dir/d.jpg": make_image(4)}
    for name, data in out_data.items():
        (outside / name).write_bytes(data)
    links = {
        "in.jpg": root / "sub" / "b.png",  # stays inside: followed (same bytes as sub/b.png)
        "out.jpg": outside / "secret.jpg",
        "passwd.jpg": Path("/etc/passwd"),
        "environ.jpg": Path("/proc/self/environ"),
        "zero.jpg": Path("/dev/zero"),
        "loop1.jpg": root / "loop2.jpg",
        "loop2.jpg": root / "loop1.jpg",
        "outdir": outside / "dir",  # a directory out of the folder
        "sub/up": root,  # a directory loop
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    os.mkfifo(root / "fifo.jpg")
    return root, {**{f"out/{k}": v for k, v in out_data.items()}, **{f"in/{k}": v for k, v in inside.items()}}


def test_links_out_of_the_folder_and_special_files_are_skipped(tiny_model_env, hostile, tmp_path):
    root, data = hostile
    summary = run_cli(root, tmp_path)
    assert summary["failed"] == 0 and summary["indexed"] == 2  # a.jpg and in.jpg -> sub/b.png (same bytes: one)
    # out.jpg, passwd.jpg, environ.jpg, zero.jpg: links out, never opened; outdir and sub/up not walked
    assert summary["skipped"] == {SKIP_OUT: 4, SKIP_NOT_FILE: 1, SKIP_LOOP: 2, "duplicate content": 1}
    index = FaissIndex.load(tmp_path / "idx")
    assert sorted(index.ids()) == sorted(sha(data[k]) for k in ("in/a.jpg", "in/sub/b.png"))
    assert sorted(index.get(i).metadata["path"] for i in index.ids()) == ["a.jpg", "in.jpg"]  # first seen


def test_follow_links_reaches_outside_but_never_special_files(tiny_model_env, hostile, tmp_path):
    root, data = hostile
    summary = run_cli(root, tmp_path, "--follow-links")
    assert summary["skipped"][SKIP_SPECIAL] == 2 and summary["skipped"][SKIP_NOT_FILE] == 1  # /proc, /dev, FIFO
    assert summary["skipped"][SKIP_LOOP] == 2 and SKIP_OUT not in summary["skipped"]
    # A link to an ordinary file outside is followed when asked: /etc/passwd is read, and is no image.
    assert [(f["item"], f["reason"].split(":")[0]) for f in summary["failures"]] == [("passwd.jpg", "invalid_image")]
    index = FaissIndex.load(tmp_path / "idx")
    assert sorted(index.ids()) == sorted({sha(v) for v in data.values()})
    paths = {index.get(i).metadata["path"] for i in index.ids()}
    # Indexed under the link's own path in the folder, never the target's location outside it;
    # sub/up (a link back to the folder) is walked once, not forever.
    assert {"out.jpg", "outdir/d.jpg"} <= paths and not any(str(tmp_path) in p or ".." in p for p in paths)


def test_etc_passwd_and_proc_are_not_read_without_follow_links(tiny_model_env, hostile, tmp_path):
    root, _ = hostile
    summary = run_cli(root, tmp_path)
    assert not any("passwd" in f["item"] or "environ" in f["item"] for f in summary["failures"])


def test_a_fifo_swapped_in_after_the_scan_does_not_block_and_is_reported(tmp_path):
    """The reader opens without blocking and checks the file type before reading (the race a
    scan alone cannot close): the FIFO is reported, the run goes on."""
    from ingest.stages.read import NotRegularFile, read_regular_file

    fifo = tmp_path / "late.jpg"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile):
        read_regular_file(fifo, 1000)
    link = tmp_path / "link.jpg"
    os.symlink(tmp_path / "real.jpg", link)
    (tmp_path / "real.jpg").write_bytes(b"x")
    with pytest.raises(OSError):  # a link swapped in: not followed (O_NOFOLLOW)
        read_regular_file(link, 1000)
    from clipsearch.errors import ImageTooLarge

    with pytest.raises(ImageTooLarge):  # /proc reports size 0 but has more: the read is capped anyway
        read_regular_file(Path("/proc/self/environ"), 8)


# ------------------------------------------------------------------------- non-UTF-8 names
def test_a_file_name_that_is_not_utf8_is_indexed_and_the_state_keeps_it(tiny_model_env, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "plain.jpg").write_bytes(make_image(10))
    with open(os.path.join(os.fsencode(root), b"caf\xe9.jpg"), "wb") as fh:
        fh.write(make_image(11))
    with open(os.path.join(os.fsencode(root), b"bad\xff.jpg"), "wb") as fh:
        fh.write(b"not an image")
    summary = run_cli(root, tmp_path)  # the summary is printed as JSON: it must encode
    assert summary["indexed"] == 2 and [f["item"] for f in summary["failures"]] == ["bad\\xff.jpg"]
    index = FaissIndex.load(tmp_path / "idx")
    assert sorted(index.get(i).metadata["path"] for i in index.ids()) == ["caf\\xe9.jpg", "plain.jpg"]
    again = execute(["folder", str(root), "--index", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"),
                     "--quiet"])
    assert again.skipped["unchanged"] == 2 and again.encoded == 0  # the state found the name again
    os.unlink(os.path.join(os.fsencode(root), b"caf\xe9.jpg"))
    third = execute(["folder", str(root), "--index", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"),
                     "--quiet"])
    assert third.deleted == 1 and FaissIndex.load(tmp_path / "idx").count() == 1


# ------------------------------------------------------------------------------ relative paths
def test_search_results_never_carry_the_ingest_hosts_folder(tiny_model_env, tiny_encoder, tiny_model_dir,
                                                          photo_folder, tmp_path):
    from server.app import App

    root = tmp_path / "private" / "photos"
    shutil.copytree(photo_folder, root)
    execute(["folder", str(root), "--index", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    for data in ((tmp_path / "idx").glob("gen-*/*")):
        assert str(tmp_path).encode() not in data.read_bytes(), data  # not in the index either
    app = App(Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1),
                       index=IndexSettings(path=str(tmp_path / "idx"))), encoder=tiny_encoder)
    status, _, body = reply(app.handle({"query": "a photo", "input_type": "text", "k": 100}, None))
    assert status == 200 and body["count"] == 12
    assert str(tmp_path) not in json.dumps(body) and "private" not in json.dumps(body)
    assert sorted(r["path"] for r in body["results"]) == sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_index_with_absolute_paths_is_migrated_without_encoding(tiny_model_env, photo_folder, tmp_path):
    """An index and state written when metadata held absolute paths: the next run rewrites every
    document with its relative path, vectors from the cache, nothing encoded."""
    from clipsearch.index import Document

    root = tmp_path / "photos"
    shutil.copytree(photo_folder, root)
    argv = ["folder", str(root), "--index", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    execute(argv)
    old = FaissIndex.load(tmp_path / "idx")  # as the previous version wrote them
    old.upsert([Document(i, old.get(i).vector, {**old.get(i).metadata,
                                                 "path": str(root / old.get(i).metadata["path"])}) for i in old.ids()])
    old.save()
    (state,) = (tmp_path / "cache" / "state").glob("folder-*.json")
    body = json.loads(state.read_text())
    del body["version"]
    state.write_text(json.dumps(body))

    migrated = execute(argv)
    assert (migrated.encoded, migrated.from_cache, migrated.indexed, migrated.deleted) == (0, 12, 12, 0)
    index = FaissIndex.load(tmp_path / "idx")
    assert all(not index.get(i).metadata["path"].startswith("/") for i in index.ids()) and index.count() == 12
    assert execute(argv).skipped["unchanged"] == 12  # and then it is an ordinary incremental run
