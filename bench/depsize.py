"""Installed size of a requirements file's dependency closure, read from the installed dists.

What an image built from that file would carry in site-packages (this venv's versions), so the
torch and ONNX variants of the server can be compared without building Docker images.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def requirement_names(path: str | Path) -> list[str]:
    """Top-level requirement names in a requirements file (follows `-r other.txt`)."""
    path = Path(path)
    names: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            names += requirement_names(path.parent / line.split(None, 1)[1])
        elif not line.startswith("-"):
            names.append(canonicalize_name(Requirement(line).name))
    return names


def closure(path: str | Path) -> dict[str, md.Distribution]:
    """Every installed distribution the file needs, transitively (markers evaluated, no extras)."""
    todo, seen = requirement_names(path), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # not installed here (e.g. a platform-specific dependency)
        seen[name] = dist
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def dist_bytes(dist: md.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if p.is_file() and not re.search(r"__pycache__", str(f)):
            total += p.stat().st_size
    return total


def installed_mb(path: str | Path) -> tuple[float, dict[str, float]]:
    """Total MB and the per-distribution MB of the closure of requirements file `path`."""
    sizes = {name: dist_bytes(d) / 2**20 for name, d in closure(path).items()}
    return sum(sizes.values()), dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def dir_mb(path: str | Path, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> float:
    """MB of the files under `path`; names starting with an `exclude` prefix left out, and only
    those starting with an `include` prefix counted when any is given."""
    return sum(f.stat().st_size for f in Path(path).rglob("*")
               if f.is_file() and not any(f.name.startswith(e) for e in exclude)
               and (not include or any(f.name.startswith(i) for i in include))) / 2**20
