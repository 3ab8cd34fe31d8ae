"""The web demo in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium)
loads the page, uploads a radiograph on each tab, clicks, and the rendered result is checked against direct calls.
A screenshot of each tab is saved (`ALTA_SCREENSHOT_DIR`, else pytest's tmp folder) and its path printed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from inference.embedding import default_text_length, embed_images, embed_texts
from inference.zero_shot import ZeroShotClassifier


pytest.importorskip("gradio")
pytest.importorskip("gradio_client")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium here: install Debian's `chromium` and `chromium-driver` (apt-get install -y chromium "
    "chromium-driver) to run the real-browser test",
)
# Flags that work on a headless, offline CI machine (no GPU, no sandbox as root, nothing fetched in the background).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1250",
)
TIMEOUT = 60


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="alta-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("ALTA_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, TIMEOUT).until(condition)
    except TimeoutException:
        page = driver.find_element("tag name", "body").text[-2000:]
        raise AssertionError(f"timed out waiting for {what}; page text:\n{page}") from None


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _open_tab(driver, name: str) -> None:
    driver.find_element("xpath", f"//button[@role='tab' and normalize-space()='{name}']").click()


def _upload(driver, element_id: str, path: Path) -> None:
    driver.find_element("css selector", f"#{element_id} input[type=file]").send_keys(str(path))
    # Gradio shows the stem and the extension in separate elements
    _wait(driver, lambda d: path.stem in _text(d, element_id), f"{path.name} to show as uploaded")


def _images_loaded(driver, element_id: str) -> int:
    """How many images inside the element have been decoded by the browser."""
    return driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} img`)].filter(i => i.complete && i.naturalWidth > 0)"
        ".length",
        element_id,
    )


def _shot(driver, folder: Path, name: str) -> Path:
    path = folder / f"space_{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000
    return path


def test_each_tab_in_a_real_browser(running_app, gallery_images, browser, screenshot_dir: Path) -> None:
    from processing.demo_data import demo_class_prompts

    demo, url = running_app
    browser.get(url)
    _wait(browser, lambda d: d.find_elements("id", "classify-button"), "the page to render")
    notice = browser.find_element("id", "research-notice")
    assert notice.is_displayed() and "Not a medical device" in notice.text

    # Classify: upload a frontal, click, read the rendered table and summary
    _upload(browser, "frontal-file", gallery_images["frontal"])
    browser.find_element("id", "classify-button").click()
    _wait(browser, lambda d: "Top class" in _text(d, "classify-summary"), "the classification")
    direct = ZeroShotClassifier(
        demo.model,
        demo.processor,
        demo_class_prompts(),
        clean_text=False,
        max_length=default_text_length(demo.processor),
    ).predict([gallery_images["frontal"]])
    assert f"Top class: {direct.labels[0]}" in _text(browser, "classify-summary")
    rendered = {row[0]: (float(row[1]), float(row[2])) for row in _rows(browser, "scores")}
    assert set(rendered) == set(direct.class_names)
    for name, prob, cos in zip(direct.class_names, direct.probabilities[0].tolist(), direct.logits[0].tolist()):
        assert rendered[name] == pytest.approx((prob, cos), abs=1e-4)
    _wait(browser, lambda d: _images_loaded(d, "model-view") >= 1, "the model-view image")
    _wait(
        browser,
        lambda d: d.find_elements("css selector", "#bars canvas, #bars svg"),
        "the bar chart to be drawn",
    )
    _shot(browser, screenshot_dir, "classify")

    # Retrieve: the default text query against the default gallery (the demo reports)
    _open_tab(browser, "Retrieve")
    browser.find_element("id", "retrieve-text").click()
    query = "moderate cardiomegaly"
    gallery = embed_texts(demo.model, demo.processor, [s.report for s in demo.gallery.studies])
    best = int((embed_texts(demo.model, demo.processor, [query]) @ gallery.T).argmax())
    top_id = demo.gallery.studies[best].study_id
    _wait(browser, lambda d: top_id in _text(d, "hits"), f"the top hit {top_id}")
    _wait(browser, lambda d: _images_loaded(d, "hit-images") >= 1, "the hit images")
    _shot(browser, screenshot_dir, "retrieve_text")
    # and an image query against the frontal images
    _upload(browser, "query-file", gallery_images["other"])
    images = embed_images(demo.model, demo.processor, [s.frontal for s in demo.gallery.studies])
    order = (embed_images(demo.model, demo.processor, [gallery_images["other"]]) @ images.T)[0].argsort(
        descending=True
    )
    expected = [demo.gallery.studies[i].study_id for i in order[:5].tolist()]
    browser.find_element("css selector", "#gallery-choice input").click()
    _wait(browser, lambda d: d.find_elements("xpath", OPTION.format("demo frontal images")), "the gallery options")
    browser.find_element("xpath", OPTION.format("demo frontal images")).click()
    browser.find_element("id", "retrieve-image").click()
    _wait(browser, lambda d: _hit_ids(d) == expected, f"the hits {expected}")
    _shot(browser, screenshot_dir, "retrieve_image")

    # Heatmap: upload, type a phrase, draw; the picture renders and the stats name the fixed scale
    _open_tab(browser, "Heatmap")
    _upload(browser, "heatmap-file", gallery_images["frontal"])
    phrase = browser.find_element("css selector", "#phrase textarea, #phrase input")
    phrase.clear()
    phrase.send_keys("the heart is enlarged")
    browser.find_element("id", "heatmap-button").click()
    _wait(browser, lambda d: "fixed at ±1" in _text(d, "heatmap-stats"), "the heatmap statistics")
    _wait(browser, lambda d: _images_loaded(d, "heatmap-picture") >= 1, "the heatmap picture")
    _shot(browser, screenshot_dir, "heatmap")


OPTION = "//*[@role='option' and contains(normalize-space(), '{}')]"


def _rows(driver, element_id: str) -> list[list[str]]:
    """The cell texts of a rendered table, row by row."""
    # Gradio's data frame draws its rows as ARIA grid rows (its <table> only sizes the columns).
    rows = driver.find_elements("css selector", f"#{element_id} [role=row][data-index]")
    return [
        [cell.get_attribute("textContent").strip() for cell in row.find_elements("css selector", "[role=gridcell]")]
        for row in rows
    ]


def _hit_ids(driver) -> list[str]:
    """The id column of the rendered hits table."""
    return [row[2] for row in _rows(driver, "hits") if len(row) >= 3]
