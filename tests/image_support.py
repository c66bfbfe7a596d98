"""Helpers for the tests of the Lambda image's dependencies (no Docker engine here).

pip is run as the image runs it, against PyPI only, but told the image's platform (its CPython,
the manylinux tags of its glibc, x86_64) instead of this machine's. This host's pip configuration
stays out (its local wheel mirrors, find-links and constraints; the image has none of them):
`--isolated` ignores PIP_* variables and the user's file, PIP_CONFIG_FILE=os.devnull every
configuration file, the site-wide one included (pip's configuration.py). Wheels are downloaded once per session into one folder that every lock shares
(pip checks an already-downloaded file against the lock's hashes before reusing it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.locks import PYPI, REPO, ImagePlatform, Pin, read_requirements, torch_cpu_requires, torch_pin

PIP_TIMEOUT_S = 540  # under pytest.ini's 600 s per test


def pip(*args: str, python: str | Path = sys.executable, timeout: float = PIP_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([str(python), "-m", "pip", "--isolated", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def requirements_input(req_file: str, dest: Path) -> Path:
    """`req_file`'s requirements with torch replaced by the CPU build's own requirements.

    The image takes torch from PyTorch's CPU index, which cannot be reached here; PyPI's torch is
    the CUDA build (other requirements, a 500 MB wheel). What PyPI must provide is the rest.
    """
    reqs = read_requirements(REPO / req_file)
    version = torch_pin(reqs)
    lines = [str(r) for r in reqs if canonicalize_name(r.name) != "torch"]
    if version:
        lines += torch_cpu_requires(version)
    dest.write_text("".join(f"{line}\n" for line in lines))
    return dest


@dataclass
class Download:
    proc: subprocess.CompletedProcess
    files: list[Path]  # the wheels this run resolved to, downloaded now or before

    @property
    def ok(self) -> bool:
        return self.proc.returncode == 0


def download(platform: ImagePlatform, dest: Path, *args: str) -> Download:
    """`pip download` for the image's platform from PyPI into `dest` (shared, reused files checked)."""
    proc = pip("download", "--index-url", PYPI, *platform.pip_args(), "--dest", str(dest), *args)
    names = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", proc.stdout)
    return Download(proc, [dest / Path(n).name for n in names])


_DOWNLOADS: dict[tuple[str, str], Download] = {}


def session_dir(tmp_path_factory, name: str) -> Path:
    """A folder shared by every test module of the session (wheels, installed sites)."""
    path = tmp_path_factory.getbasetemp() / name
    path.mkdir(exist_ok=True)
    return path


def lock_wheels(platform: ImagePlatform, lock: str, wheels: Path) -> Download:
    """The wheels of a lock for the image, with its hashes (once per session and lock)."""
    key = (str(wheels), lock)
    if key not in _DOWNLOADS:
        _DOWNLOADS[key] = download(platform, wheels, "--require-hashes", "-r", str(REPO / lock))
    return _DOWNLOADS[key]


def wheel_metadata(path: Path) -> dict:
    """A wheel's METADATA headers (Name, Version, Requires-Dist ...)."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return Parser().parsestr(zf.read(name).decode())


def unmet_requirements(platform: ImagePlatform, pins: dict[str, Pin], wheels: list[Path],
                       beside: list[str] = ()) -> list[str]:
    """What the wheels' Requires-Dist, for the image's platform, ask that the pins do not give.

    `beside`: requirements of something installed next to them (the CPU torch's, for the torch
    locks). An extra asked for (`x[y]`) brings in x's requirements under that extra.
    """
    requires = {}
    for wheel in wheels:
        meta = wheel_metadata(wheel)
        requires[canonicalize_name(meta["Name"])] = meta.get_all("Requires-Dist") or []
    todo = [(Requirement(r), "torch (CPU build)", "") for r in beside]
    todo += [(Requirement(r), dist, "") for dist, reqs in requires.items() for r in reqs]
    followed: set[tuple[str, str]] = set()
    problems = set()
    while todo:
        req, by, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**platform.markers(), "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        pin = pins.get(name)
        if pin is None:
            problems.add(f"{by} needs {req}: not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.add(f"{by} needs {req}: the lock has {pin.version}")
        for wanted in req.extras - {e for n, e in followed if n == name}:
            followed.add((name, wanted))
            todo += [(Requirement(r), f"{name}[{wanted}]", wanted) for r in requires.get(name, [])]
    return sorted(problems)


def image_python(version: str) -> Path | None:
    """A CPython `version` interpreter on this machine (pyenv's first, then PATH; not pyenv's shims)."""
    import shutil

    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"), reverse=True)
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:
        candidates.append(Path(found))
    for python in candidates:
        out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip() == version:
            return python
    return None


_SITES: dict[tuple[str, str], subprocess.CompletedProcess] = {}


def install_site(python: Path, lock: str, wheels: Path, dest: Path) -> subprocess.CompletedProcess:
    """The lock installed with the image's Python into `dest` (a site-packages), from the downloaded
    wheels only: what the image's `pip install --require-hashes -r LOCK` puts in its site-packages."""
    key = (str(dest), lock)
    if key not in _SITES:
        proc = pip("install", "--no-index", "--find-links", str(wheels), "--require-hashes", "--no-compile",
                   "--target", str(dest), "-r", str(REPO / lock), python=python)
        _SITES[key] = proc
    return _SITES[key]
