"""One OpenSearch client per endpoint and auth, built once and reused.

A Lambda container keeps module state between invocations, so the client (and its pool of
keep-alive connections) lives in a module-level cache: a warm invocation pays no TLS handshake.

Auth:
- `sigv4`: Amazon OpenSearch Service (`es`) or Serverless (`aoss`). The signer is opensearch-py's
  `Urllib3AWSV4SignerAuth` holding the boto3 credential chain's *refreshable* credentials object;
  it calls `get_frozen_credentials()` on every request, which refreshes expiring role credentials
  and returns an access key / secret / token triple from one moment (no key from before a
  rotation paired with a secret from after). The credentials are never copied once at start-up.
  It also signs `X-Amz-Content-SHA256`, which Serverless requires.
- `basic`: user and password (self-managed clusters with the security plugin).
- `none`: no auth (a local cluster, or a VPC domain with an open access policy).
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from clipsearch.config import OpenSearchSettings

AUTH_MODES = ("none", "basic", "sigv4")
_CLIENTS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _check(settings: OpenSearchSettings) -> None:
    if not settings.url:
        raise ValueError("OPENSEARCH_URL is not set: give the endpoint, e.g. https://search-xyz.eu-west-1.es.amazonaws.com")
    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"OPENSEARCH_URL must be an http(s) URL, got {settings.url!r}")
    if settings.auth not in AUTH_MODES:
        raise ValueError(f"OPENSEARCH_AUTH must be one of {', '.join(AUTH_MODES)}, got {settings.auth!r}")
    if settings.auth == "basic" and not (settings.user and settings.password):
        raise ValueError("OPENSEARCH_AUTH=basic needs OPENSEARCH_USER and OPENSEARCH_PASSWORD")
    if settings.auth == "sigv4":
        if settings.service not in ("es", "aoss"):
            raise ValueError(f"OPENSEARCH_SERVICE must be 'es' or 'aoss', got {settings.service!r}")
        if not settings.region:
            raise ValueError("OPENSEARCH_AUTH=sigv4 needs AWS_REGION")


def _sigv4_auth(settings: OpenSearchSettings, credentials=None):
    from opensearchpy import Urllib3AWSV4SignerAuth

    if credentials is None:
        import boto3

        # The chain (env, profile, container/instance role, Lambda's role) as a refreshable object.
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise ValueError("OPENSEARCH_AUTH=sigv4 but the boto3 credential chain found no AWS credentials")
    return Urllib3AWSV4SignerAuth(credentials, settings.region, settings.service)


def make_client(settings: OpenSearchSettings, *, credentials=None, max_retries: int = 1):
    """A new client. `credentials`: a botocore credentials object (tests); default the boto3 chain."""
    from opensearchpy import OpenSearch, Urllib3HttpConnection

    _check(settings)
    parts = urlsplit(settings.url)
    auth = None
    if settings.auth == "basic":
        auth = (settings.user, settings.password)
    elif settings.auth == "sigv4":
        auth = _sigv4_auth(settings, credentials)
    return OpenSearch(
        hosts=[{"host": parts.hostname, "port": parts.port or (443 if parts.scheme == "https" else 80),
                "url_prefix": parts.path.rstrip("/")}],
        use_ssl=parts.scheme == "https",
        verify_certs=True,
        http_auth=auth,
        connection_class=Urllib3HttpConnection,
        timeout=settings.timeout,
        # One quick retry covers a keep-alive connection the server closed while a Lambda container
        # was frozen; the bulk loader does its own retries with backoff on top.
        max_retries=max_retries,
        retry_on_timeout=False,
        pool_maxsize=8,
    )


def get_client(settings: OpenSearchSettings):
    """The cached client for these settings (one per endpoint, auth and identity)."""
    key = (settings.url, settings.auth, settings.service,
           settings.region, settings.user, settings.password, settings.timeout)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = make_client(settings)
        return client


def clear_cache() -> None:
    with _LOCK:
        _CLIENTS.clear()
