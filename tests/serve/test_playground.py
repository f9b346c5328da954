"""The playground in headless Chromium (Selenium; Debian's chromium and chromium-driver): each
served run's panel driven as a person would (type, upload a file, click) and what the page
shows checked against the run's own `rnnkit.load(run)` answer.

``RNNKIT_SERVE_RUNS=name=DIR,... RNNKIT_SCREENSHOTS=1 pytest tests/serve/test_playground.py``
serves those runs instead of tiny ones and saves each panel as docs/img/serving-TASK.png
(docs/serving.md's pictures)."""

from __future__ import annotations

import base64
import os
import shutil
import traceback
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra: pip install 'rnnkit[serve]'")
pytest.importorskip("selenium", reason="the dev extra's selenium: pip install selenium")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_runs import RUNS, panel_input  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.serve.background import serving  # noqa: E402

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (BROWSER and CHROMEDRIVER),
    reason="no Chromium here: apt-get install chromium chromium-driver (scripts/test does)",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threads only slow them down (and the suite's workers share the
    cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def every_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny run of every task the playground has a panel for (``RNNKIT_SERVE_RUNS``: the
    runs it names)."""
    given = os.environ.get("RNNKIT_SERVE_RUNS")
    if given:
        return {name: Path(path) for name, path in (p.split("=", 1) for p in given.split(","))}
    root = tmp_path_factory.mktemp("playground")
    return {name: make(root) for name, make in RUNS.items()}


def chromium_driver(downloads: Path):
    """A headless Chromium through Selenium saving downloads in ``downloads``."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1100,1400"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


class Panel:
    """One run's panel of the page: its inputs, buttons and output."""

    def __init__(self, driver, name: str, predictor, folder: Path) -> None:
        self.driver, self.predictor, self.folder = driver, predictor, folder
        self.wait = WebDriverWait(driver, 60, poll_frequency=0.02)
        self.element = driver.find_element(By.ID, f"run-{name}")
        self.output = self.element.find_element(By.CSS_SELECTOR, ".output")

    def find(self, css: str):
        return self.output.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list:
        return self.output.find_elements(By.CSS_SELECTOR, css)

    def type(self, css: str, text: str) -> None:
        box = self.element.find_element(By.CSS_SELECTOR, css)
        box.clear()
        box.send_keys(text)

    def upload(self, path: Path) -> None:
        self.element.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))

    def click(self, button: str, error: str | None = None) -> None:
        """Press ``button`` and wait for the panel's answer: a result, or the ``error`` said."""
        self.driver.execute_script("arguments[0].replaceChildren()", self.output)  # the old one
        xpath = f".//button[normalize-space()='{button}']"
        self.element.find_element(By.XPATH, xpath).click()
        self.wait.until(lambda _: self.output.get_attribute("textContent"))
        shown = self.output.get_attribute("textContent")
        if error is None:
            assert "error" not in self.output.get_attribute("class"), shown
        else:
            assert "error" in self.output.get_attribute("class") and error in shown, shown

    def text(self, css: str = ".label") -> str:
        return self.find(css).get_attribute("textContent")

    def cells(self, css: str, attribute: str = "textContent") -> list[list[str]]:
        """The rows of the table ``css`` of the output: each cell's ``attribute`` (th and td)."""
        return self.driver.execute_script(CELLS, self.find(css), attribute)


def readable(times: list[str]) -> list[str]:
    """ISO times as the page shows them: the dates alone when every time is midnight."""
    if all(t.endswith("T00:00:00") for t in times):
        return [t[: -len("T00:00:00")] for t in times]
    return [t.replace("T", " ") for t in times]


def check_probabilities(panel: Panel, result) -> None:
    """The bars' lines: every label with its probability to 3 decimals, in the answer's order."""
    rows = [row.get_attribute("textContent").split() for row in panel.all(".output > div > div")]
    assert rows == [[label, f"{p:.3f}"] for label, p in result.probabilities.items()]


def check_sentiment(panel: Panel, sentence: str) -> None:
    panel.type("input[type=text]", sentence)
    panel.click("Classify")
    (expected,) = panel.predictor.predict([sentence])
    assert panel.text() == expected.label
    check_probabilities(panel, expected)
    shaded = panel.all(".tokens .token")
    assert [t.text for t in shaded] == expected.tokens
    assert [float(t.get_attribute("title")) for t in shaded] == pytest.approx(
        expected.attention, abs=1e-3
    )


def check_charlm(panel: Panel, prompt: str) -> None:
    panel.type("textarea", prompt)
    panel.element.find_element(By.XPATH, ".//button[normalize-space()='Generate']").click()
    panel.wait.until(lambda _: panel.output.get_attribute("data-done") == "true")
    shown = panel.output.get_attribute("textContent")  # the text as streamed, spaces kept
    assert shown == prompt + panel.predictor.generate(prompt, 200, seed=1).text


def check_digits(panel: Panel, wav: Path) -> None:
    panel.click("Classify the recording", error="choose a WAV file first")
    panel.upload(wav)
    assert panel.element.find_element(By.CSS_SELECTOR, ".preview audio").get_attribute("src")
    panel.click("Classify the recording")
    (expected,) = panel.predictor.predict([str(wav)])
    assert panel.text() == expected.label
    check_probabilities(panel, expected)
    drawn = [line.get_attribute("points").split() for line in panel.all("svg polyline.series")]
    if expected.attention is None:  # a run pooling by mean or last state
        assert drawn == []
    else:
        assert [len(points) for points in drawn] == [len(expected.attention)]  # one per frame


def check_ctc(panel: Panel, wav: Path) -> None:
    panel.upload(wav)
    panel.click("Transcribe")
    (expected,) = panel.predictor.predict([str(wav)])
    assert panel.text() == (expected.text or "(nothing heard)")
    names = [n.get_attribute("textContent") for n in panel.all(".posteriors .symbols div")]
    assert names == ["blank" if s == "_" else s for s in expected.symbols]
    canvas = panel.find(".posteriors canvas")
    cell = int(canvas.get_attribute("data-cell"))  # frame t, symbol k: cell x 10 pixels at
    xs = [cell * t + cell // 2 for t in range(len(expected.posteriors))]  # (cell t, 10 k), the
    ys = [10 * k + 5 for k in range(len(expected.symbols))]  # probability their opacity
    drawn = panel.driver.execute_script(OPACITY, canvas, xs, ys)
    assert drawn == [pytest.approx(frame, abs=0.01) for frame in expected.posteriors]


def check_translate(panel: Panel, sentence: str) -> None:
    panel.type("input[type=text]", sentence)
    panel.click("Translate")
    (expected,) = panel.predictor.predict([sentence])
    assert panel.text() == expected.text
    words = panel.cells("table.attention")
    assert words[0] == ["", *expected.source_tokens]
    assert [row[0] for row in words[1:]] == expected.target_tokens
    weights = [[float(w) for w in row[1:]] for row in panel.cells("table.attention", "title")[1:]]
    assert weights == [pytest.approx(row, abs=1e-3) for row in expected.attention]


def check_caption(panel: Panel, png: Path) -> None:
    panel.upload(png)
    preview = panel.element.find_element(By.CSS_SELECTOR, ".preview img")
    panel.click("Caption")
    (expected,) = panel.predictor.predict([str(png)])
    assert panel.text() == expected.text
    words = [f.get_attribute("textContent") for f in panel.all(".maps figcaption")]
    assert words == expected.target_tokens
    height, width = panel.predictor.cfg.scene_size
    assert preview.get_attribute("naturalWidth") == str(width)
    for canvas in panel.all(".maps canvas"):  # the scene at twice its size under each word
        assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == (
            str(2 * width),
            str(2 * height),
        )


def check_forecast(panel: Panel, _) -> None:
    panel.click("Forecast")
    horizon = panel.predictor.horizon
    expected = panel.predictor.forecast(horizon=horizon, level=0.9)
    for column, mean in expected.mean.items():
        plot = panel.find(f".plot[data-column='{column}']")
        drawn = plot.find_element(By.CSS_SELECTOR, "polyline.series").get_attribute("points")
        assert len(drawn.split()) == horizon
        if expected.lower is not None:  # the band: the upper bounds, then the lower ones back
            band = plot.find_element(By.CSS_SELECTOR, "polygon.band").get_attribute("points")
            assert len(band.split()) == 2 * horizon
        cells = panel.cells(f".plot[data-column='{column}'] table.values")[1:]
        assert [c[0] for c in cells] == readable(expected.times)
        shown = [[float(v) for v in c[1:]] for c in cells]
        columns = [mean] + ([expected.lower[column], expected.upper[column]]
                            if expected.lower is not None else [])  # fmt: skip
        assert shown == [pytest.approx(list(v), rel=1e-4) for v in zip(*columns)]


def check_anomaly(panel: Panel, csv: Path) -> None:
    panel.upload(csv)
    panel.click("Score the series")
    (expected,) = panel.predictor.predict([str(csv)])
    flagged = [i for i, f in enumerate(expected.flags) if f]
    assert flagged, "the run flags no row of its series: nothing to circle"
    assert panel.text().startswith(f"{len(flagged)} of {len(expected.flags)} rows flagged")
    assert len(panel.all("circle.mark")) == len(flagged)
    assert len(panel.all("line.threshold")) == 1
    rows = panel.cells("table.values")[1:]
    times = readable(expected.times)
    assert [row[0] for row in rows] == [times[i] for i in flagged[:50]]
    assert [float(row[2]) for row in rows] == [
        pytest.approx(expected.scores[i], rel=1e-4) for i in flagged[:50]
    ]


def check_music(panel: Panel, _) -> None:
    panel.click("Compose")
    expected = panel.predictor.compose(frames=64, seed=1, tempo=80)
    assert f"{expected.frames} frames, {expected.notes} notes" in panel.text(".summary")
    link = panel.find("a.download")
    assert base64.b64decode(link.get_attribute("href").split(",", 1)[1]) == expected.midi
    link.click()  # the browser saves the file the link names
    saved = panel.folder / link.get_attribute("download")
    panel.wait.until(lambda _: saved.exists() and saved.stat().st_size == len(expected.midi))
    assert saved.read_bytes() == expected.midi
    canvas = panel.find("canvas")
    width = int(canvas.get_attribute("data-frame"))  # frame t, key p: width x 2 pixels at
    xs = [width * t + width // 2 for t in range(len(expected.piano_roll))]  # (width t,
    ys = [3 * (87 - p) for p in range(88)]  # 3 (87 - p)), the keys from A0 up
    drawn = panel.driver.execute_script(OPACITY, canvas, xs, ys)
    assert [[round(a) for a in frame] for frame in drawn] == expected.piano_roll


CELLS = """const [table, attribute] = arguments;
return Array.from(table.rows, (row) => Array.from(row.cells, (cell) =>
  attribute === "textContent" ? cell.textContent : cell.getAttribute(attribute)));"""
#: a canvas read back: the opacity (0 to 1) of pixel (x, y) for each x of xs (rows) and y of ys
OPACITY = """const [canvas, xs, ys] = arguments, pixels = canvas.getContext("2d").getImageData(
  0, 0, canvas.width, canvas.height).data;
return xs.map((x) => ys.map((y) => pixels[4 * (y * canvas.width + x) + 3] / 255));"""
CHECKS = {"sentiment": check_sentiment, "charlm": check_charlm, "speech-digits": check_digits,
          "speech-ctc": check_ctc, "translate": check_translate, "caption": check_caption,
          "forecast": check_forecast, "anomaly": check_anomaly, "music": check_music}  # fmt: skip


def test_the_playground_runs_every_panel_as_the_predictors_answer(every_run, tmp_path):
    """Each run's panel driven as a person would (type, upload, click) and what it shows
    checked against ``rnnkit.load(run)``'s own answer; every panel is tried, the failures
    named by panel."""
    driver = chromium_driver(tmp_path)
    predictors = {name: rnnkit.load(path) for name, path in every_run.items()}
    failures = []
    try:
        with serving(every_run) as (url, _):
            driver.get(url + "/")
            status = driver.find_element(By.ID, "status")
            WebDriverWait(driver, 30).until(lambda _: f"{len(every_run)} run(s)" in status.text)
            assert all(name in status.text for name in every_run)
            for name, predictor in predictors.items():
                panel = Panel(driver, name, predictor, tmp_path)
                try:
                    CHECKS[predictor.task](panel, panel_input(predictor, tmp_path))
                except Exception:  # noqa: BLE001 - reported with the panel's name below
                    failures.append(f"the {predictor.task} panel ({name}):\n"
                                    + traceback.format_exc(limit=-3))  # fmt: skip
                if os.environ.get("RNNKIT_SCREENSHOTS"):  # docs/serving.md's pictures
                    driver.execute_script("arguments[0].scrollIntoView()", panel.element)
                    panel.element.screenshot(str(SHOTS / f"serving-{predictor.task}.png"))
    finally:
        driver.quit()
    assert not failures, "\n".join(failures)
