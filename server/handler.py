"""The Lambda entry point (`server.handler.handler`, named by the Dockerfile's CMD and the template).

Module scope runs once per container, at init: settings, the encoder (text tower; the image
tower too with PRELOAD_IMAGE_TOWER), the index (copied from INDEX_S3_URI first in embedded mode)
and the model check. Requests reuse them. An init failure is answered per request (503), never
raised here, so the runtime does not crash-loop.
"""

from __future__ import annotations

import os

# Before numpy, torch or faiss load: one query at a time needs no BLAS/OpenMP thread pools, and
# their idle threads spin on the cores the text encoder needs (measured on 2 busy cores: encode
# p50 51 ms with one BLAS thread against 82-99 ms with the default pool). Explicit values win.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from typing import Any  # noqa: E402

from server.app import App  # noqa: E402

APP = App.from_env()


def handler(event: Any, context: Any) -> dict[str, Any]:
    return APP.handle(event, context)
