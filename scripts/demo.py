"""`make demo`: ingest a collection into the embedded index, serve it locally, open the UI.

    python -m scripts.demo            # Unsplash Lite sample (DEMO_LIMIT photos, default 500)
    DEMO_FOLDER=~/Pictures make demo  # your own photos instead
    DEMO_GATEWAY_PORT=8100 make demo  # other ports: DEMO_LAMBDA_PORT (9000), DEMO_GATEWAY_PORT (8000),
                                      # DEMO_UI_PORT (8501); DEMO_UI_ADDRESS (127.0.0.1) to serve the UI wider

The ports are checked before anything else runs: one in use stops the demo at once, naming it
and the variable that moves it.

Model: MODEL_PATH or MODEL_ID as configured. Where the model hub cannot be reached and no
MODEL_PATH is set, a random-weight ViT-B/32 is built locally so every piece still runs end to
end; its rankings are meaningless, and the demo says so loudly. Likewise, where Unsplash cannot be
reached, a generated sample folder is ingested instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clipsearch.config import DEFAULT_MODEL_ID

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


@dataclass(frozen=True)
class Port:
    variable: str
    what: str
    number: int
    host: str = "127.0.0.1"


def demo_ports(env: dict[str, str]) -> tuple[Port, Port, Port]:
    """The Lambda, gateway and UI ports from DEMO_*_PORT, or SystemExit saying what is wrong."""
    ports = []
    for variable, what, default in (("DEMO_LAMBDA_PORT", "Lambda invocation URL", 9000),
                                    ("DEMO_GATEWAY_PORT", "API gateway", 8000), ("DEMO_UI_PORT", "web page", 8501)):
        raw = env.get(variable, "").strip() or str(default)
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 65535:
            raise SystemExit(f"{variable}={raw!r} is not a port number (1 to 65535)")
        host = (env.get("DEMO_UI_ADDRESS", "").strip() or "127.0.0.1") if variable == "DEMO_UI_PORT" else "127.0.0.1"
        ports.append(Port(variable, what, int(raw), host))
    numbers = [p.number for p in ports]
    if len(set(numbers)) < len(numbers):
        raise SystemExit(f"the demo needs three different ports, got {', '.join(f'{p.variable}={p.number}' for p in ports)}")
    return ports[0], ports[1], ports[2]


def check_free(ports: tuple[Port, ...]) -> None:
    """SystemExit naming the first port something else listens on, and how to pick another."""
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in port.host else socket.AF_INET) as probe:
            try:
                probe.bind((port.host, port.number))
            except OSError as exc:
                raise SystemExit(f"port {port.number} on {port.host} ({port.what}) is not free: {exc.strerror}. "
                                 f"Stop what uses it, or choose another port: {port.variable}=N make demo") from None


def reachable(url: str, timeout: float = 4.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except Exception:  # noqa: BLE001 - any failure means unreachable
        return False


def choose_model(env: dict[str, str]) -> None:
    if env.get("MODEL_PATH"):
        say(f"model: {env['MODEL_PATH']}")
        return
    if reachable("https://huggingface.co"):
        say(f"model: {env.get('MODEL_ID', DEFAULT_MODEL_ID)} (from the Hugging Face hub)")
        return
    from clipsearch.models.modelgen import build_stand_in

    # A stand-in of the default checkpoint's family and size (CLIP ViT-B/32), generated here.
    path = DATA / "models" / "random-vit-b-32"
    if not (path / "model.safetensors").is_file():
        build_stand_in(path, "vit-b-32", model_id="clipsearch/random-vit-b-32")
    env["MODEL_PATH"] = str(path)
    say(f"WARNING: the model hub is unreachable and MODEL_PATH is not set: using a RANDOM-WEIGHT\n"
        f"    stand-in of {DEFAULT_MODEL_ID}'s architecture so the whole stack runs. Rankings are\n"
        "    meaningless. Set MODEL_PATH to a real checkpoint directory for real results.")


def sample_folder() -> Path:
    """A few dozen generated photos, for machines that cannot reach Unsplash."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder = DATA / "sample-photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(48):
        path = folder / f"sample-{i:02d}.jpg"
        if path.exists():
            continue
        w, h = [(640, 427), (427, 640), (512, 512)][i % 3]
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            box = (x0, y0, x0 + int(rng.integers(40, w // 2)), y0 + int(rng.integers(40, h // 2)))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        img.save(path, quality=90)
    return folder


def ingest(env: dict[str, str]) -> None:
    py = sys.executable
    if env.get("DEMO_FOLDER"):
        cmd = [py, "-m", "ingest", "folder", env["DEMO_FOLDER"]]
    elif reachable("https://unsplash.com"):
        cmd = [py, "-m", "ingest", "unsplash", "--limit", env.get("DEMO_LIMIT", "500")]
    else:
        say("Unsplash is unreachable: ingesting a generated sample folder instead (set DEMO_FOLDER for your photos)")
        cmd = [py, "-m", "ingest", "folder", str(sample_folder())]
    if cmd[3] == "folder":  # results carry paths relative to it: the UI finds the photos there
        env.setdefault("CLIPSEARCH_PHOTO_DIRS", str(Path(cmd[4]).expanduser().resolve()))
    say("ingest: " + " ".join(cmd[1:]))
    subprocess.run(cmd + ["--index", env["INDEX_PATH"]], env=env, cwd=REPO, check=True)


def wait_ready(server: subprocess.Popen, url: str, seconds: float) -> int:
    """Wait until OUR server answers GET /health (200, or 503 with the function's JSON error):
    any HTTP answer is not enough, another program may hold the port. SystemExit if the server
    process exits or nothing of ours answers in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the local server (python -m server.local) exited with code {server.returncode}; "
                             "its message is above")
        status = _health(url)
        if status is not None:
            return status
        time.sleep(0.3)
    raise SystemExit(f"the local server did not answer {url} within {seconds:.0f} s")


def _health(url: str) -> int | None:
    """200 or 503 when the function answered (a JSON object: health, or the error saying why not)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, ValueError):
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
        return 200
    if status == 503 and isinstance(body, dict) and isinstance(body.get("error"), dict):
        return 503
    return None


def ui_command(ui: Port) -> list[str]:
    """`streamlit run`, on the UI's port and address (127.0.0.1 unless DEMO_UI_ADDRESS asks wider)."""
    return [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(ui.number),
            "--server.address", ui.host, "--browser.gatherUsageStats", "false"]


def ui_url(ui: Port) -> str:
    host = "localhost" if ui.host in ("0.0.0.0", "::") else ui.host
    return f"http://{f'[{host}]' if ':' in host else host}:{ui.number}"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # Ctrl-C, or a SIGTERM from a supervisor, stops the server and the UI too; explicit because a
    # job started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    env = dict(os.environ)
    lambda_port, gateway_port, ui_port = demo_ports(env)
    check_free((lambda_port, gateway_port, ui_port))  # before minutes of ingest, not after
    env.setdefault("INDEX_PATH", str(DATA / "index"))
    env.setdefault("HF_HUB_OFFLINE", "0")
    choose_model(env)
    ingest(env)
    check_free((lambda_port, gateway_port, ui_port))  # something may have taken one meanwhile
    say(f"serving: Lambda emulator on :{lambda_port.number}, gateway on :{gateway_port.number}")
    server = subprocess.Popen([sys.executable, "-m", "server.local", "--lambda-port", str(lambda_port.number),
                               "--gateway-port", str(gateway_port.number)], env=env, cwd=REPO)
    ui = None
    try:
        wait_ready(server, f"http://127.0.0.1:{gateway_port.number}/health", 120)
        env["CLIPSEARCH_API_URL"] = f"http://127.0.0.1:{gateway_port.number}/search"
        say(f'try: curl -XPOST "http://localhost:{lambda_port.number}/2015-03-31/functions/function/invocations" '
            "-d '{\"query\": \"two dogs\", \"input_type\": \"text\"}'")
        say(f"UI: {ui_url(ui_port)}  (Ctrl-C stops everything)")
        ui = subprocess.Popen(ui_command(ui_port), env=env, cwd=REPO)
        while ui.poll() is None:
            if server.poll() is not None:
                raise SystemExit(f"the local server exited with code {server.returncode}; its message is above")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in (ui, server):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
