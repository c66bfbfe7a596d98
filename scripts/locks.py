"""The Lambda image's dependency locks, resolved for the platform the image runs on.

    python -m scripts.locks              # `make lock`: rewrite locks/*.txt from requirements*.txt
    python -m scripts.locks --upgrade    # `make lock UPGRADE=1`: also move pins to newer releases

The Dockerfile installs nothing but these files, with `pip install --require-hashes`, so an image
built next month holds what the tests checked today:

    locks/onnx.txt       requirements-onnx.txt          the ONNX image's runtime (the default)
    locks/torch.txt      requirements.txt, torch aside  the torch image's runtime
    locks/export.txt     requirements-export.txt, idem  the builder stage that exports to ONNX
    locks/torch-cpu.txt  torch itself, the CPU build    from PyTorch's CPU index, --no-deps

Each is resolved by uv from PyPI for the image's platform (`ImagePlatform`, read from the
Dockerfile's FROM): its CPython version, the manylinux tags its glibc accepts, x86_64, binary
wheels only. uv writes the hashes of every file of each pinned release. The locks after the
first are compiled with the earlier ones as constraints, so a package two images share has one
version in both. An existing lock's pins are kept unless `--upgrade` (uv prefers the versions in
its output file), so `make lock` after a requirements change moves only what it must.

torch is not on PyPI in the build the image needs: PyPI's linux x86_64 wheels of torch are the
CUDA build and require the nvidia-* packages (GBs); the image takes the CPU build from
https://download.pytorch.org/whl/cpu. The PyPI locks therefore leave torch out and resolve its
own requirements in its place (the CPU build's Requires-Dist, read from the same release
installed in this venv), and locks/torch-cpu.txt pins torch with its hash, read from the CPU
index's page. Where that index cannot be reached, an existing torch-cpu lock of the same version
is kept, and a new torch pin stops `make lock` with what to write by hand.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# The OS under each AWS Lambda Python base image, and that OS's glibc. Sources:
# - "Building Lambda functions with Python" (https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html),
#   the runtime table: python3.13 and python3.12 run on Amazon Linux 2023, python3.11 on Amazon Linux 2.
# - "Improved toolchain: gcc, binutils, and glibc" (https://docs.aws.amazon.com/linux/al2023/ug/glibc-gcc-and-binutils.html):
#   glibc 2.26 on AL2, 2.34 on AL2023 (and "Core toolchain packages glibc, gcc, binutils",
#   https://docs.aws.amazon.com/linux/al2023/ug/core-glibc.html: glibc 2.34 for AL2023's life).
# Unknown tags are refused rather than guessed.
LAMBDA_PYTHON_OS = {"3.11": "Amazon Linux 2", "3.12": "Amazon Linux 2023", "3.13": "Amazon Linux 2023"}
GLIBC = {"Amazon Linux 2": (2, 26), "Amazon Linux 2023": (2, 34)}
LAMBDA_PYTHON_IMAGE = re.compile(r"public\.ecr\.aws/lambda/python:(\d+\.\d+)(?:-(x86_64|arm64))?")
# Legacy names of three manylinux_2_x tags (PEP 513, 571, 599), as packaging's _manylinux.py has them.
LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


@dataclass(frozen=True)
class ImagePlatform:
    """Where the image's Python packages run: CPython version, OS, glibc, architecture."""

    base_image: str
    python: str  # "3.12"
    os: str
    glibc: tuple[int, int]
    arch: str = "x86_64"

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def manylinux_tags(self) -> list[str]:
        """Every platform tag a pip on this glibc and arch accepts, best first.

        As packaging's `_manylinux.platform_tags` yields them on such a host: manylinux_2_N down
        to 2_5 on x86_64 (2_17 elsewhere), each legacy alias after its 2_N, then linux_ARCH.
        """
        major, newest = self.glibc
        oldest = 5 if self.arch in ("x86_64", "i686") else 17
        tags = []
        for minor in range(newest, oldest - 1, -1):
            tags.append(f"manylinux_{major}_{minor}_{self.arch}")
            if (major, minor) in LEGACY_MANYLINUX:
                tags.append(f"{LEGACY_MANYLINUX[major, minor]}_{self.arch}")
        return tags + [f"linux_{self.arch}"]

    def pip_args(self) -> list[str]:
        """pip options that resolve for this platform instead of the running interpreter's."""
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp", "--abi", self.abi]
        for tag in self.manylinux_tags():
            args += ["--platform", tag]
        return args

    @property
    def uv_platform(self) -> str:
        return f"{self.arch}-manylinux_{self.glibc[0]}_{self.glibc[1]}"

    def markers(self) -> dict[str, str]:
        """The environment markers of this platform (PEP 508), for evaluating Requires-Dist."""
        return {"python_version": self.python, "python_full_version": f"{self.python}.0", "os_name": "posix",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": self.arch,
                "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def platform_of(base_image: str) -> ImagePlatform:
    m = LAMBDA_PYTHON_IMAGE.fullmatch(base_image)
    if not m or m.group(1) not in LAMBDA_PYTHON_OS:
        raise ValueError(f"{base_image!r} is not an AWS Lambda Python base image this project knows "
                         f"(known: python:{', python:'.join(LAMBDA_PYTHON_OS)})")
    os_name = LAMBDA_PYTHON_OS[m.group(1)]
    return ImagePlatform(base_image, m.group(1), os_name, GLIBC[os_name], "aarch64" if m.group(2) == "arm64" else "x86_64")


def image_platform(dockerfile: str | None = None) -> ImagePlatform:
    """The platform of the Dockerfile's Lambda base image; every stage must use the same one."""
    text = dockerfile if dockerfile is not None else (REPO / "Dockerfile").read_text()
    bases = {m.group(1) for m in re.finditer(r"^\s*FROM\s+(\S+)", text, re.M | re.I)
             if LAMBDA_PYTHON_IMAGE.match(m.group(1))}
    if len(bases) != 1:
        raise ValueError(f"the Dockerfile's stages must share one Lambda Python base image, found {sorted(bases)}")
    return platform_of(bases.pop())


# ---- what each lock holds --------------------------------------------------------------------
@dataclass(frozen=True)
class LockSpec:
    path: str  # relative to the repository
    requirements: str
    purpose: str


PYPI_LOCKS = (
    LockSpec("locks/onnx.txt", "requirements-onnx.txt", "the ONNX image's runtime (ENCODER=onnx, the default)"),
    LockSpec("locks/torch.txt", "requirements.txt", "the torch image's runtime (ENCODER=torch), torch aside"),
    LockSpec("locks/export.txt", "requirements-export.txt", "the builder stage's ONNX export, torch aside"),
)
TORCH_LOCK = "locks/torch-cpu.txt"


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements of a requirements file, following `-r other.txt`; options are ignored."""
    reqs: list[Requirement] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            reqs += read_requirements(path.parent / line.split(None, 1)[1])
        elif line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


def torch_pin(reqs: list[Requirement]) -> str | None:
    """The torch version a requirements list pins (`torch==X`), None when it has no torch."""
    pins = [r for r in reqs if canonicalize_name(r.name) == "torch"]
    if not pins:
        return None
    spec = str(pins[0].specifier)
    if not spec.startswith("==") or "," in spec or "*" in spec:
        raise ValueError(f"torch must be pinned with == (an open torch pulls a CUDA build): {pins[0]}")
    return spec[2:]


def torch_cpu_requires(version: str) -> list[str]:
    """The CPU build's own requirements (no extras), from that release as installed here.

    PyPI's torch of the same version is the CUDA build, with other requirements (nvidia-*), so
    its metadata cannot stand in; the CPU wheel's is only here or on the unreachable CPU index.
    """
    installed = md.version("torch")
    if installed != f"{version}+cpu":
        raise SystemExit(f"the torch pin is {version} but this venv has torch {installed}: install "
                         f"torch=={version}+cpu (PyTorch's CPU index) so its requirements can be read")
    return [r for r in md.requires("torch") or [] if "extra" not in str(Requirement(r).marker or "")]


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """A lock's `name==version --hash=...` entries by canonical name."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        if not m:
            raise ValueError(f"{path.name}: not a hashed exact pin: {line!r}")
        name = canonicalize_name(m.group(1))
        pins[name] = Pin(name, m.group(2), tuple(re.findall(r"sha256:([0-9a-f]{64})", m.group(3))))
    return pins


# ---- writing them ------------------------------------------------------------------------------
def compile_lock(root: Path, spec: LockSpec, platform: ImagePlatform, before: list[LockSpec], uv: str,
                 upgrade: bool) -> None:
    """Resolve `spec.requirements` (torch replaced by its requirements) into `spec.path` with uv.

    Runs in a scratch copy of the inputs so the file's annotations read `-r requirements.txt`,
    `-r torch-X+cpu.requires.txt`, `-c locks/onnx.txt` rather than temporary paths.
    """
    reqs = read_requirements(root / spec.requirements)
    version = torch_pin(reqs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "locks").mkdir()
        inputs = [spec.requirements]
        (work / spec.requirements).write_text("".join(
            f"{r}\n" for r in reqs if canonicalize_name(r.name) != "torch"))
        if version:
            inputs.append(f"torch-{version}+cpu.requires.txt")
            (work / inputs[-1]).write_text("".join(f"{r}\n" for r in torch_cpu_requires(version)))
        for lock in [*before, spec]:
            if (root / lock.path).exists():
                shutil.copy(root / lock.path, work / lock.path)
        cmd = [uv, "pip", "compile", *inputs, "--output-file", spec.path, "--no-config", "--quiet",
               "--python-version", platform.python, "--python-platform", platform.uv_platform,
               "--only-binary", ":all:", "--generate-hashes", "--index-url", PYPI,
               "--custom-compile-command", "make lock"]
        for lock in before:
            cmd += ["--constraint", lock.path]
        if upgrade:
            cmd.append("--upgrade")
        subprocess.run(cmd, cwd=work, check=True)
        shutil.copy(work / spec.path, root / spec.path)


def torch_cpu_hashes(page: str, version: str, platform: ImagePlatform) -> dict[str, str]:
    """{wheel file name: sha256} of torch VERSION+cpu for the platform, from an index page.

    The page is a simple repository page (PEP 503): one `<a href="...FILE#sha256=DIGEST">` per file.
    """
    accepted = set(platform.manylinux_tags())
    found = {}
    for href in re.findall(r'href="([^"]+)"', page):
        name, _, digest = urllib.parse.unquote(href.rsplit("/", 1)[-1]).partition("#sha256=")
        if not name.endswith(".whl") or not re.fullmatch(r"[0-9a-f]{64}", digest):
            continue
        _, wheel_version, _, tags = parse_wheel_filename(name)
        if str(wheel_version) == f"{version}+cpu" and any(
                t.interpreter == platform.abi and t.platform in accepted for t in tags):
            found[name] = digest
    return found


def torch_lock_text(version: str, hashes: dict[str, str]) -> str:
    lines = [f"# torch for the torch image and the builder stage: the CPU build, from {TORCH_CPU_INDEX}",
             "# (PyPI's linux torch is the CUDA build). Installed with --no-deps: its requirements are",
             "# pinned in locks/torch.txt and locks/export.txt. Written by `make lock` from the index's page:",
             *[f"#   {name}" for name in sorted(hashes)],
             f"torch=={version}+cpu \\",
             " \\\n".join(f"    --hash=sha256:{h}" for h in sorted(hashes.values()))]
    return "\n".join(lines) + "\n"


def write_torch_lock(root: Path, version: str, platform: ImagePlatform) -> None:
    path = root / TORCH_LOCK
    if path.exists() and read_lock(path).get("torch", Pin("", "", ())).version == f"{version}+cpu":
        print(f"{TORCH_LOCK}: torch {version}+cpu already pinned, kept")
        return
    try:
        with urllib.request.urlopen(f"{TORCH_CPU_INDEX}/torch/", timeout=30) as reply:
            hashes = torch_cpu_hashes(reply.read().decode(), version, platform)
    except OSError as exc:
        raise SystemExit(f"{TORCH_CPU_INDEX} cannot be reached ({exc}): write {TORCH_LOCK} by hand, "
                         f"torch=={version}+cpu with the sha256 of its {platform.abi} manylinux "
                         f"{platform.arch} wheel from that index's page") from exc
    if not hashes:
        raise SystemExit(f"{TORCH_CPU_INDEX} has no torch {version}+cpu wheel for {platform.abi} {platform.arch}")
    path.write_text(torch_lock_text(version, hashes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.locks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upgrade", action="store_true", help="move every pin to the newest release allowed")
    ap.add_argument("--root", type=Path, default=REPO, help="the checkout to lock (default: this one)")
    args = ap.parse_args(argv)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not uv:
        raise SystemExit("uv is missing: pip install -r requirements-dev.txt")
    platform = image_platform((args.root / "Dockerfile").read_text())
    print(f"locking for {platform.base_image}: CPython {platform.python}, {platform.os} "
          f"(glibc {platform.glibc[0]}.{platform.glibc[1]}), {platform.arch}")
    (args.root / "locks").mkdir(exist_ok=True)
    for i, spec in enumerate(PYPI_LOCKS):
        print(f"{spec.path}: {spec.requirements}, {spec.purpose}")
        compile_lock(args.root, spec, platform, list(PYPI_LOCKS[:i]), uv, args.upgrade)
    version = torch_pin(read_requirements(args.root / "requirements.txt"))
    if version:
        write_torch_lock(args.root, version, platform)
    return 0


if __name__ == "__main__":
    sys.exit(main())
