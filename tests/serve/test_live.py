"""The server on a real socket (uvicorn in a thread, or `rnnkit serve` in a process): stream
slots and disconnects, SIGTERM, and the playground in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'rnnkit[serve]'")

import httpx  # noqa: E402
from serve_runs import charlm_run, sentiment_run  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.serve.app import Limits  # noqa: E402
from rnnkit.serve.background import free_port, serving  # noqa: E402

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs; ``RNNKIT_SERVE_RUNS=shakespeare=DIR,reviews=DIR`` serves trained ones instead
    (with ``RNNKIT_SCREENSHOTS=1``: docs/serving.md's pictures)."""
    given = os.environ.get("RNNKIT_SERVE_RUNS")
    if given:
        return dict(pair.split("=", 1) for pair in given.split(","))
    root = tmp_path_factory.mktemp("live")
    return {"shakespeare": charlm_run(root), "reviews": sentiment_run(root)}


def test_a_full_run_refuses_more_streams_and_a_leaving_client_frees_its_slot(runs):
    with serving(runs, Limits(max_streams=1, max_tokens=10**7)) as (url, app):
        body = {"prompt": "First", "max_tokens": 10**7, "stream": True}  # until the client leaves
        with httpx.Client(base_url=url, timeout=30) as client:
            with client.stream("POST", "/v1/runs/shakespeare/generate", json=body) as first:
                lines = first.iter_lines()  # kept: a closed iterator closes the response
                line = next(lines)
                assert json.loads(line[len("data: ") :])["step"] == 0
                second = client.post("/v1/runs/shakespeare/generate", json=body)
                assert second.status_code == 429 and "streams already" in second.json()["error"]
                lines.close()
            run = app.state.served["shakespeare"]
            for _ in range(500):  # the scheduler drops the stream at its next step
                if run.streams == 0 and not run.scheduler.active:
                    break
                time.sleep(0.01)
            assert run.streams == 0 and not run.scheduler.active
            third = client.post("/v1/runs/shakespeare/generate", json={**body, "max_tokens": 5})
            assert third.status_code == 200 and '"done": true' in third.text


def test_sigterm_drains_and_exits_zero(runs):
    port = free_port()
    command = [sys.executable, "-m", "rnnkit", "serve", *map(str, runs.values()), "--port",
               str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        names = [r["name"] for r in httpx.get(f"http://127.0.0.1:{port}/v1/runs").json()["runs"]]
        assert sorted(names) == sorted(runs)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
        assert time.monotonic() - started < 15 and "stopped" in out
    finally:
        process.kill()


def chromium_driver():
    """A headless Chromium through Selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (CI installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1100,900"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver_path)
    return webdriver.Chrome(options=options, service=service)


def test_the_playground_lists_the_runs_and_runs_each_panel(runs):
    driver = chromium_driver()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    try:
        with serving(runs) as (url, _):
            driver.get(url + "/")
            wait.until(lambda d: "2 run(s)" in d.find_element(By.ID, "status").text)
            status = driver.find_element(By.ID, "status").text
            assert "shakespeare" in status and "reviews" in status
            review = driver.find_element(By.ID, "run-reviews")
            box = review.find_element(By.CSS_SELECTOR, "input[type=text]")
            box.clear()
            box.send_keys("a wonderful moving film")
            review.find_element(By.TAG_NAME, "button").click()
            wait.until(lambda d: review.find_elements(By.CSS_SELECTOR, ".tokens .token"))
            label = review.find_element(By.CSS_SELECTOR, ".label").text
            expected = rnnkit.load(runs["reviews"]).predict(["a wonderful moving film"])[0]
            assert label == expected.label
            words = [t.text for t in review.find_elements(By.CSS_SELECTOR, ".tokens .token")]
            assert words == ["a", "wonderful", "moving", "film"]
            writer = driver.find_element(By.ID, "run-shakespeare")
            prompt = writer.find_element(By.TAG_NAME, "textarea")
            prompt.clear()
            prompt.send_keys("First Citizen")
            writer.find_element(By.TAG_NAME, "button").click()
            output = writer.find_element(By.CSS_SELECTOR, ".output")
            wait.until(lambda d: output.get_attribute("data-done") == "true")
            shown = output.get_attribute("textContent")  # the text as streamed, spaces kept
            generated = rnnkit.load(runs["shakespeare"]).generate("First Citizen", 200, seed=1)
            assert shown == "First Citizen" + generated.text
            if os.environ.get("RNNKIT_SCREENSHOTS"):  # docs/serving.md's pictures
                review.screenshot(str(SHOTS / "serving-sentiment.png"))
                writer.screenshot(str(SHOTS / "serving-charlm.png"))
    finally:
        driver.quit()
