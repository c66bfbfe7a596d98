"""The front-end in a real browser: `streamlit run streamlit_app.py` driven by headless Chromium
(Debian's chromium + chromium-driver, through Selenium).

- against what `make demo` runs: photos generated in a tmp dir, `python -m ingest folder` with
  the tiny CLIP model into an embedded FAISS index, and the local stack (server.local.LocalLambda:
  the Lambda emulator running the handler, and the gateway): type a query, submit, wait for the
  result images, screenshot, then "More like this";
- against the HTTP stub: the "warming up" notice shows while a cold start is retried.

Skips, saying why, where Chromium or its driver is missing (`make browser` installs them).
Set CLIPSEARCH_SCREENSHOT=path to keep a copy of the results screenshot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REPO
from stub_http import GATEWAY_TIMEOUT, Reply, StubApi, free_port, ok_body

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")
N_PHOTOS = 10
QUERY = "two dogs on a beach"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM or not CHROMEDRIVER:
        missing = " and ".join(n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p)
        pytest.skip(f"{missing} not installed: `make browser` (or apt-get install chromium chromium-driver) "
                    "installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.add_argument("--window-size=1400,1400")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def streamlit_app(api_url: str, log: Path) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on a free port, pointed at `api_url`; yields its URL."""
    port = free_port()
    env = {**os.environ, "CLIPSEARCH_API_URL": api_url, "CLIPSEARCH_RETRY_BUDGET": "30"}
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
           "--server.headless", "true", "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"streamlit did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def generated_photos(folder: Path, n: int) -> list[Path]:
    """Distinct little 'photos': a sky-to-ground gradient and a few shapes, in three shapes."""
    rng = np.random.default_rng(11)
    paths = []
    for i in range(n):
        w, h = [(480, 320), (320, 480), (400, 400)][i % 3]
        top, bottom = rng.integers(40, 230, 3), rng.integers(40, 230, 3)
        t = np.linspace(0, 1, h)[:, None, None]
        img = Image.fromarray((top * (1 - t) + bottom * t).repeat(w, axis=1).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 90))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
        paths.append(folder / f"photo-{i:02d}.jpg")
        img.save(paths[-1], quality=88)
    return paths


@pytest.fixture(scope="module")
def search_api(tmp_path_factory, tiny_model_dir) -> Iterator[str]:
    """What `make demo` runs: `python -m ingest folder` over generated photos with the tiny model,
    then the local stack (Lambda emulator running the handler, and the gateway) serving that
    embedded index; yields the gateway's POST /search URL."""
    from ingest.cli import main as ingest
    from server.local import LocalLambda

    root = tmp_path_factory.mktemp("e2e")
    (root / "photos").mkdir()
    generated_photos(root / "photos", N_PHOTOS)
    env = {"INDEX_PATH": str(root / "index"), "MODEL_PATH": str(tiny_model_dir), "BACKEND": "faiss",
           "ENCODER": "torch", "HF_HUB_OFFLINE": "1", "TORCH_THREADS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        assert ingest(["folder", str(root / "photos"), "--no-cache", "--decode-workers", "0", "--threads", "1",
                       "--quiet"]) == 0
    with LocalLambda(env=env, log=root / "stack.log", startup_timeout_s=60) as stack, \
            pytest.MonkeyPatch.context() as mp:
        assert stack.ready_status == 200, (root / "stack.log").read_text(errors="replace")[-3000:]
        # Results carry paths relative to the ingested folder: the page finds the files there, as
        # `make demo` sets it up.
        mp.setenv("CLIPSEARCH_PHOTO_DIRS", str(root / "photos"))
        yield stack.search_url


def wait_for(driver, condition, seconds: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)
    except Exception as exc:  # noqa: BLE001 - a timeout of any kind: say what we waited for
        raise AssertionError(f"timed out waiting for {what}; page text:\n{driver.find_element('tag name', 'body').text[:2000]}") from exc


def submit_query(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, 'input[aria-label="Describe the photo"]'), 30,
                   "the query box")
    box.send_keys(text)
    driver.find_element(By.XPATH, "//button[normalize-space()='Search']").click()


def loaded_result_images(driver) -> int:
    """Result images the browser has actually decoded (naturalWidth > 0)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=stColumn] [data-testid=stImage] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length")


def test_text_query_shows_result_images(browser, search_api, tmp_path):
    from selenium.webdriver.common.by import By

    with streamlit_app(search_api, tmp_path / "streamlit.log") as url:
        browser.get(url)
        submit_query(browser, QUERY)
        wait_for(browser, lambda d: loaded_result_images(d) == N_PHOTOS, 60, f"{N_PHOTOS} result images")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert f"Photos matching “{QUERY}”" in body and f"{N_PHOTOS} results · encode" in body
        assert body.count("More like this") == N_PHOTOS and "photo-00.jpg" in body
        assert "Image unavailable" not in body
        shot = tmp_path / "results.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("CLIPSEARCH_SCREENSHOT"):
            shutil.copy(shot, os.environ["CLIPSEARCH_SCREENSHOT"])

        # "More like this" on the best result: a search by its id (which may leave the photo out).
        first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=stColumn] [data-testid=stCaptionContainer]")[0].text
        browser.find_element(By.XPATH, "(//button[normalize-space()='More like this'])[1]").click()
        wait_for(browser, lambda d: f"Photos like {first}" in d.find_element(By.TAG_NAME, "body").text, 30,
                 f"the more-like-this results for {first}")
        wait_for(browser, lambda d: loaded_result_images(d) >= N_PHOTOS - 1, 30, "the more-like-this images")
        # No error; one warning, the API's: the stack runs the tiny random-weight stand-in model.
        alerts = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stAlert]")]
        assert len(alerts) == 1 and "random weights" in alerts[0] and "MODEL_PATH" in alerts[0], alerts


def test_warming_up_notice_shows_while_retrying(browser, tmp_path):
    from selenium.webdriver.common.by import By

    script = [Reply(504, GATEWAY_TIMEOUT), Reply(200, ok_body([]), delay_s=3.0)]
    with StubApi(script) as api, streamlit_app(api.search_url, tmp_path / "streamlit.log") as url:
        browser.get(url)
        submit_query(browser, "cold start")
        wait_for(browser, lambda d: "The search service is warming up (attempt 2)…" in d.find_element(By.TAG_NAME, "body").text,
                 20, "the warming-up notice")
        wait_for(browser, lambda d: "answered on attempt 2" in d.find_element(By.TAG_NAME, "body").text, 20,
                 "the answer after the retry")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "warming up (attempt" not in body and "the index has no photos" in body
        alerts = browser.find_elements(By.CSS_SELECTOR, "[data-testid=stAlert]")  # the selector used above
        assert len(alerts) == 1 and "the index has no photos" in alerts[0].text
        assert len(api.searches) == 2
