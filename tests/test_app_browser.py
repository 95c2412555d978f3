"""The web app in a real browser: ``python -m if3d.app`` started on a free port, driven by headless Chromium
(Debian's ``chromium`` and ``chromedriver``; nothing downloads a browser) through Selenium.

A user uploads a FER2013 photo and sees the predicted class and the probability chart; uploads the shared
CK+ clip and sees the timing diagram, a video the browser plays and a results.csv to download; uploads a
text file named .jpg and reads the message. Every request the page makes goes to the app itself (nothing
from the internet), and the server's temporary folder is gone once it stops. Each test saves a screenshot
in its tmp_path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"the browser tests need Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install -y chromium chromium-driver (.ci/run installs them)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAPPY = "fer2013/test/happy/PublicTest_10130075.jpg"
VIDEO = "video/1543684773.avi"
#: seconds the app may take to serve its page, and the page an answer: bounds for a failure only (on an idle
#: 2-core machine the app serves in about 10 s and every answer comes in seconds; a busy one is many times slower)
START_S, ANSWER_S = 1200, 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The running app: ``(url, its temporary directory)``; stopped with SIGTERM after the module's tests."""
    tmp = tmp_path_factory.mktemp("app-tmp")
    port = _free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "if3d.app", "--port", str(port), "--threads", "1"], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the app did not serve {url}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, tmp
    proc.terminate()
    assert proc.wait(ANSWER_S) == 0, log.read_text()[-3000:]
    assert not list(tmp.glob("if3d-app-*")), "the app left its temporary folder behind"


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--mute-audio"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


@pytest.fixture
def page(app, browser, tmp_path):
    """A fresh page; after the test: its screenshot in tmp_path, and a check that it fetched nothing from
    anywhere but the app."""
    url, _ = app
    browser.get_log("performance")  # what earlier tests' pages requested
    browser.get(url)
    WebDriverWait(browser, ANSWER_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo-input input[type=file]"))
    yield browser
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0
    requested = set()
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            requested.add(msg["params"]["request"]["url"])
    remote = [u for u in requested if u.split(":", 1)[0] in ("http", "https", "ws", "wss")
              and not u.split("/")[2].startswith("127.0.0.1")]
    assert requested
    assert not remote, f"the page fetched from outside the app: {sorted(remote)[:5]}"


def _upload(driver, elem_id: str, path: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))


def _text(driver, elem_id: str) -> str:
    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def test_photo_shows_class_and_probability_chart(page, data_dir):
    _upload(page, "photo-input", data_dir / HAPPY)
    WebDriverWait(page, ANSWER_S).until(lambda d: "1 face(s)" in _text(d, "photo-status"))
    chart = page.find_element(By.ID, "photo-face-0")
    assert chart.find_element(By.CSS_SELECTOR, "[data-testid=label-output-value]").text == "Happy"
    bars = {m.get_attribute("aria-label"): float(m.get_attribute("value"))
            for m in chart.find_elements(By.CSS_SELECTOR, "meter")}
    assert len(bars) == 7
    assert max(bars, key=bars.get) == "Happy"
    assert bars["Happy"] > 0.5
    assert sum(bars.values()) == pytest.approx(1.0, abs=1e-3)
    img = page.find_element(By.CSS_SELECTOR, "#photo-annotated img")
    assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) >= 48
    assert "Happy" in _text(page, "photo-faces")  # the per-face table


def test_video_shows_timing_diagram_and_csv(page, data_dir):
    page.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Video')]").click()
    WebDriverWait(page, ANSWER_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video-input input[type=file]"))
    _upload(page, "video-input", data_dir / VIDEO)
    WebDriverWait(page, ANSWER_S).until(lambda d: "done" in _text(d, "video-status") or "⚠" in _text(d, "video-status"))
    assert "expression" in _text(page, "video-status"), _text(page, "video-status")
    timing = page.find_element(By.CSS_SELECTOR, "#video-timing img")
    WebDriverWait(page, ANSWER_S).until(lambda d: d.execute_script("return arguments[0].complete && "
                                                             "arguments[0].naturalWidth", timing))
    assert "results.csv" in _text(page, "video-files")
    links = [a.get_attribute("href") for a in page.find_elements(By.CSS_SELECTOR, "#video-files a[href]")]
    csv_link = next(href for href in links if href.split("?")[0].endswith("results.csv"))
    with urllib.request.urlopen(csv_link, timeout=60) as r:
        head = r.read().decode("utf-8").splitlines()
    assert "prob_Happy" in head[0].split(",")
    assert len(head) == 1 + 67  # one row per frame of the clip's one face
    assert any(href.split("?")[0].endswith("analysis.json") for href in links)
    video = page.find_element(By.CSS_SELECTOR, "#video-annotated video")
    WebDriverWait(page, ANSWER_S).until(lambda d: d.execute_script("return arguments[0].readyState >= 1", video))
    assert page.execute_script("return arguments[0].videoWidth", video) > 0  # the browser decodes it


def test_text_file_named_jpg_gets_a_message(page, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is not a photo\n")
    _upload(page, "photo-input", bad)
    WebDriverWait(page, ANSWER_S).until(lambda d: "⚠" in _text(d, "photo-status"))
    status = _text(page, "photo-status")
    assert "holiday.jpg: not an image" in status
    assert "Traceback" not in page.page_source
    assert not any(e.is_displayed() for e in page.find_elements(By.ID, "photo-face-0"))  # no chart
