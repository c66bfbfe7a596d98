"""Run the Lambda locally, no Docker: the real Runtime Interface Emulator plus an API-Gateway-like gateway.

    python -m server.local [--lambda-port 9000] [--gateway-port 8000] [--timeout 29]

The emulator (the `aws-lambda-rie` binary shipped in the aws-sam-cli wheel) runs
`python -m awslambdaric server.handler.handler` exactly as the container does, and answers
    curl -XPOST "http://localhost:9000/2015-03-31/functions/function/invocations" \\
         -d '{"query": "two dogs", "input_type": "text"}'
The gateway turns `POST /search` into a REST (v1) proxy event, invokes the emulator and returns
the function's statusCode/headers/body, or 504 `{"message": "Endpoint request timed out"}` after
29 s, as API Gateway does. `GET /health` is 200 once the function answers and is initialised.

The emulator runs one invocation at a time and *crashes* (a Go nil-pointer panic) when a second
arrives while one is running, so the gateway sends it one at a time, as a function with a
concurrency of one; do not fire parallel requests at the emulator's own port either.

`LocalStack` starts both for tests and benchmarks and stops them (process group included).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
API_GATEWAY_TIMEOUT_S = 29.0
FUNCTION_TIMEOUT_S = 28  # infra/template.yaml's Timeout: one second under the gateway's
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")  # as the template declares
CURL = ('curl -XPOST "http://localhost:{port}/2015-03-31/functions/function/invocations" '
        "-d '{{\"query\": \"two dogs\", \"input_type\": \"text\"}}'")


def find_rie() -> Path:
    """The emulator binary inside the installed aws-sam-cli package (not imported: that is slow)."""
    spec = importlib.util.find_spec("samcli")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("aws-sam-cli is not installed: `pip install -r requirements-dev.txt` provides the emulator")
    arch = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"
    path = Path(list(spec.submodule_search_locations)[0]) / "local" / "rapid" / f"aws-lambda-rie-{arch}"
    if not path.is_file():
        raise RuntimeError(f"the Lambda emulator is missing from aws-sam-cli: expected {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rest_event(method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event, as the deployed API would send it."""
    parts = urlsplit(target)
    multi = parse_qs(parts.query, keep_blank_values=True)
    ctype = headers.get("content-type", headers.get("Content-Type", "")).split(";")[0].strip().lower()
    binary = ctype in BINARY_MEDIA_TYPES
    try:
        text = None if binary else body.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # not text: deliver it base64-encoded rather than mangled
    request_id = str(uuid.uuid4())
    return {
        "resource": parts.path, "path": parts.path, "httpMethod": method,
        "headers": dict(headers), "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": None, "stageVariables": None,
        "requestContext": {"resourcePath": parts.path, "httpMethod": method, "path": "/local" + parts.path,
                           "stage": "local", "requestId": request_id, "requestTimeEpoch": int(time.time() * 1000),
                           "identity": {"sourceIp": source_ip}},
        "body": (text if text is not None else base64.b64encode(body).decode("ascii")) if body else None,
        "isBase64Encoded": bool(body) and text is None,
    }


class Invoker:
    """Invokes the emulator one request at a time (it crashes on concurrent invocations).

    The single worker holds the emulator until it answers, even after the waiting caller gave
    up with a 504, so a timed-out request can never overlap the next one.
    """

    def __init__(self, invoke_url: str, call_timeout_s: float):
        self.invoke_url, self.call_timeout_s = invoke_url, call_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="invoke")

    def submit(self, event: Any) -> Future:
        return self._pool.submit(self._post, event)

    def invoke(self, event: Any, timeout_s: float | None = None) -> Any:
        """The function's return value (JSON-decoded); raises TimeoutError past `timeout_s`."""
        future = self.submit(event)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: never send it
            raise TimeoutError(f"no answer within {timeout_s} s") from None

    def _post(self, event: Any) -> Any:
        data = json.dumps(event).encode()
        req = urllib.request.Request(self.invoke_url, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=self.call_timeout_s) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Gateway(ThreadingHTTPServer):
    """`POST /search` and `OPTIONS /search` as proxy events; `GET /health`; API Gateway's 504."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], invoker: Invoker, timeout_s: float = API_GATEWAY_TIMEOUT_S):
        super().__init__(address, _GatewayHandler)
        self.invoker, self.timeout_s = invoker, timeout_s
        self._health: Future | None = None
        self._health_lock = threading.Lock()

    def forward(self, event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        try:
            out = self.invoker.invoke(event, self.timeout_s)
        except TimeoutError:
            return 504, {"Content-Type": "application/json"}, b'{"message": "Endpoint request timed out"}'
        except (OSError, ValueError) as exc:  # emulator down, or not JSON
            return _bad_gateway(f"the emulator did not answer: {exc}")
        return proxy_reply(out)

    def health(self, event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """Coalesced: many pollers share one in-flight health invocation."""
        with self._health_lock:
            if self._health is None or self._health.done():
                self._health = self.invoker.submit(event)
            future = self._health
        try:
            return proxy_reply(future.result(timeout=self.timeout_s))
        except FutureTimeout:
            return 503, {"Content-Type": "application/json"}, b'{"message": "the function is still starting"}'
        except (OSError, ValueError) as exc:
            return 503, {"Content-Type": "application/json"}, json.dumps({"message": f"the emulator is not answering: {exc}"}).encode()


def _bad_gateway(why: str) -> tuple[int, dict[str, str], bytes]:
    # What API Gateway answers when the function fails or returns a malformed proxy response.
    return 502, {"Content-Type": "application/json", "X-Local-Gateway-Reason": why[:200].replace("\n", " ")}, \
        b'{"message": "Internal server error"}'


def proxy_reply(out: Any) -> tuple[int, dict[str, str], bytes]:
    """The HTTP reply API Gateway builds from a proxy response; 502 for anything else."""
    if not isinstance(out, dict) or not isinstance(out.get("statusCode"), int):
        kind = out.get("errorType") if isinstance(out, dict) else type(out).__name__
        return _bad_gateway(f"the function did not return a proxy response ({kind})")
    headers = {str(k): str(v) for k, v in (out.get("headers") or {}).items()}
    body = out.get("body") or ""
    data = base64.b64decode(body) if out.get("isBase64Encoded") else str(body).encode("utf-8")
    return out["statusCode"], headers, data


class _GatewayHandler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the function logs every request; the gateway stays quiet

    def _event(self, method: str, body: bytes = b"") -> dict[str, Any]:
        return rest_event(method, self.path, {k: v for k, v in self.headers.items()}, body, self.client_address[0])

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> str | None:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self._route() != "/search":
            return self._reply(404, {"Content-Type": "application/json"}, b'{"message": "Not Found"}')
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BYTES:
            remaining = length if length <= 4 * MAX_REQUEST_BYTES else 0
            while remaining > 0:  # drain it, so the client reads our 413 rather than a broken pipe
                chunk = self.rfile.read(min(1 << 20, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.close_connection = True
            return self._reply(413, {"Content-Type": "application/json"}, b'{"message": "Request Too Long"}')
        body = self.rfile.read(length) if length else b""
        self._reply(*self.server.forward(self._event("POST", body)))

    def do_OPTIONS(self) -> None:  # noqa: N802
        if self._route() != "/search":
            return self._reply(404, {"Content-Type": "application/json"}, b'{"message": "Not Found"}')
        self._reply(*self.server.forward(self._event("OPTIONS")))

    def do_GET(self) -> None:  # noqa: N802
        if self._route() != "/health":
            return self._reply(404, {"Content-Type": "application/json"}, b'{"message": "Not Found"}')
        self._reply(*self.server.health(self._event("GET")))

    do_HEAD = do_GET


class LocalStack:
    """The emulator (running the handler) and the gateway, started together; a context manager.

        with LocalStack(env={"INDEX_PATH": ..., "MODEL_PATH": ...}) as stack:
            requests.post(stack.search_url, json={...})

    Ports 0 pick free ones. `wait=True` returns once the function answers GET /health (its
    status, 200 or 503 with the reason, is in `ready_status`).
    """

    def __init__(self, env: dict[str, str] | None = None, *, lambda_port: int = 0, gateway_port: int = 0,
                 timeout_s: float = API_GATEWAY_TIMEOUT_S, host: str = "127.0.0.1",
                 log: str | Path | IO | None = None, startup_timeout_s: float = 180.0,
                 function_timeout_s: int = FUNCTION_TIMEOUT_S, rie: str | Path | None = None,
                 python: list[str] | None = None):
        self.env = dict(env or {})
        self.host, self.timeout_s, self.startup_timeout_s = host, timeout_s, startup_timeout_s
        self.function_timeout_s = function_timeout_s
        self.lambda_port = lambda_port or free_port(host)
        self._gateway_port = gateway_port
        self.log = log
        self.rie_path = Path(rie) if rie else find_rie()
        self.python = python or [sys.executable]  # the runtime's interpreter (and its flags)
        self.process: subprocess.Popen | None = None
        self.gateway: Gateway | None = None
        self.invoker: Invoker | None = None
        self.started_at: float | None = None
        self.ready_status: int | None = None
        self._log_file: IO | None = None
        self._thread: threading.Thread | None = None

    # -- URLs ------------------------------------------------------------------------------
    @property
    def invoke_url(self) -> str:
        return f"http://{self.host}:{self.lambda_port}{INVOKE_PATH}"

    @property
    def gateway_port(self) -> int:
        return self._gateway_port

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def search_url(self) -> str:
        return self.gateway_url + "/search"

    @property
    def health_url(self) -> str:
        return self.gateway_url + "/health"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        return [str(self.rie_path), "--log-level", "error",
                "--runtime-interface-emulator-address", f"{self.host}:{self.lambda_port}",
                # The runtime API's default port (9001) would collide between stacks run side by side.
                "--runtime-api-address", f"127.0.0.1:{free_port()}",
                *self.python, "-m", "awslambdaric", "server.handler.handler"]

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("AWS_LAMBDA_FUNCTION_TIMEOUT", str(self.function_timeout_s))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env

    def start(self, wait: bool = True) -> "LocalStack":
        if isinstance(self.log, (str, Path)):
            self._log_file = open(self.log, "ab")
            out: Any = self._log_file
        else:
            out = self.log  # None: inherit our stdout
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(self.command(), env=self.process_env(), cwd=REPO, stdout=out,
                                        stderr=subprocess.STDOUT if out is not None else None,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.invoker = Invoker(self.invoke_url, call_timeout_s=self.function_timeout_s + 30)
        self.gateway = Gateway((self.host, self._gateway_port), self.invoker, self.timeout_s)
        self._gateway_port = self.gateway.server_address[1]
        self._thread = threading.Thread(target=self.gateway.serve_forever, name="gateway", daemon=True)
        self._thread.start()
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self) -> int:
        """Block until the function answers a health invocation; returns its status (200 or 503)."""
        assert self.process is not None and self.gateway is not None
        deadline = time.monotonic() + self.startup_timeout_s
        event = rest_event("GET", "/health", {}, b"", "127.0.0.1")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Lambda emulator exited with code {self.process.returncode} "
                                   f"(its output is in {self.log or 'the console'})")
            try:
                out = self.invoker.invoke(event, timeout_s=max(1.0, deadline - time.monotonic()))
            except (OSError, TimeoutError, ValueError):
                time.sleep(0.1)  # not listening yet
                continue
            status = proxy_reply(out)[0]
            if status in (200, 503):
                self.ready_status = status
                return status
            time.sleep(0.1)
        raise TimeoutError(f"the local Lambda did not answer within {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the processes first (no orphans whatever happens next), then the gateway."""
        if self.process is not None:
            _kill_group(self.process)
        if self.gateway is not None:
            self.gateway.shutdown()
            self.gateway.server_close()
            self.gateway = None
        if self.invoker is not None:
            self.invoker.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- helpers for tests and benchmarks --------------------------------------------------
    def invoke(self, event: Any, timeout_s: float | None = None) -> Any:
        """A direct invocation, serialised with the gateway's; the function's return value."""
        assert self.invoker is not None, "start() first"
        return self.invoker.invoke(event, timeout_s or self.timeout_s)

    def runtime_process(self):
        """The awslambdaric (handler) process, a child of the emulator; None before the first invoke."""
        import psutil

        assert self.process is not None
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if "awslambdaric" in child.cmdline():
                    return child
            except psutil.Error:
                continue
        return None


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the emulator's process group (it and the runtime), then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the runtime child too, even if the emulator is gone
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.local", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambda-port", type=int, default=9000, help="emulator port (default 9000; 0 = any free port)")
    ap.add_argument("--gateway-port", type=int, default=8000, help="gateway port (default 8000; 0 = any free port)")
    ap.add_argument("--host", default="127.0.0.1", help="address both listen on (default 127.0.0.1)")
    ap.add_argument("--timeout", type=float, default=API_GATEWAY_TIMEOUT_S,
                    help="gateway timeout in seconds before a 504 (default 29, as API Gateway)")
    ap.add_argument("--rie", help="path to an aws-lambda-rie binary (default: the one in aws-sam-cli)")
    args = ap.parse_args(argv)

    def stop_on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Explicit: a shell's background job starts with SIGINT ignored, and Ctrl-C must still stop us.
    signal.signal(signal.SIGINT, stop_on_term)
    signal.signal(signal.SIGTERM, stop_on_term)
    stack = LocalStack(lambda_port=args.lambda_port, gateway_port=args.gateway_port, timeout_s=args.timeout,
                       host=args.host, rie=args.rie)
    try:
        stack.start(wait=False)
        print(f"Lambda emulator: {stack.invoke_url}\nGateway:         POST {stack.search_url}   GET {stack.health_url}",
              flush=True)
        status = stack.wait_ready()
        state = "ready" if status == 200 else "answering, but NOT ready (see the error above; GET /health says why)"
        print(f"function {state} after {time.monotonic() - stack.started_at:.1f} s. Try:\n  "
              + CURL.format(port=stack.lambda_port) + "\n(Ctrl-C stops)", flush=True)
        while stack.process.poll() is None:
            time.sleep(0.5)
        print(f"the emulator exited with code {stack.process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C (or a supervisor's SIGTERM after its SIGINT) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
