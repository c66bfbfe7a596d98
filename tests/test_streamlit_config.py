"""The project's Streamlit settings (.streamlit/config.toml), as `streamlit run` from the repository
root applies them: the page listens on 127.0.0.1 only, looks up no external IP at start-up and
sends no usage statistics, unless asked otherwise on the command line (make demo's DEMO_UI_ADDRESS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
import urllib.request

import psutil
import pytest
from conftest import REPO
from stub_http import free_port

pytestmark = pytest.mark.e2e


def test_the_config_file_says_loopback_and_no_usage_statistics():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False


def test_streamlit_run_from_the_repository_listens_on_loopback_only(tmp_path):
    port = free_port()
    log = tmp_path / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
           "--server.headless", "true", "--server.fileWatcherType", "none"]  # no address: the config file's
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "CLIPSEARCH_API_URL": "http://127.0.0.1:9/search"},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening
        printed = log.read_text()
        assert f"URL: http://127.0.0.1:{port}" in printed, printed
        assert "External URL" not in printed and "Network URL" not in printed, printed
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
