"""Settings from environment variables, read in one place.

Settings come in sections, one per consumer: the encoder loader takes `ModelSettings`,
`open_index` takes `IndexSettings` (and `OpenSearchSettings` for that backend), the query
service takes `LimitSettings` and `ServerSettings`; the front-end's section is
`frontend.config.FrontendSettings`. Each field names its variable and default once, with `env()`;
`Section.from_env` reads every field of a section, and `Settings.from_env` reads all of the
core's sections:

    settings = Settings.from_env()          # the aggregate: .model, .index, .opensearch, ...
    encoder = load_encoder(settings.model)
    limits = LimitSettings.from_env()       # one section alone

An unset or blank variable gives the field's default; a value that does not parse is a
ValueError naming the variable ("HNSW_THRESHOLD must be an integer, got 'many'").
Every variable is listed in the README's configuration table (tests/test_config.py checks both ways).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

# CLIP ViT-B/32 trained on LAION-2B: OpenAI ViT-B/32's architecture and cost, MIT-licensed, and +9 points
# of recall on published benchmarks (docs/models.md says why it is the default).
DEFAULT_MODEL_ID = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"

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


# -- parsers: raw text -> value; a ValueError's text says what was expected ----------------------
def integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("an integer") from None


def number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("a number") from None


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def lower(raw: str) -> str:
    return raw.lower()


def stripped(raw: str) -> str:
    return raw.strip()


def count_or_none(raw: str) -> int | None:
    """An integer where 0 means unset (the consumer picks its own value)."""
    return integer(raw) or None


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def path_list(raw: str) -> tuple[str, ...]:
    return tuple(item for item in raw.split(os.pathsep) if item)


@dataclass(frozen=True)
class Var:
    """Where a field comes from: the variable (and older names read when it is unset) and its parser."""

    name: str
    parse: Callable[[str], Any]
    also: tuple[str, ...] = ()

    def read(self, env: Mapping[str, str]) -> tuple[bool, Any]:
        """(True, value) when the environment sets the variable; (False, None) when it is unset or blank."""
        for name in (self.name, *self.also):
            raw = env.get(name)
            if raw is not None and raw.strip():
                try:
                    return True, self.parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{name} must be {exc}, got {raw!r}") from None
        return False, None


def env(name: str, default: Any = None, parse: Callable[[str], Any] = str, *, secret: bool = False,
        also: tuple[str, ...] = ()) -> Any:
    """A settings field read from the variable `name`: its default and parser, written once."""
    return field(default=default, repr=not secret, metadata={"env": Var(name, parse, also)})


S = TypeVar("S", bound="Section")


class Section:
    """A frozen dataclass of `env()` fields (or of other sections) that reads itself from the environment."""

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None) -> S:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = f.metadata.get("section")
            if nested is not None:
                values[f.name] = nested.from_env(env)
                continue
            found, value = f.metadata["env"].read(env)
            if found:
                values[f.name] = value
        return cls(**values)

    @classmethod
    def variables(cls) -> list[str]:
        """Every variable this section reads (nested sections included), in field order."""
        names: list[str] = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = f.metadata.get("section")
            names += nested.variables() if nested is not None else [f.metadata["env"].name]
        return names


def section(cls: type[Section]) -> Any:
    """A field holding a whole section, read with it."""
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class ModelSettings(Section):
    """Which model, and how it is run: for `clipsearch.models.load_encoder`."""

    id: str | None = env("MODEL_ID")  # None: DEFAULT_MODEL_ID, or what MODEL_PATH's card says it is
    path: str | None = env("MODEL_PATH")
    encoder: str = env("ENCODER", "torch", lower)  # "torch" | "onnx"
    onnx_path: str | None = env("ONNX_PATH")
    onnx_text_int8: bool = env("ONNX_TEXT_INT8", False, boolean)  # the int8 text tower (export with --int8-text)
    threads: int | None = env("TORCH_THREADS", None, count_or_none)  # None: the consumer chooses
    preload_image_tower: bool = env("PRELOAD_IMAGE_TOWER", False, boolean)

    @property
    def source(self) -> str:
        """What `from_pretrained` is given: a local checkpoint directory wins over a hub id."""
        return self.path or self.id or DEFAULT_MODEL_ID


@dataclass(frozen=True)
class IndexSettings(Section):
    """Which k-NN backend, and the embedded index's location and parameters: for `open_index`."""

    backend: str = env("BACKEND", "faiss", lower)  # "faiss" | "opensearch"
    path: str = env("INDEX_PATH", "data/index")
    # s3://bucket/prefix: the deployed function copies the embedded index from here to `path`.
    s3_uri: str | None = env("INDEX_S3_URI")
    hnsw_threshold: int = env("HNSW_THRESHOLD", 50_000, integer)
    # How the query service holds the embedded index's vectors: float16 halves the memory with
    # the same results (clipsearch.index.half); ingest always writes float32.
    memory: str = env("INDEX_MEMORY", "float16", lower)  # "float16" | "float32"


@dataclass(frozen=True)
class OpenSearchSettings(Section):
    """The OpenSearch backend: endpoint and auth (the client), alias, and how ingest creates an index.
    The server reads an existing index's parameters from its mapping."""

    url: str | None = env("OPENSEARCH_URL")
    index: str = env("OPENSEARCH_INDEX", "clipsearch")  # the alias clients name
    auth: str = env("OPENSEARCH_AUTH", "none", lower)  # "none" | "basic" | "sigv4"
    service: str = env("OPENSEARCH_SERVICE", "es", lower)  # "es" | "aoss" (SigV4 service name)
    user: str | None = env("OPENSEARCH_USER")
    password: str | None = env("OPENSEARCH_PASSWORD", secret=True)
    region: str | None = env("AWS_REGION", also=("AWS_DEFAULT_REGION",))
    engine: str = env("OPENSEARCH_ENGINE", "faiss", lower)  # "faiss" | "lucene"
    m: int = env("OPENSEARCH_M", 32, integer)
    ef_construction: int = env("OPENSEARCH_EF_CONSTRUCTION", 200, integer)
    ef_search: int = env("OPENSEARCH_EF_SEARCH", 128, integer)
    data_type: str = env("OPENSEARCH_DATA_TYPE", "float", lower)  # "float" | "byte" (int8, quantised before upload)
    mode: str | None = env("OPENSEARCH_MODE", None, lower)  # None | "in_memory" | "on_disk"
    compression: str | None = env("OPENSEARCH_COMPRESSION", None, lower)  # e.g. "32x" with mode on_disk
    shards: int = env("OPENSEARCH_SHARDS", 1, integer)
    replicas: int = env("OPENSEARCH_REPLICAS", 1, integer)
    timeout: int = env("OPENSEARCH_TIMEOUT", 10, integer)  # seconds per request (bulk and force-merge get longer)
    force_merge: bool = env("OPENSEARCH_FORCE_MERGE", False, boolean)  # one segment at the end of a load


@dataclass(frozen=True)
class LimitSettings(Section):
    """The largest image accepted, by the query service, ingest and the evaluation."""

    # What fits one invocation (above); a larger value only helps `url` queries, which fetch the image.
    max_image_bytes: int = env("MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, integer)
    max_image_pixels: int = env("MAX_IMAGE_PIXELS", 40_000_000, integer)


@dataclass(frozen=True)
class ServerSettings(Section):
    """The query function's HTTP behaviour."""

    # Browser origins the handler echoes in Access-Control-Allow-Origin; empty = no CORS headers.
    cors_allow_origins: tuple[str, ...] = env("CORS_ALLOW_ORIGINS", (), comma_list)


@dataclass(frozen=True)
class Settings(Section):
    """Every section of the core, read together (the server, ingest, the evaluation)."""

    model: ModelSettings = section(ModelSettings)
    index: IndexSettings = section(IndexSettings)
    opensearch: OpenSearchSettings = section(OpenSearchSettings)
    limits: LimitSettings = section(LimitSettings)
    server: ServerSettings = section(ServerSettings)
