"""The Lambda image's dependencies, checked for the platform the image runs on.

No Docker engine runs here, so the image is never built. What its `pip install` steps would do is
checked instead with the same pip against PyPI, for the image's platform (read from the
Dockerfile's FROM: CPython 3.12, Amazon Linux 2023's glibc 2.34, x86_64):
- every requirements set the image is built from resolves there (and the old python:3.11 base,
  Amazon Linux 2 with glibc 2.26, does not: onnxruntime has no wheel for it);
- the locks the Dockerfile installs (locks/*.txt, `make lock`) satisfy those requirements files,
  hold their whole dependency closure (every Requires-Dist of every locked wheel, evaluated for
  that platform, is pinned) and download with their hashes.
torch itself comes from PyTorch's CPU index, unreachable here: its pin and hash are checked as
text, its requirements (the CPU build's, read from the same release installed in this venv) as
part of the torch locks. The handler runs on the locks under the emulator in test_onnx.py and
test_server_container.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from image_support import download, lock_wheels, pip, requirements_input, session_dir, tail, unmet_requirements
from scripts.locks import (PYPI, PYPI_LOCKS, REPO, TORCH_LOCK, image_platform, platform_of, read_lock,
                           read_requirements, torch_cpu_hashes, torch_cpu_requires, torch_lock_text, torch_pin)

PLATFORM = image_platform()
TORCH_VERSION = torch_pin(read_requirements(REPO / "requirements.txt"))
LOCKS = {spec.path: spec for spec in PYPI_LOCKS}


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> Path:
    """One folder for every wheel downloaded for the image this session."""
    return session_dir(tmp_path_factory, "image-wheels")


# -- the platform --------------------------------------------------------------------------------
def test_the_image_is_python_312_on_amazon_linux_2023():
    assert PLATFORM.base_image == "public.ecr.aws/lambda/python:3.12"
    assert (PLATFORM.python, PLATFORM.os, PLATFORM.glibc, PLATFORM.arch) == ("3.12", "Amazon Linux 2023", (2, 34), "x86_64")
    # x86_64 only: the function's architecture in the template. An arm64 function would need
    # its own locks and checks.
    archs = re.findall(r"^\s*Architectures:\s*\[([^\]]*)\]", (REPO / "infra" / "template.yaml").read_text(), re.M)
    assert archs == ["x86_64"]
    old = platform_of("public.ecr.aws/lambda/python:3.11")
    assert (old.python, old.os, old.glibc) == ("3.11", "Amazon Linux 2", (2, 26))
    with pytest.raises(ValueError, match="not an AWS Lambda Python base image"):
        platform_of("public.ecr.aws/lambda/python:2.7")
    with pytest.raises(ValueError, match="share one"):
        image_platform("FROM public.ecr.aws/lambda/python:3.12 AS a\nFROM public.ecr.aws/lambda/python:3.11\n")


def test_platform_tags_are_those_of_its_glibc():
    tags = PLATFORM.manylinux_tags()
    assert tags[0] == "manylinux_2_34_x86_64" and tags[-1] == "linux_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_35_x86_64" not in tags
    assert tags.index("manylinux_2_17_x86_64") + 1 == tags.index("manylinux2014_x86_64")
    al2 = platform_of("public.ecr.aws/lambda/python:3.11").manylinux_tags()
    assert al2[0] == "manylinux_2_26_x86_64" and "manylinux_2_28_x86_64" not in al2
    assert PLATFORM.pip_args()[:8] == ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                                       "--abi", "cp312", "--platform"]


# -- the requirements sets resolve for the image -----------------------------------------------
REQUIREMENT_SETS = {  # requirements file -> what must be in its closure, and what must not
    "requirements-onnx.txt": ({"onnxruntime", "tokenizers", "awslambdaric", "faiss-cpu", "opensearch-py"},
                              {"transformers", "safetensors"}),
    "requirements.txt": ({"transformers", "safetensors", "sympy", "networkx", "awslambdaric"}, {"onnxruntime"}),
    "requirements-export.txt": ({"transformers", "onnx", "onnxruntime"}, set()),
}


@pytest.mark.slow
@pytest.mark.parametrize("req_file", REQUIREMENT_SETS)
def test_requirements_resolve_for_the_image_platform(req_file, wheels, tmp_path):
    """pip resolves the set from PyPI for the image's CPython and glibc, binary wheels only."""
    got = download(PLATFORM, wheels, "-r", str(requirements_input(req_file, tmp_path / "input.txt")))
    assert got.ok, f"{req_file} does not resolve for {PLATFORM.base_image}:\n{tail(got.proc)}"
    names = {str(parse_wheel_filename(f.name)[0]) for f in got.files}
    must, must_not = REQUIREMENT_SETS[req_file]
    assert must <= names and not must_not & names
    assert "torch" not in names and not [n for n in names if n.startswith("nvidia")]  # no CUDA build
    if torch_pin(read_requirements(REPO / req_file)):
        # torch itself (PyTorch's CPU index, unreachable here): its release has a wheel for the
        # image's CPython and glibc on PyPI, whose linux wheels carry the same tags as the CPU ones.
        assert torch_wheels_for(PLATFORM), f"no torch {TORCH_VERSION} wheel for {PLATFORM.base_image} on PyPI"


def torch_wheels_for(platform) -> list[str]:
    """PyPI's torch TORCH_VERSION wheel files a pip on `platform` accepts (the index only, no download)."""
    request = urllib.request.Request(f"{PYPI}/torch/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        files = [f["filename"] for f in json.load(reply)["files"]]
    accepted = set(platform.manylinux_tags())
    return [name for name in files if name.endswith(".whl") and name.startswith(f"torch-{TORCH_VERSION}-")
            and any(t.interpreter == platform.abi and t.platform in accepted for t in parse_wheel_filename(name)[3])]


def test_the_amazon_linux_2_base_cannot_install_the_onnx_requirements(tmp_path):
    """Why the image left python:3.11: on glibc 2.26 onnxruntime >= 1.18 has no wheel at all."""
    old = platform_of("public.ecr.aws/lambda/python:3.11")
    got = download(old, tmp_path, "--no-deps", "onnxruntime>=1.18")
    assert not got.ok
    assert "No matching distribution found for onnxruntime>=1.18" in got.proc.stderr, tail(got.proc)
    assert download(PLATFORM, tmp_path, "--no-deps", "onnxruntime>=1.18").ok  # the same ask on AL2023
    assert torch_wheels_for(old) == [] and torch_wheels_for(PLATFORM)  # torch: manylinux_2_28 only


# -- the locks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_satisfies_its_requirements_file(lock):
    spec = LOCKS[lock]
    pins = read_lock(REPO / lock)
    assert pins and all(pin.hashes for pin in pins.values())
    assert "torch" not in pins and not [n for n in pins if n.startswith("nvidia")]
    for req in read_requirements(REPO / spec.requirements):
        name = canonicalize_name(req.name)
        if name == "torch":
            continue  # locks/torch-cpu.txt
        assert name in pins, f"{lock} lacks {req} from {spec.requirements}: run `make lock`"
        assert req.specifier.contains(pins[name].version, prereleases=True), \
            f"{lock} pins {name}=={pins[name].version}, {spec.requirements} asks {req}: run `make lock`"


def test_the_locks_agree_with_each_other_and_torch():
    locks = {lock: read_lock(REPO / lock) for lock in LOCKS}
    versions: dict[str, set[str]] = {}
    for pins in locks.values():
        for name, pin in pins.items():
            versions.setdefault(name, set()).add(pin.version)
    assert {n: v for n, v in versions.items() if len(v) > 1} == {}  # one version per package in every image
    # The export stage installs its lock over torch-base's: it must hold all of it.
    assert set(locks["locks/torch.txt"]) <= set(locks["locks/export.txt"])
    # The ONNX runtime and the export that checks the graph run the same onnxruntime.
    spec = {str(r.specifier) for f in ("requirements-onnx.txt", "requirements-export.txt")
            for r in read_requirements(REPO / f) if r.name == "onnxruntime"}
    assert len(spec) == 1
    torch = read_lock(REPO / TORCH_LOCK)
    assert list(torch) == ["torch"] and torch["torch"].version == f"{TORCH_VERSION}+cpu"
    assert len(torch["torch"].hashes) >= 1
    # The file whose hash it holds is one the image's pip accepts.
    wheels = re.findall(r"^#\s+(torch-\S+\.whl)$", (REPO / TORCH_LOCK).read_text(), re.M)
    assert wheels and all(any(t.interpreter == PLATFORM.abi and t.platform in PLATFORM.manylinux_tags()
                              for t in parse_wheel_filename(w)[3]) for w in wheels), wheels


@pytest.mark.slow
@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_downloads_with_its_hashes_and_holds_its_closure(lock, wheels):
    """What the Dockerfile's `pip install --require-hashes -r LOCK` fetches, for the image's platform.

    pip in hash-checking mode refuses any dependency the lock does not pin and any file whose
    hash it does not list; then every Requires-Dist of every fetched wheel (markers evaluated for
    the image, CPU torch's own beside the torch locks) must be met by the lock's pins, as a
    `--no-deps` install of the lock would need.
    """
    got = lock_wheels(PLATFORM, lock, wheels)
    assert got.ok, f"{lock} does not install for {PLATFORM.base_image}:\n{tail(got.proc)}"
    pins = read_lock(REPO / lock)
    fetched = {str(parse_wheel_filename(f.name)[0]): parse_wheel_filename(f.name)[1] for f in got.files}
    assert fetched == {name: Version(pin.version) for name, pin in pins.items()}  # exactly the lock, no more
    beside = torch_cpu_requires(TORCH_VERSION) if lock != "locks/onnx.txt" else []
    assert unmet_requirements(PLATFORM, pins, got.files, beside) == []


@pytest.mark.slow
def test_an_incomplete_lock_is_refused(wheels, tmp_path):
    """The two checks above fail when the lock misses a dependency (here requests' idna)."""
    got = lock_wheels(PLATFORM, "locks/onnx.txt", wheels)
    assert got.ok, tail(got.proc)
    text = re.sub(r"\\\n", " ", (REPO / "locks/onnx.txt").read_text())
    short = tmp_path / "lock.txt"
    short.write_text("\n".join(line for line in text.splitlines() if not line.startswith("idna==")) + "\n")
    pins = read_lock(short)
    problems = unmet_requirements(PLATFORM, pins, got.files)
    assert [p for p in problems if p.startswith("requests needs idna") and p.endswith("not in the lock")], problems
    refused = pip("download", "--no-index", "--find-links", str(wheels), *PLATFORM.pip_args(),
                  "--dest", str(tmp_path / "out"), "--require-hashes", "-r", str(short))
    assert refused.returncode != 0 and "idna" in refused.stderr, tail(refused)


# -- make lock ----------------------------------------------------------------------------------
def test_the_torch_cpu_pin_is_read_from_the_index_page(tmp_path):
    """scripts.locks reads the CPU index's simple page (PEP 503: one <a href="...FILE#sha256=...">
    per file, the name URL-quoted) and keeps only the image's wheel of the pinned release."""
    digest = {tag: f"{i:064x}" for i, tag in enumerate(["cp312-cp312-manylinux_2_28_x86_64", "cp311-cp311-manylinux_2_28_x86_64",
                                                          "cp312-cp312-manylinux_2_28_aarch64", "cp312-cp312-win_amd64",
                                                          "cp312-cp312-manylinux_2_35_x86_64"], start=1)}
    page = "".join(f'<a href="/whl/cpu/torch-2.13.0%2Bcpu-{tag}.whl#sha256={d}">x</a>\n' for tag, d in digest.items())
    page += f'<a href="/whl/cpu/torch-2.12.0%2Bcpu-cp312-cp312-manylinux_2_28_x86_64.whl#sha256={"f" * 64}">x</a>\n'
    found = torch_cpu_hashes(page, "2.13.0", PLATFORM)
    assert found == {"torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl": digest["cp312-cp312-manylinux_2_28_x86_64"]}
    text = torch_lock_text("2.13.0", found)
    lock = tmp_path / "torch-cpu.txt"
    lock.write_text(text)
    (pin,) = read_lock(lock).values()
    assert (pin.name, pin.version, pin.hashes) == ("torch", "2.13.0+cpu", (digest["cp312-cp312-manylinux_2_28_x86_64"],))
    assert re.findall(r"^#\s+(torch-\S+\.whl)$", text, re.M) == list(found)


@pytest.mark.slow
def test_make_lock_reproduces_the_committed_locks(tmp_path):
    """`make lock` runs and changes nothing on this checkout: every lock is a fixed point of it (uv
    keeps the pins that still resolve together and rewrites hashes, closure and annotations from
    the index: a hand-edited pin or hash, or a lock left behind its requirements, shows up here)."""
    for name in ["Dockerfile", *(p.name for p in REPO.glob("requirements*.txt"))]:
        (tmp_path / name).write_text((REPO / name).read_text())
    (tmp_path / "locks").mkdir()
    for lock in REPO.glob("locks/*.txt"):
        (tmp_path / "locks" / lock.name).write_text(lock.read_text())
    out = subprocess.run([sys.executable, "-m", "scripts.locks", "--root", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    changed = [lock.name for lock in REPO.glob("locks/*.txt")
               if (tmp_path / "locks" / lock.name).read_text() != lock.read_text()]
    assert changed == [], f"`make lock` rewrites {changed}: commit its output"
