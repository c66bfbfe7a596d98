"""Settings from environment variables, read in one place.

Every variable is listed in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# CLIP ViT-B/32 trained on LAION-2B: OpenAI ViT-B/32's architecture and cost, MIT-licensed, and +9 points
# of recall on published benchmarks (docs/models.md says why it is the default).
DEFAULT_MODEL_ID = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
DEFAULT_API_URL = "http://localhost:8000/search"  # the local gateway of `make demo`

# The largest image a query can carry. A synchronous Lambda invocation's payload is at most 6 MB
# (Lambda quotas; the Invoke API refuses more with "Request must be smaller than 6291456 bytes"),
# however the image arrives: base64 in a JSON body (direct invocation, or POST /search), or
# raw bytes that API Gateway base64-encodes into the proxy event (binary media types). Base64
# takes 4 bytes per 3, and the event's envelope (headers twice, at most 10,240 bytes of header
# values per API Gateway's quotas, plus the request context) is budgeted at 32 KiB. API Gateway
# itself accepts 10 MB, but a larger body can never reach the function.
LAMBDA_PAYLOAD_BYTES = 6 * 1024 * 1024
EVENT_ENVELOPE_BYTES = 32 * 1024
DEFAULT_MAX_IMAGE_BYTES = (LAMBDA_PAYLOAD_BYTES - EVENT_ENVELOPE_BYTES) // 4 * 3  # 4,694,016


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    model_id: str | None = None  # None: DEFAULT_MODEL_ID, or what MODEL_PATH says it is
    model_path: str | None = None
    encoder: str = "torch"  # "torch" | "onnx"
    onnx_path: str | None = None
    onnx_text_int8: bool = False  # the ONNX encoder's int8 text tower (export with --int8-text)
    threads: int | None = None
    backend: str = "faiss"  # "faiss" | "opensearch"
    index_path: str = "data/index"
    # s3://bucket/prefix: the deployed function copies the embedded index from here to index_path.
    index_s3_uri: str | None = None
    hnsw_threshold: int = 50_000
    # How the query service holds the embedded index's vectors: float16 halves the memory with
    # the same results (clipsearch.index.half); ingest always writes float32.
    index_memory: str = "float16"  # "float16" | "float32"
    opensearch_url: str | None = None
    opensearch_index: str = "clipsearch"
    opensearch_auth: str = "none"  # "none" | "basic" | "sigv4"
    opensearch_service: str = "es"  # "es" | "aoss" (SigV4 service name)
    opensearch_user: str | None = None
    opensearch_password: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    # OpenSearch index creation (ingest); the server reads what the index's mapping says.
    opensearch_engine: str = "faiss"  # "faiss" | "lucene"
    opensearch_m: int = 32
    opensearch_ef_construction: int = 200
    opensearch_ef_search: int = 128
    opensearch_data_type: str = "float"  # "float" | "byte" (int8, quantised before upload)
    opensearch_mode: str | None = None  # None | "in_memory" | "on_disk"
    opensearch_compression: str | None = None  # e.g. "32x" with mode on_disk
    opensearch_shards: int = 1
    opensearch_replicas: int = 1
    opensearch_timeout: int = 10  # seconds per request (bulk and force-merge get longer)
    opensearch_force_merge: bool = False  # merge to one segment at the end of a load
    preload_image_tower: bool = False
    # What fits one invocation (above); a larger value only helps `url` queries, which fetch the image.
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = 40_000_000
    # Browser origins the handler echoes in Access-Control-Allow-Origin; empty = no CORS headers.
    cors_allow_origins: tuple[str, ...] = ()
    # Front-end (streamlit_app.py): where POST /search lives, its optional API key (x-api-key),
    # and how long to keep retrying while a cold Lambda warms up.
    api_url: str = DEFAULT_API_URL
    api_key: str | None = field(default=None, repr=False)
    api_retry_budget: float = 90.0

    @property
    def model_source(self) -> str:
        """What `from_pretrained` is given: a local checkpoint directory wins over a hub id."""
        return self.model_path or self.model_id or DEFAULT_MODEL_ID

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        get = lambda name, default=None: env.get(name) or default  # noqa: E731
        threads = _int(env, "TORCH_THREADS", 0) or None
        return cls(
            model_id=get("MODEL_ID"),
            model_path=get("MODEL_PATH"),
            encoder=get("ENCODER", "torch").lower(),
            onnx_path=get("ONNX_PATH"),
            onnx_text_int8=_bool(env, "ONNX_TEXT_INT8", False),
            threads=threads,
            backend=get("BACKEND", "faiss").lower(),
            index_path=get("INDEX_PATH", "data/index"),
            index_s3_uri=get("INDEX_S3_URI"),
            hnsw_threshold=_int(env, "HNSW_THRESHOLD", 50_000),
            index_memory=get("INDEX_MEMORY", "float16").lower(),
            opensearch_url=get("OPENSEARCH_URL"),
            opensearch_index=get("OPENSEARCH_INDEX", "clipsearch"),
            opensearch_auth=get("OPENSEARCH_AUTH", "none").lower(),
            opensearch_service=get("OPENSEARCH_SERVICE", "es").lower(),
            opensearch_user=get("OPENSEARCH_USER"),
            opensearch_password=get("OPENSEARCH_PASSWORD"),
            aws_region=get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
            opensearch_engine=get("OPENSEARCH_ENGINE", "faiss").lower(),
            opensearch_m=_int(env, "OPENSEARCH_M", 32),
            opensearch_ef_construction=_int(env, "OPENSEARCH_EF_CONSTRUCTION", 200),
            opensearch_ef_search=_int(env, "OPENSEARCH_EF_SEARCH", 128),
            opensearch_data_type=get("OPENSEARCH_DATA_TYPE", "float").lower(),
            opensearch_mode=(get("OPENSEARCH_MODE") or "").lower() or None,
            opensearch_compression=(get("OPENSEARCH_COMPRESSION") or "").lower() or None,
            opensearch_shards=_int(env, "OPENSEARCH_SHARDS", 1),
            opensearch_replicas=_int(env, "OPENSEARCH_REPLICAS", 1),
            opensearch_timeout=_int(env, "OPENSEARCH_TIMEOUT", 10),
            opensearch_force_merge=_bool(env, "OPENSEARCH_FORCE_MERGE", False),
            preload_image_tower=_bool(env, "PRELOAD_IMAGE_TOWER", False),
            max_image_bytes=_int(env, "MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 40_000_000),
            cors_allow_origins=tuple(o.strip() for o in env.get("CORS_ALLOW_ORIGINS", "").split(",") if o.strip()),
            api_url=get("CLIPSEARCH_API_URL", DEFAULT_API_URL).strip(),
            api_key=get("CLIPSEARCH_API_KEY"),
            api_retry_budget=_float(env, "CLIPSEARCH_RETRY_BUDGET", 90.0),
        )
