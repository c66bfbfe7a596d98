"""The Lambda entry point (`server.handler.handler`, named by the Dockerfile's CMD and the template).

Module scope runs once per container, at init: settings, the encoder (text tower; the image
tower too with PRELOAD_IMAGE_TOWER), the index (copied from INDEX_S3_URI first in embedded mode)
and the model check. Requests reuse them. An init failure is answered per request (503), never
raised here, so the runtime does not crash-loop.
"""

from __future__ import annotations

from typing import Any

from server.app import App

APP = App.from_env()


def handler(event: Any, context: Any) -> dict[str, Any]:
    return APP.handle(event, context)
