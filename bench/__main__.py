"""`make bench`: run every benchmark module (bench/*_bench.py) in turn, one process each.

    python -m bench                 # all of them, full size
    python -m bench --quick         # fewer repeats and smaller collections
    python -m bench core server     # only these (module names without _bench)

Each module prints its figures and writes bench/results/<name>.json. One process per module keeps
one benchmark's memory and threads from skewing the next; a failing module is reported and the
rest still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def modules() -> list[str]:
    return sorted(p.stem.removesuffix("_bench") for p in HERE.glob("*_bench.py"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(modules())})")
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = ap.parse_args(argv)
    names = args.names or modules()
    unknown = sorted(set(names) - set(modules()))
    if unknown:
        ap.error(f"no benchmark named {', '.join(unknown)}: choose from {', '.join(modules())}")
    failed = []
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", f"bench.{name}_bench"] + (["--quick"] if args.quick else [])
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"=== bench {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
