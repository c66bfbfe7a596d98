"""The local Lambda: the real Runtime Interface Emulator running the handler, the invocation
front on its port and the API-Gateway-like gateway, started and stopped together.

The emulator (the `aws-lambda-rie` binary shipped in the aws-sam-cli wheel) runs
`python -m awslambdaric server.handler.handler` exactly as the container does. It runs one
invocation at a time and *crashes* (a Go nil-pointer panic) when a second arrives while one is
running, so it listens on an internal port, and the invocation URL (port 9000 by default) is
served by `InvokeFront` (front.py), which queues invocations on the same one-at-a-time `Invoker`
(invoker.py) as the gateway (gateway.py): a function with a concurrency of one, whoever calls it.

A port already in use ends the start with `PortInUse`, naming it and the option that changes it.
The emulator's own START/END/REPORT lines for each invocation are left out of the console when
`quiet` (the function's one JSON line per request stays).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Mapping

from server.local.front import InvokeFront
from server.local.gateway import API_GATEWAY_TIMEOUT_S, Gateway, proxy_reply, rest_event
from server.local.invoker import Invoker

REPO = Path(__file__).resolve().parents[2]
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
FUNCTION_TIMEOUT_S = 28  # infra/template.yaml's Timeout: one second under the gateway's
CURL = ('curl -XPOST "http://localhost:{port}/2015-03-31/functions/function/invocations" '
        "-d '{{\"query\": \"two dogs\", \"input_type\": \"text\"}}'")
# What any process needs, taken from ours when set: the programs' path, the home directory (caches),
# the locale and the temporary directory. Nothing else of our environment reaches the function:
# a variable exported in the shell (ENCODER, BACKEND, MODEL_ID ...) must not change what a test
# or a benchmark measures. The function's configuration is what the caller passes as `env`.
BASE_VARIABLES = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
# The variables `python -m server.local` hands on from its shell, beside the settings' own (the
# README's table): the AWS credential chain's and region (INDEX_S3_URI, OpenSearch with SigV4) and
# Hugging Face's cache, token and offline switch (a MODEL_ID fetched from the hub).
SHELL_PREFIXES = ("AWS_", "HF_")


def shell_configuration(environ: Mapping[str, str]) -> dict[str, str]:
    """The function's configuration from a shell's environment: the settings' variables, AWS_*, HF_*."""
    from clipsearch.config import Settings

    names = set(Settings.variables())
    return {k: v for k, v in environ.items() if k in names or k.startswith(SHELL_PREFIXES)}


# What the emulator prints around every invocation (aws-lambda-runtime-interface-emulator,
# internal/lambda/rie/handlers.go: "START RequestId: ...", "END RequestId: ...", "REPORT RequestId: ...").
EMULATOR_REQUEST_LINE = re.compile(rb"^(START|END|REPORT) RequestId: ")


class PortInUse(RuntimeError):
    """A port the stack must listen on is taken (or not ours to use)."""

    def __init__(self, port: int, host: str, what: str, option: str, reason: str):
        self.port, self.host, self.what, self.option = port, host, what, option
        super().__init__(f"cannot listen on {host}:{port} for the {what}: {reason}. Stop what uses that port "
                         f"or choose another with {option} N (0 picks a free one)")


def _listen(factory, host: str, port: int, what: str, option: str):
    try:
        return factory()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise PortInUse(port, host, what, option, exc.strerror or str(exc)) from None
        raise


def find_rie() -> Path:
    """The emulator binary inside the installed aws-sam-cli package (not imported: that is slow)."""
    spec = importlib.util.find_spec("samcli")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("aws-sam-cli is not installed: `pip install -r requirements-dev.txt` provides the emulator")
    arch = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"
    path = Path(list(spec.submodule_search_locations)[0]) / "local" / "rapid" / f"aws-lambda-rie-{arch}"
    if not path.is_file():
        raise RuntimeError(f"the Lambda emulator is missing from aws-sam-cli: expected {path}")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"the Lambda emulator is not executable: chmod +x {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalLambda:
    """The emulator (running the handler) and the gateway, started together; a context manager.

        with LocalLambda(env={"INDEX_PATH": ..., "MODEL_PATH": ...}) as stack:
            requests.post(stack.search_url, json={...})

    `env` is the function's configuration: it sees that, a few variables any process needs
    (BASE_VARIABLES) and HF_HUB_OFFLINE=1, TOKENIZERS_PARALLELISM=false unless `env` says
    otherwise; not the rest of this process's environment.
    Ports 0 pick free ones. `wait=True` returns once the function answers GET /health (its
    status, 200 or 503 with the reason, is in `ready_status`).
    """

    def __init__(self, env: dict[str, str] | None = None, *, lambda_port: int = 0, gateway_port: int = 0,
                 timeout_s: float = API_GATEWAY_TIMEOUT_S, host: str = "127.0.0.1",
                 log: str | Path | IO | None = None, startup_timeout_s: float = 180.0,
                 function_timeout_s: int = FUNCTION_TIMEOUT_S, rie: str | Path | None = None,
                 python: list[str] | None = None, quiet: bool = False):
        self.env = dict(env or {})
        self.host, self.timeout_s, self.startup_timeout_s = host, timeout_s, startup_timeout_s
        self.function_timeout_s = function_timeout_s
        self.lambda_port = lambda_port  # 0 until start() binds a free one
        self._rie_port = 0  # the emulator's own, internal port
        self._gateway_port = gateway_port
        self.log = log
        self.quiet = quiet  # with log=None: the console without the emulator's per-invocation lines
        self.rie_path = Path(rie) if rie else find_rie()
        self.python = python or [sys.executable]  # the runtime's interpreter (and its flags)
        self.process: subprocess.Popen | None = None
        self.gateway: Gateway | None = None
        self.invoker: Invoker | None = None
        self.started_at: float | None = None
        self.ready_status: int | None = None
        self._log_file: IO | None = None
        self.front: InvokeFront | None = None

    # -- URLs ------------------------------------------------------------------------------
    @property
    def invoke_url(self) -> str:
        return f"http://{self.host}:{self.lambda_port}{INVOKE_PATH}"

    @property
    def rie_url(self) -> str:
        """The emulator itself: only the shared `Invoker` may call it (one invocation at a time)."""
        return f"http://127.0.0.1:{self._rie_port}{INVOKE_PATH}"

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
    def __enter__(self) -> "LocalLambda":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        return [str(self.rie_path), "--log-level", "error",
                "--runtime-interface-emulator-address", f"127.0.0.1:{self._rie_port}",
                # The runtime API's default port (9001) would collide between stacks run side by side.
                "--runtime-api-address", f"127.0.0.1:{free_port()}",
                *self.python, "-m", "awslambdaric", "server.handler.handler"]

    def process_env(self) -> dict[str, str]:
        """The emulator's (and so the function's) environment: what any process needs from ours
        (BASE_VARIABLES), the defaults below, then `env`. Nothing else of ours gets through."""
        env = {name: os.environ[name] for name in BASE_VARIABLES if name in os.environ}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   AWS_LAMBDA_FUNCTION_TIMEOUT=str(self.function_timeout_s))
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)
        return env

    def start(self, wait: bool = True) -> "LocalLambda":
        try:
            # Our ports first: one in use fails here, before any process exists.
            self._rie_port = free_port()
            self.invoker = Invoker(self.rie_url, call_timeout_s=self.function_timeout_s + 30)
            front = _listen(lambda: InvokeFront((self.host, self.lambda_port), self.invoker,
                                                self.function_timeout_s + 30),
                            self.host, self.lambda_port, "Lambda invocation URL", "--lambda-port")
            self.front = self._serve(front, "invoke-front")
            self.lambda_port = self.front.server_address[1]
            gateway = _listen(lambda: Gateway((self.host, self._gateway_port), self.invoker, self.timeout_s),
                              self.host, self._gateway_port, "API gateway", "--gateway-port")
            self.gateway = self._serve(gateway, "gateway")
            self._gateway_port = self.gateway.server_address[1]
            if isinstance(self.log, (str, Path)):
                self._log_file = open(self.log, "ab")
                out: Any = self._log_file
            elif self.log is None and self.quiet:
                out = subprocess.PIPE  # through _pump, which leaves out the per-invocation lines
            else:
                out = self.log  # None: inherit our stdout
            self.started_at = time.monotonic()
            # Own session (so stop() can signal the emulator and the runtime as one group); on Linux,
            # the kernel also SIGTERMs the emulator if we die without stop() (kill -9 of a test run).
            pdeathsig = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self.process = subprocess.Popen(self.command(), env=self.process_env(), cwd=REPO, stdout=out,
                                            stderr=subprocess.STDOUT if out is not None else None,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=pdeathsig)
            if out is subprocess.PIPE:
                threading.Thread(target=_pump, args=(self.process.stdout,), name="emulator-output", daemon=True).start()
            if wait:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _serve(server, name: str):
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        return server

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
        for srv in (self.front, self.gateway):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        self.front = self.gateway = None
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


def _pump(stream: IO[bytes]) -> None:
    """Copy the emulator's output to our stdout, less its START/END/REPORT line per invocation.

    Reads to the end whatever happens to our stdout: a pipe nobody drains would block the
    emulator (and the function) on its next write."""
    writable = True
    for line in iter(stream.readline, b""):
        if writable and not EMULATOR_REQUEST_LINE.match(line):
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            except (OSError, ValueError):  # our stdout closed: keep draining
                writable = False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (PR_SET_PDEATHSIG; Linux only).

    The signal follows the *thread* that forked, hence only used from the main thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


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
