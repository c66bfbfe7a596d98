"""`python -m server.local` and `make demo` (scripts/demo.py) when their ports are taken, when
the server dies, and what the UI is started with. Real processes and real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO

from scripts import demo


@pytest.fixture
def taken_port():
    """A port something else listens on (as another program would), freed at the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_local(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "INDEX_PATH": "/nonexistent", "MODEL_PATH": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "server.local", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("flag, other, what", [("--gateway-port", "--lambda-port", "API gateway"),
                                               ("--lambda-port", "--gateway-port", "Lambda invocation URL")])
def test_server_local_with_its_port_taken_fails_fast_naming_it(taken_port, flag, other, what):
    t0 = time.monotonic()
    out = run_local(flag, str(taken_port), other, "0")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert time.monotonic() - t0 < 30
    assert f"127.0.0.1:{taken_port}" in out.stderr and what in out.stderr and flag in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def run_demo(env_extra: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    for name in ("DEMO_LAMBDA_PORT", "DEMO_GATEWAY_PORT", "DEMO_UI_PORT"):
        env.setdefault(name, str(free_port()))
    return subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("variable", ["DEMO_GATEWAY_PORT", "DEMO_LAMBDA_PORT", "DEMO_UI_PORT"])
def test_make_demo_with_a_port_taken_stops_before_doing_anything(taken_port, variable, tmp_path):
    """Before: it ingested, started a server that died, and said the UI was ready anyway."""
    index = tmp_path / "index"
    out = run_demo({variable: str(taken_port), "INDEX_PATH": str(index), "MODEL_PATH": str(tmp_path / "no-model")},
                   timeout=30)
    assert out.returncode != 0
    assert f"port {taken_port}" in out.stderr and f"{variable}=N make demo" in out.stderr, out.stderr
    assert "UI:" not in out.stdout and "ingest" not in out.stdout and not index.exists(), out.stdout


@pytest.mark.parametrize("env, message", [({"DEMO_UI_PORT": "eighty"}, "DEMO_UI_PORT='eighty'"),
                                          ({"DEMO_GATEWAY_PORT": "70000"}, "DEMO_GATEWAY_PORT='70000'"),
                                          ({"DEMO_GATEWAY_PORT": "8000", "DEMO_LAMBDA_PORT": "8000"}, "different")])
def test_demo_ports_are_checked(env, message):
    with pytest.raises(SystemExit, match=message):
        demo.demo_ports(env)


def test_demo_ports_default_and_the_ui_binds_loopback_unless_asked():
    lam, gw, ui = demo.demo_ports({})
    assert (lam.number, gw.number, ui.number) == (9000, 8000, 8501) and ui.host == "127.0.0.1"
    cmd = demo.ui_command(ui)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.port") + 1] == "8501"
    assert demo.ui_url(ui) == "http://127.0.0.1:8501"
    _, _, wide = demo.demo_ports({"DEMO_UI_ADDRESS": "0.0.0.0", "DEMO_UI_PORT": "8600"})
    assert demo.ui_command(wide)[demo.ui_command(wide).index("--server.address") + 1] == "0.0.0.0"
    assert demo.ui_url(wide) == "http://localhost:8600"


def test_waiting_for_the_server_stops_when_it_exits():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    t0 = time.monotonic()
    with pytest.raises(SystemExit, match="exited with code 3"):
        demo.wait_ready(proc, f"http://127.0.0.1:{free_port()}/health", 60)
    assert time.monotonic() - t0 < 10


def test_another_program_answering_on_the_port_is_not_our_server():
    """Any HTTP answer used to count as ready: an HTML 501 from another server, for instance."""

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_error(501)

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(SystemExit, match="did not answer"):
            demo.wait_ready(proc, f"http://127.0.0.1:{other.server_address[1]}/health", 2)
    finally:
        proc.kill(), proc.wait(), other.shutdown(), other.server_close()


# ------------------------------------------------------------------------- the function's environment
def test_the_function_sees_what_it_is_given_not_the_shell_s_variables(monkeypatch, tmp_path):
    from server.local import LocalLambda

    monkeypatch.setenv("ENCODER", "onnx")
    monkeypatch.setenv("BACKEND", "opensearch")
    monkeypatch.setenv("SOME_TOKEN", "not-for-the-function")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = LocalLambda({"INDEX_PATH": str(tmp_path), "PYTHONPATH": str(tmp_path)}).process_env()
    assert not {"ENCODER", "BACKEND", "SOME_TOKEN"} & set(env)
    assert env["INDEX_PATH"] == str(tmp_path) and env["PATH"] == os.environ["PATH"] and env["LANG"] == "C.UTF-8"
    assert env["PYTHONPATH"] == os.pathsep.join((str(REPO), str(tmp_path)))
    assert env["HF_HUB_OFFLINE"] == "1" and LocalLambda({"HF_HUB_OFFLINE": "0"}).process_env()["HF_HUB_OFFLINE"] == "0"


def test_python_m_server_local_hands_on_the_shell_s_configuration_only():
    from server.local.stack import shell_configuration

    shell = {"INDEX_PATH": "/srv/index", "ENCODER": "onnx", "OPENSEARCH_URL": "https://os.example",
             "AWS_PROFILE": "dev", "HF_HOME": "/cache/hf", "CLIPSEARCH_API_URL": "http://x/search",
             "DEMO_UI_PORT": "8501", "EDITOR": "vi", "PYTHONPATH": "/elsewhere"}
    assert shell_configuration(shell) == {"INDEX_PATH": "/srv/index", "ENCODER": "onnx",
                                          "OPENSEARCH_URL": "https://os.example", "AWS_PROFILE": "dev",
                                          "HF_HOME": "/cache/hf"}


@pytest.mark.e2e
def test_an_exported_encoder_or_backend_does_not_change_a_stack_s_function(monkeypatch, tmp_path, tiny_encoder,
                                                                           tiny_model_dir):
    from server_support import build_index

    from server.local import LocalLambda

    build_index(tmp_path / "index", tiny_encoder, n=3)
    monkeypatch.setenv("ENCODER", "tensorflow")  # not a valid value: the function would answer 503
    monkeypatch.setenv("BACKEND", "opensearch")
    env = {"MODEL_PATH": str(tiny_model_dir), "INDEX_PATH": str(tmp_path / "index"), "TORCH_THREADS": "1"}
    with LocalLambda(env=env, log=tmp_path / "log") as stack:
        assert stack.ready_status == 200, (tmp_path / "log").read_text()[-2000:]
        assert stack.invoke({"query": "two dogs", "input_type": "text"})["statusCode"] == 200
