"""`make demo`: ingest a collection into the embedded index, serve it locally, open the UI.

    python -m scripts.demo            # Unsplash Lite sample (DEMO_LIMIT photos, default 500)
    DEMO_FOLDER=~/Pictures make demo  # your own photos instead

Model: MODEL_PATH or MODEL_ID as configured. Where the model hub cannot be reached and no
MODEL_PATH is set, a random-weight ViT-B/32 is built locally so every piece still runs end to
end; its rankings are meaningless, and the demo says so loudly. Likewise, where Unsplash cannot be
reached, a generated sample folder is ingested instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from clipsearch.config import DEFAULT_MODEL_ID

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


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


def wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if reachable(url, timeout=1.0):
            return
        time.sleep(0.3)
    raise SystemExit(f"nothing answered at {url} within {seconds:.0f} s")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # Ctrl-C, or a SIGTERM from a supervisor, stops the server and the UI too; explicit because a
    # job started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    env = dict(os.environ)
    env.setdefault("INDEX_PATH", str(DATA / "index"))
    env.setdefault("HF_HUB_OFFLINE", "0")
    choose_model(env)
    ingest(env)
    lambda_port, gateway_port = env.get("DEMO_LAMBDA_PORT", "9000"), env.get("DEMO_GATEWAY_PORT", "8000")
    say(f"serving: Lambda emulator on :{lambda_port}, gateway on :{gateway_port}")
    server = subprocess.Popen([sys.executable, "-m", "server.local", "--lambda-port", lambda_port,
                               "--gateway-port", gateway_port], env=env, cwd=REPO)
    ui = None
    try:
        wait_http(f"http://127.0.0.1:{gateway_port}/health", 120)
        env["CLIPSEARCH_API_URL"] = f"http://localhost:{gateway_port}/search"
        say(f'try: curl -XPOST "http://localhost:{lambda_port}/2015-03-31/functions/function/invocations" '
            "-d '{\"query\": \"two dogs\", \"input_type\": \"text\"}'")
        say("UI: http://localhost:8501  (Ctrl-C stops everything)")
        ui = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
                               "--browser.gatherUsageStats", "false"], env=env, cwd=REPO)
        ui.wait()
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
