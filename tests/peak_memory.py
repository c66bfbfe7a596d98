"""Peak memory of preprocessing extreme images, measured in a fresh process.

A 1x15000 JPEG is 4 KB; resized whole to a 224-pixel short side before the crop it becomes a
224 x 3,360,000 image, about 3 GB. The child process measures how far its peak RSS (ru_maxrss)
grows while it encodes such images, after a warm-up on an ordinary photo has allocated the
model's own buffers. Its address space is capped 1 GiB above where it stands after the warm-up,
so a whole-image resize fails at once (MemoryError) instead of taking 3 GB from the test host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTREME_SIZES = ((1, 15000), (15000, 1))

_CHILD = r"""
import io, json, resource, sys
from PIL import Image

kind, source = sys.argv[1], sys.argv[2]
from clipsearch.images import decode_image

def jpeg(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buf, "JPEG")
    return buf.getvalue()

if kind == "torch":
    from clipsearch.models.torch_encoder import TorchEncoder
    enc = TorchEncoder(source, threads=1, load=("vision",))
    run = lambda data: enc.encode_images([decode_image(data)])
elif kind == "onnx":
    from clipsearch.models.onnx_encoder import OnnxEncoder
    enc = OnnxEncoder(source, threads=1, load=("vision",))
    run = lambda data: enc.encode_images([decode_image(data)])
else:  # ingest's decode stage: bytes to a uint8 crop
    from clipsearch.models.preprocess import PreprocessConfig
    from ingest.decode import DecodeLimits, decode_one
    cfg, limits = PreprocessConfig(), DecodeLimits(10**7, 40_000_000)
    def run(data):
        out = decode_one(data, cfg, limits)
        if out.error:
            raise RuntimeError(out.error)
        return out.crop

run(jpeg((300, 200)))  # warm-up: the model's buffers, the decoders' tables
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
base, growth = peak(), {}
for size in json.loads(sys.argv[3]):
    out = run(jpeg(tuple(size)))
    growth["x".join(map(str, size))] = peak() - base
print(json.dumps({"growth": growth, "shape": list(getattr(out, "shape", ()))}))
"""


def preprocess_peak_growth(kind: str, source: str | Path = "") -> dict[str, int]:
    """Peak RSS growth in bytes per extreme size for `kind` ("torch", "onnx" or "ingest")."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(source), json.dumps(EXTREME_SIZES)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{kind}: the child failed (a whole-image resize hits its 1 GiB cap):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth"]
