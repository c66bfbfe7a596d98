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

from clipsearch.config import Settings

AUTH_MODES = ("none", "basic", "sigv4")
_CLIENTS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _check(settings: Settings) -> None:
    if not settings.opensearch_url:
        raise ValueError("OPENSEARCH_URL is not set: give the endpoint, e.g. https://search-xyz.eu-west-1.es.amazonaws.com")
    parts = urlsplit(settings.opensearch_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"OPENSEARCH_URL must be an http(s) URL, got {settings.opensearch_url!r}")
    if settings.opensearch_auth not in AUTH_MODES:
        raise ValueError(f"OPENSEARCH_AUTH must be one of {', '.join(AUTH_MODES)}, got {settings.opensearch_auth!r}")
    if settings.opensearch_auth == "basic" and not (settings.opensearch_user and settings.opensearch_password):
        raise ValueError("OPENSEARCH_AUTH=basic needs OPENSEARCH_USER and OPENSEARCH_PASSWORD")
    if settings.opensearch_auth == "sigv4":
        if settings.opensearch_service not in ("es", "aoss"):
            raise ValueError(f"OPENSEARCH_SERVICE must be 'es' or 'aoss', got {settings.opensearch_service!r}")
        if not settings.aws_region:
            raise ValueError("OPENSEARCH_AUTH=sigv4 needs AWS_REGION")


def _sigv4_auth(settings: Settings, credentials=None):
    from opensearchpy import Urllib3AWSV4SignerAuth

    if credentials is None:
        import boto3

        # The chain (env, profile, container/instance role, Lambda's role) as a refreshable object.
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise ValueError("OPENSEARCH_AUTH=sigv4 but the boto3 credential chain found no AWS credentials")
    return Urllib3AWSV4SignerAuth(credentials, settings.aws_region, settings.opensearch_service)


def make_client(settings: Settings, *, credentials=None, max_retries: int = 1):
    """A new client. `credentials`: a botocore credentials object (tests); default the boto3 chain."""
    from opensearchpy import OpenSearch, Urllib3HttpConnection

    _check(settings)
    parts = urlsplit(settings.opensearch_url)
    auth = None
    if settings.opensearch_auth == "basic":
        auth = (settings.opensearch_user, settings.opensearch_password)
    elif settings.opensearch_auth == "sigv4":
        auth = _sigv4_auth(settings, credentials)
    return OpenSearch(
        hosts=[{"host": parts.hostname, "port": parts.port or (443 if parts.scheme == "https" else 80),
                "url_prefix": parts.path.rstrip("/")}],
        use_ssl=parts.scheme == "https",
        verify_certs=True,
        http_auth=auth,
        connection_class=Urllib3HttpConnection,
        timeout=settings.opensearch_timeout,
        # One quick retry covers a keep-alive connection the server closed while a Lambda container
        # was frozen; the bulk loader does its own retries with backoff on top.
        max_retries=max_retries,
        retry_on_timeout=False,
        pool_maxsize=8,
    )


def get_client(settings: Settings):
    """The cached client for these settings (one per endpoint, auth and identity)."""
    key = (settings.opensearch_url, settings.opensearch_auth, settings.opensearch_service,
           settings.aws_region, settings.opensearch_user, settings.opensearch_password, settings.opensearch_timeout)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = make_client(settings)
        return client


def clear_cache() -> None:
    with _LOCK:
        _CLIENTS.clear()
