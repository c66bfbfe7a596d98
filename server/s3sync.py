"""Copy the embedded index from S3 to local disk at init (embedded mode on Lambda).

Reads `manifest.json` first and copies only the generation it names, so a prefix still holding
an older generation (or files of one being uploaded) costs nothing, and the manifest is written
last, so a copy cut short is never taken for a complete index. A copy that synced but does not
load (a damaged download) is discarded, so the next init attempt downloads it again. Credentials
come only from the boto3 chain (the function's execution role).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

from clipsearch.errors import BackendUnavailable, IndexMissing
from clipsearch.index.faiss_files import GENERATION, GENERATION_FILES, INDEX_MANIFEST


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise IndexMissing(f"INDEX_S3_URI must look like s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def sync_index(uri: str, dest: str | Path, client=None) -> int:
    """Make `dest` hold the index at `uri`; returns how many files were downloaded."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    dest = Path(dest)
    if client is None:
        import boto3

        client = boto3.client("s3")
    try:
        manifest_bytes = client.get_object(Bucket=bucket, Key=_key(prefix, INDEX_MANIFEST))["Body"].read()
        manifest = json.loads(manifest_bytes)
        generation = manifest["generation"]
        local = dest / INDEX_MANIFEST
        if local.is_file() and json.loads(local.read_text()).get("generation") == generation and (dest / generation).is_dir():
            return 0  # already here (a re-initialised container with /tmp kept)
        keys = _list(client, bucket, _key(prefix, generation) + "/")
        names = {PurePosixPath(k).name for k in keys}
        if not set(GENERATION_FILES) <= names:
            raise IndexMissing(f"the index at {uri} is incomplete: {generation} lacks "
                               f"{', '.join(sorted(set(GENERATION_FILES) - names))} (an upload in progress?)")
        targets = [(key, dest / _relative(key, prefix)) for key in keys]  # all checked before any is written
        for key, path in targets:
            _download(client, bucket, key, path)
        _write_atomic(dest / INDEX_MANIFEST, manifest_bytes)
        return len(keys) + 1
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise IndexMissing(f"no index at {uri} ({code}): build it with `python -m ingest ...` and upload it "
                               f"with `aws s3 sync data/index {uri}`") from None
        raise BackendUnavailable(f"cannot read the index from {uri}: {code}", retry_after=30) from None
    except BotoCoreError as exc:
        raise BackendUnavailable(f"cannot read the index from {uri}: {exc}", retry_after=30) from None
    except (ValueError, KeyError, TypeError):
        raise IndexMissing(f"{_key(prefix, INDEX_MANIFEST)} in s3://{bucket} is not an index manifest") from None


def discard(dest: str | Path) -> None:
    """Forget the local copy at `dest` (it synced but does not load: a damaged download), so the
    next sync fetches it again instead of keeping it. The manifest goes first: a copy half removed
    is never taken for a complete one."""
    dest = Path(dest)
    try:
        generation = json.loads((dest / INDEX_MANIFEST).read_bytes()).get("generation")
    except (OSError, ValueError, AttributeError):
        generation = None
    (dest / INDEX_MANIFEST).unlink(missing_ok=True)
    # Only a generation's own directory, whatever the manifest's text says.
    if isinstance(generation, str) and GENERATION.fullmatch(generation):
        shutil.rmtree(dest / generation, ignore_errors=True)


def _list(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    return keys


def _relative(key: str, prefix: str) -> str:
    rel = PurePosixPath(key[len(prefix) + 1:] if prefix else key)
    if rel.is_absolute() or ".." in rel.parts:
        raise IndexMissing(f"refusing S3 key {key!r}: it would be written outside the index directory")
    return str(rel)


def _download(client, bucket: str, key: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            fh.write(chunk)
    os.replace(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
