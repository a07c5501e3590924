"""The drawing page in a real browser: headless Chromium (Debian's chromium + chromium-driver) via Selenium.

The endpoint serves the session's registered ZSE-SBIR model (`served`) and its gallery on loopback. The
test draws with real pointer events, searches, compares the grid with what /v1/search answers for the
same strokes, opens an explanation, checks the console, and saves screenshots to build/test-artifacts/page/. `make test`
installs the browser when it runs as root (as CI does); elsewhere the test is skipped with the command
that installs it, except as root or under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.ray.serving import Served, free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "page"
INSTALL = "apt-get install chromium chromium-driver"


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = f"no headless Chromium here (chromium={browser}, chromedriver={driver}); install it with `{INSTALL}`"
    if os.environ.get("CI") or os.geteuid() == 0:  # `make test` installs it as root: missing means it failed
        pytest.fail(message)
    pytest.skip(message)


def _start(served: Served, port: int, *extra: str) -> str:
    """The endpoint of the session's registered model and its registered gallery."""
    from sbir.config import load_config
    from serve.launch import start_endpoint

    overrides = [f"serve.port={port}", f"run.dir={served.runs_dir}", "serve.ingress.num_cpus=0.5", *extra]
    args = {"config": served.preset, "model": served.reference, "tracking_uri": served.tracking_uri,
            "overrides": overrides}  # fmt: skip
    return start_endpoint(load_config(served.preset, overrides), args).url


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, script: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.2)
    status = driver.execute_script("return document.getElementById('status').textContent;")
    raise AssertionError(f"timed out waiting for {script!r}; page status: {status!r}")


def _draw_a_house(driver) -> None:
    """Two strokes drawn with real pointer events (offsets from the canvas centre)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    chain = ActionChains(driver, duration=10)
    chain.move_to_element_with_offset(canvas, -100, 80).click_and_hold()
    for dx, dy in ((0, -120), (100, -80), (100, 80), (0, 120), (-200, 0)):
        chain.move_by_offset(dx, dy)
    chain.release()
    chain.move_to_element_with_offset(canvas, -30, 80).click_and_hold().move_by_offset(0, -60).move_by_offset(40, 0)
    chain.move_by_offset(0, 60).release().perform()


def _images_loaded(selector: str) -> str:
    return (
        f"Array.from(document.querySelectorAll('{selector}')).length > 0 && "
        f"Array.from(document.querySelectorAll('{selector}')).every(i => i.complete && i.naturalWidth > 0)"
    )


def _severe_console_entries(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_draw_search_explain_in_a_real_browser(served, browser):
    from selenium.webdriver.common.by import By

    from serve.launch import stop_endpoint

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = _start(served, free_port())
    try:
        browser.get(f"{url}/")
        _wait(browser, "window.sbir && window.sbir.ready")
        header = browser.find_element(By.ID, "model-info").text
        assert served.reference in header and "ZSE-SBIR" in header and "photos" in header
        browser.save_screenshot(str(ARTIFACTS / "before-search.png"))

        _draw_a_house(browser)
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("6")
        browser.find_element(By.ID, "search").click()
        _wait(browser, "window.sbir.lastResults.length === 6")
        _wait(browser, _images_loaded("#results img"))
        shown = [int(b.get_attribute("data-id")) for b in browser.find_elements(By.CSS_SELECTOR, "#results button")]
        query = browser.execute_script("return window.sbir.lastQuery;")
        assert len(query["strokes"]) == 2 and all(len(stroke) == 3 for stroke in query["strokes"])  # raw: x, y, t
        direct = httpx.post(f"{url}/v1/search", json=query, timeout=60)
        assert direct.status_code == 200, direct.text
        assert shown == [hit["id"] for hit in direct.json()["results"]]
        browser.save_screenshot(str(ARTIFACTS / "after-search.png"))

        browser.find_elements(By.CSS_SELECTOR, "#results button")[0].click()
        _wait(browser, f"window.sbir.explained === {shown[0]}")
        _wait(browser, _images_loaded("#explain img"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#explain img")) == 4
        browser.save_screenshot(str(ARTIFACTS / "explanation.png"))
        assert _severe_console_entries(browser) == []
    finally:
        stop_endpoint()


def test_the_page_asks_for_the_api_key_and_searches_with_it(served, browser):
    from selenium.webdriver.common.by import By

    from serve.launch import stop_endpoint

    key = "page-secret"
    url = _start(served, free_port(), f"serve.api_key={key}")
    try:
        browser.get(f"{url}/")
        _wait(browser, "!document.getElementById('key-form').hidden")
        assert "401" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        _wait(browser, "window.sbir.ready")
        _draw_a_house(browser)
        browser.find_element(By.ID, "search").click()
        _wait(browser, "window.sbir.lastResults.length > 0")
        _wait(browser, _images_loaded("#results img"))
        console = _severe_console_entries(browser)
        assert all("401" in line for line in console), console  # only the first, refused info request
    finally:
        stop_endpoint()
