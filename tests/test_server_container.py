"""What can be proven about the container without a Docker engine.

1. The Dockerfile: the Lambda Python base image, CPU-only torch at requirements.txt's pin,
   requirements.txt only, weights downloaded at build time, offline at run time, no credentials,
   and a CMD naming a handler module that the image copies in.
2. "A virtualenv built from requirements.txt alone runs the handler": building one here would
   download gigabytes, so the test assembles its equivalent from the installed packages: a
   site-packages of links to the files of requirements.txt's distributions and everything they
   require (nothing else), and the runtime's interpreter started with -S so the shared venv's
   site-packages (with the dev tools) is not on its path. The real emulator then runs the handler
   on it, serving text, image (every format), id, URL and bad queries. An import of a dev-only
   package (psutil, pytest, streamlit ...) fails there; optional packages that transformers or
   huggingface_hub use only when present (psutil, trio) are simply absent, as in the image.
"""

from __future__ import annotations

import base64
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_image
from packaging.requirements import Requirement
from server_support import build_index

DOCKERFILE = (REPO / "Dockerfile").read_text()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)
            if not m.group(0).lstrip().startswith("#")]


def test_dockerfile_builds_the_lambda_image_we_mean():
    ins = dockerfile_instructions(DOCKERFILE)
    # Global ARGs (ENCODER picks the final stage) may precede it: the first stage is the Lambda base.
    assert next(arg for op, arg in ins if op == "FROM").split()[0] == "public.ecr.aws/lambda/python:3.11"
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    pin = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert pin == "torch==2.13.0"
    assert "grep -E '^torch=='" in runs and "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "pip install -r ${LAMBDA_TASK_ROOT}/requirements.txt" in runs
    assert "requirements-dev" not in DOCKERFILE
    assert "download_model.py" in runs and "/opt/model" in runs
    env = " ".join(arg for op, arg in ins if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "MODEL_PATH=/opt/model" in env
    assert [arg for op, arg in ins if op == "CMD"] == ['["server.handler.handler"]']


def test_no_credentials_in_the_dockerfile():
    names = [m.group(1) for op, arg in dockerfile_instructions(DOCKERFILE) if op in ("ARG", "ENV")
             for m in re.finditer(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", arg)]
    assert {"MODEL_ID", "INDEX_DIR", "HF_HUB_OFFLINE"} <= set(names)
    secretish = re.compile(r"^AWS_|SECRET|PASSWORD|CREDENTIAL|(^|_)TOKEN$|(^|_)KEY$", re.I)
    assert [n for n in names if secretish.search(n)] == []
    assert not re.search(r"HF_TOKEN|AKIA[0-9A-Z]{16}", DOCKERFILE)


def test_cmd_handler_imports_from_what_the_image_copies():
    copied = {arg.split()[0].rstrip("/") for op, arg in dockerfile_instructions(DOCKERFILE) if op == "COPY"}
    assert {"clipsearch", "server"} <= copied
    module, func = json.loads(next(a for o, a in dockerfile_instructions(DOCKERFILE) if o == "CMD"))[0].rsplit(".", 1)
    assert (REPO / (module.replace(".", "/") + ".py")).is_file() and func == "handler"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "*" in ignored and {"!clipsearch/", "!server/", "!requirements.txt"} <= set(ignored)


def requirement_closure(path: Path) -> set[str]:
    """Normalised names of requirements.txt's distributions and everything they require."""
    todo = [Requirement(line.split("#")[0].strip()) for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if norm(req.name) in seen:
            continue
        seen.add(norm(req.name))
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for spec in requires:
            sub = Requirement(spec)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def requirements_only_site(dest: Path, closure: set[str]) -> list[str]:
    """A site-packages of symlinks to the installed files of `closure`'s distributions only."""
    dest.mkdir()
    linked = set()
    for dist in md.distributions():
        if norm(dist.metadata["Name"]) not in closure:
            continue
        for f in dist.files or []:
            top = f.parts[0]
            if top == ".." or top in linked:
                continue
            src = Path(dist.locate_file(top))
            if src.exists():
                (dest / top).symlink_to(src)
                linked.add(top)
    return sorted(linked)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.e2e
@pytest.mark.slow
def test_handler_runs_under_the_emulator_with_only_requirements_txt(tmp_path, tiny_encoder, tiny_model_dir):
    """The runtime's interpreter runs with -S (no site-packages at all) and a site-packages holding
    only requirements.txt's dependency closure: what a virtualenv built from it alone would hold."""
    from server.local import LocalStack

    closure = requirement_closure(REPO / "requirements.txt")
    linked = requirements_only_site(tmp_path / "site", closure)
    assert {"torch", "transformers", "awslambdaric", "pydantic", "faiss", "PIL"} <= set(linked)
    assert not {"psutil", "hypothesis", "pytest", "streamlit", "onnxruntime", "samcli"} & set(linked)
    build_index(tmp_path / "index", tiny_encoder, n=4)
    env = {"MODEL_PATH": str(tiny_model_dir), "INDEX_PATH": str(tmp_path / "index"), "TORCH_THREADS": "1",
           "PYTHONPATH": str(tmp_path / "site")}
    queries = [{"query": "two dogs", "input_type": "text"}, {"query": "doc01", "input_type": "id"},
               {"query": "http://169.254.169.254/", "input_type": "url"}, {"query": "x", "input_type": "?"},
               *[{"query": base64.b64encode(make_image(1, fmt=f)).decode(), "input_type": "image"}
                 for f in ("JPEG", "PNG", "GIF", "WEBP")]]
    with LocalStack(env=env, log=tmp_path / "log", python=[sys.executable, "-S"]) as stack:
        assert stack.ready_status == 200, (tmp_path / "log").read_text()[-3000:]
        statuses = [stack.invoke(q)["statusCode"] for q in queries]
        cmdline = stack.runtime_process().cmdline()
    assert statuses == [200, 200, 400, 400, 200, 200, 200, 200], (tmp_path / "log").read_text()[-3000:]
    assert cmdline[1] == "-S"


def test_model_download_keeps_the_hub_identity(tmp_path, monkeypatch, tiny_model_dir):
    """The image's /opt/model must load as the hub id the index recorded, not as 'model'."""
    import shutil

    import huggingface_hub

    from clipsearch.models import resolve_model_id
    from server import download_model

    calls = {}

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None):
            calls["listed"] = repo_id
            return ["config.json", "model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                    "open_clip_pytorch_model.bin", "tf_model.h5", "tokenizer.json"]

    def fake_snapshot(repo_id, revision=None, local_dir=None, allow_patterns=None):
        calls["patterns"] = allow_patterns
        shutil.copytree(tiny_model_dir, local_dir, dirs_exist_ok=True)
        (local_dir / "clipsearch_model.json").unlink(missing_ok=True)  # what the hub has: no such file
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert download_model.main(["openai/clip-vit-base-patch32", str(tmp_path / "model")]) == 0
    assert calls["listed"] == "openai/clip-vit-base-patch32"
    # transformers' safetensors only (not open_clip's copy, no .bin, .h5 or msgpack); SigLIP's
    # SentencePiece model (spiece.model) comes along
    assert calls["patterns"] == ["*.json", "*.txt", "*.model", "model*.safetensors"]
    assert resolve_model_id(str(tmp_path / "model")) == "openai/clip-vit-base-patch32"
    assert download_model.weight_patterns(["pytorch_model.bin", "config.json"]) == ["pytorch_model.bin"]
    assert download_model.weight_patterns(["weights.safetensors", "open_clip_model.safetensors"]) == ["*.safetensors"]
    assert download_model.weight_patterns(["open_clip_model.safetensors", "pytorch_model.bin"]) == ["pytorch_model.bin"]
    with pytest.raises(SystemExit, match="no safetensors"):
        download_model.weight_patterns(["tf_model.h5"])
