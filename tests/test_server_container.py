"""What can be proven about the container without a Docker engine (the image is never built here).

1. The Dockerfile: the Lambda Python base image (Python 3.12, Amazon Linux 2023), packages from
   the locks only (locks/*.txt, with their hashes, binary wheels, `pip check`), CPU-only torch
   from PyTorch's index at requirements.txt's pin, weights downloaded at build time, offline at
   run time, no credentials, and a CMD naming a handler module that the image copies in.
2. The torch image's packages on the image's Python: locks/torch.txt's wheels for the image's
   platform, installed by CPython 3.12 into a folder that is its only site-packages, all import
   there. torch 2.13.0+cpu for cp312 comes only from PyTorch's CPU index; where that cannot be
   reached (here) the handler is not run on that site, and the test says so.
3. The handler with ENCODER=torch under the real emulator on this venv's Python (3.11, not the
   image's): a site-packages of links to the files of requirements.txt's distributions and
   everything they require (nothing else), the interpreter started with -S so the shared venv's
   site-packages (with the dev tools) is not on its path; text, image (every format), id, URL and
   bad queries. An import of a dev-only package (psutil, pytest, streamlit ...) fails there.
The dependency resolution for the image's platform: tests/test_image_deps.py.
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

from scripts.locks import TORCH_CPU_INDEX, TORCH_LOCK, image_platform, read_lock

DOCKERFILE = (REPO / "Dockerfile").read_text()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)
            if not m.group(0).lstrip().startswith("#")]


def test_dockerfile_builds_the_lambda_image_we_mean():
    ins = dockerfile_instructions(DOCKERFILE)
    # Global ARGs (ENCODER picks the final stage) may precede it: the first stage is the Lambda base.
    assert next(arg for op, arg in ins if op == "FROM").split()[0] == "public.ecr.aws/lambda/python:3.12"
    assert image_platform().os == "Amazon Linux 2023"
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    pin = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert pin == "torch==2.13.0" and read_lock(REPO / TORCH_LOCK)["torch"].version == "2.13.0+cpu"
    assert "--index-url https://download.pytorch.org/whl/cpu -r /tmp/locks/torch-cpu.txt" in runs
    assert "requirements" not in runs and "requirements-dev" not in DOCKERFILE
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
    assert "*" in ignored and {"!clipsearch/", "!server/", "!locks/"} <= set(ignored)


def pip_installs(text: str) -> list[tuple[str, list[str]]]:
    """(stage, arguments) of every `pip install` in the Dockerfile's RUN instructions."""
    found, stage = [], ""
    for op, arg in dockerfile_instructions(text):
        if op == "FROM":
            stage = arg.split()[-1]
        elif op == "RUN":
            found += [(stage, part.split()[2:]) for part in arg.split("&&") if part.split()[:2] == ["pip", "install"]]
    return found


def test_dockerfile_installs_only_the_locks_with_their_hashes():
    installs = pip_installs(DOCKERFILE)
    locks = {args[args.index("-r") + 1]: (stage, args) for stage, args in installs}
    assert set(locks) == {"/tmp/locks/torch-cpu.txt", "/tmp/locks/torch.txt", "/tmp/locks/export.txt",
                          "/tmp/locks/onnx.txt"}
    assert [stage for stage, _ in locks.values()] == ["torch-base", "torch-base", "onnx-export", "runtime-onnx"]
    for lock, (stage, args) in locks.items():
        assert "--require-hashes" in args and "--only-binary=:all:" in args, lock
        index = args[args.index("--index-url") + 1]
        assert index == ("https://download.pytorch.org/whl/cpu" if lock.endswith("torch-cpu.txt")
                         else "https://pypi.org/simple"), lock
        assert ("--no-deps" in args) == lock.endswith("torch-cpu.txt"), lock  # torch's deps: locks/torch.txt
        assert (REPO / "locks" / Path(lock).name).is_file()
    copied = " ".join(arg for op, arg in dockerfile_instructions(DOCKERFILE) if op == "COPY")
    assert all(f"locks/{Path(lock).name}" in copied for lock in locks)
    runs = [arg for op, arg in dockerfile_instructions(DOCKERFILE) if op == "RUN" and "pip install" in arg]
    assert all("pip check" in run for run in runs)
    # The checker sees an unhashed install.
    assert pip_installs("FROM x AS a\nRUN pip install -r r.txt && pip check\n") == [("a", ["-r", "r.txt"])]


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
    """On this venv's Python (3.11) and packages, not the image's: the runtime's interpreter runs
    with -S (no site-packages at all) and a site-packages holding only requirements.txt's dependency
    closure, what a virtualenv built from it alone would hold. The image's Python: below."""
    from server.local import LocalLambda

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
    with LocalLambda(env=env, log=tmp_path / "log", python=[sys.executable, "-S"]) as stack:
        assert stack.ready_status == 200, (tmp_path / "log").read_text()[-3000:]
        statuses = [stack.invoke(q)["statusCode"] for q in queries]
        cmdline = stack.runtime_process().cmdline()
    assert statuses == [200, 200, 400, 400, 200, 200, 200, 200], (tmp_path / "log").read_text()[-3000:]
    assert cmdline[1] == "-S"


TORCH_IMAGE_MODULES = ["transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy", "faiss", "PIL",
                       "pydantic", "opensearchpy", "boto3", "awslambdaric", "sympy", "networkx", "jinja2", "fsspec",
                       "filelock", "clipsearch.config", "clipsearch.index.faiss_index", "server.errors"]


@pytest.mark.e2e
@pytest.mark.slow
def test_torch_image_packages_on_the_image_python(tmp_path, tmp_path_factory, tiny_encoder, tiny_model_dir):
    """locks/torch.txt's wheels for the image's platform, installed by the image's CPython into
    a folder that is its only site-packages, import there; with torch from locks/torch-cpu.txt
    the handler then runs under the emulator on it, as in the 3.11 test above."""
    import subprocess

    from image_support import image_python, install_site, lock_wheels, pip, session_dir, tail
    from server.local import LocalLambda

    platform = image_platform()
    python = image_python(platform.python)
    if python is None:
        pytest.skip(f"CPython {platform.python}, the image's Python, is not installed here (looked under "
                    f"~/.pyenv/versions and on PATH): the torch lock was not imported on it")
    wheels = session_dir(tmp_path_factory, "image-wheels")
    got = lock_wheels(platform, "locks/torch.txt", wheels)
    assert got.ok, tail(got.proc)
    site = session_dir(tmp_path_factory, f"site-torch-{platform.python}")
    installed = install_site(python, "locks/torch.txt", wheels, site)
    assert installed.returncode == 0, tail(installed)
    env = {"PYTHONPATH": f"{site}:{REPO}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    imported = subprocess.run([str(python), "-S", "-c", "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
                               *TORCH_IMAGE_MODULES], env=env, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr[-3000:]

    torch = pip("download", "--no-deps", "--require-hashes", "--retries", "1", "--timeout", "15",
                "--index-url", TORCH_CPU_INDEX, *platform.pip_args(), "--dest", str(tmp_path / "torch"),
                "-r", str(REPO / TORCH_LOCK))
    # Skip only when the index cannot be reached at all; a wrong hash or a missing wheel fails.
    unreachable = re.search(r"Failed to resolve '[^']+'[^)]*\)|NewConnectionError|ConnectTimeoutError|Network is "
                            r"unreachable|Connection refused", torch.stderr)
    if torch.returncode != 0 and unreachable:
        pytest.skip(f"torch {read_lock(REPO / TORCH_LOCK)['torch'].version} for {platform.abi} comes only from "
                    f"{TORCH_CPU_INDEX}, which this host cannot reach ({unreachable.group(0)}). Checked on Python "
                    f"{platform.python}: locks/torch.txt installs and {len(TORCH_IMAGE_MODULES)} of its modules "
                    f"import; not checked: torch itself and the handler with ENCODER=torch on that Python")
    assert torch.returncode == 0, tail(torch)
    added = pip("install", "--no-index", "--find-links", str(tmp_path / "torch"), "--no-deps", "--require-hashes",
                "--no-compile", "--target", str(tmp_path / "site-torch"), "-r", str(REPO / TORCH_LOCK), python=python)
    assert added.returncode == 0, tail(added)
    build_index(tmp_path / "index", tiny_encoder, n=4)
    env = {"MODEL_PATH": str(tiny_model_dir), "INDEX_PATH": str(tmp_path / "index"), "TORCH_THREADS": "1",
           "PYTHONPATH": f"{tmp_path / 'site-torch'}:{site}"}
    queries = [{"query": "two dogs", "input_type": "text"}, {"query": "doc01", "input_type": "id"},
               {"query": base64.b64encode(make_image(1, fmt="PNG")).decode(), "input_type": "image"},
               {"query": "x", "input_type": "?"}]
    with LocalLambda(env=env, log=tmp_path / "log", python=[str(python), "-S"]) as stack:
        assert stack.ready_status == 200, (tmp_path / "log").read_text()[-3000:]
        statuses = [stack.invoke(q)["statusCode"] for q in queries]
    assert statuses == [200, 200, 200, 400], (tmp_path / "log").read_text()[-3000:]


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


def test_the_dockerignore_reading_follows_docker_s_rules():
    from dockerignore import excluded, read_patterns

    # The exceptions example of Docker's .dockerignore reference: the last matching line decides.
    rules = read_patterns("# docs\n*.md\n!README*.md\nREADME-secret.md\n")
    assert [excluded(f, rules) for f in ("a.md", "README.md", "README-secret.md", "x.txt")] == [True, False, True, False]
    rules = read_patterns("*.md\nREADME-secret.md\n!README*.md\n")
    assert not excluded("README-secret.md", rules) and excluded("notes.md", rules)
    # A pattern also matches below a directory it names; "*" does not cross "/", "**" does.
    rules = read_patterns("*\n!server/\nserver/local/\n**/__pycache__\n")
    assert not excluded("server/app.py", rules) and excluded("server/local/stack.py", rules)
    assert excluded("server/__pycache__/app.cpython-312.pyc", rules) and excluded("README.md", rules)


def image_tree() -> list[str]:
    """The files of this checkout that the final stage's COPY instructions put in the image."""
    from dockerignore import context_files

    stages = re.split(r"(?m)^FROM ", DOCKERFILE)
    final = dockerfile_instructions("FROM " + stages[-1])
    sources = [arg.split()[0] for op, arg in final if op == "COPY" and not arg.startswith("--")]
    ignore = (REPO / ".dockerignore").read_text()
    return [f for src in sources for f in context_files(REPO, src.rstrip("/"), ignore)]


def test_the_image_holds_the_function_and_none_of_the_dev_tooling():
    tree = image_tree()
    assert {"server/handler.py", "server/app.py", "clipsearch/config.py"} <= set(tree)
    assert (REPO / "server" / "local" / "stack.py").is_file()
    assert [f for f in tree if f.startswith("server/local/")] == []
    importers = [f for f in tree if f.endswith(".py")
                 and re.search(r"(?m)^\s*(from|import)\s+server\.local\b", (REPO / f).read_text())]
    assert importers == [], "the image's code must not need the local emulator runner"
