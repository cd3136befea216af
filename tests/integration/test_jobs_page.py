"""The gateway's web page in a real headless browser (Debian's chromium via chromedriver): a prompt submitted
from the page shows progress, then the image. The screenshot is kept in test-artifacts/."""

from __future__ import annotations

import shutil
import time

import pytest

from scripts.torchserve_control import REPO_ROOT
from tests.integration.jobs_stack import JobStack

ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture
def browser(tmp_path):
    if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
        pytest.fail("chromium and chromium-driver are needed (bash scripts/install.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,1100",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_a_prompt_submitted_from_the_page_shows_progress_then_the_image(tmp_path, server, browser):
    from selenium.webdriver.common.by import By

    stack = JobStack(tmp_path / "stack", server).start()
    try:
        browser.get(stack.gateway.url + "/")
        browser.find_element(By.ID, "key").send_keys(stack.key())
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("a lighthouse on a cliff at dawn")
        steps = browser.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys("12")
        browser.find_element(By.ID, "seed").send_keys("42")
        browser.find_element(By.ID, "submit").click()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            loaded = browser.execute_script(
                "const img = document.getElementById('result'); return img.complete && img.naturalWidth;"
            )
            if loaded or browser.find_element(By.ID, "message").text:
                break
            time.sleep(0.2)
        assert browser.find_element(By.ID, "message").text == ""
        assert loaded == 64
        assert browser.find_element(By.ID, "status").text == "completed"
        assert browser.execute_script("return window.progressSeen") == list(range(1, 13))
        assert browser.execute_script("return document.getElementById('progress').value") == 1
        assert browser.find_element(By.ID, "seed-out").text == "seed 42"
        assert '"prompt": "a lighthouse on a cliff at dawn"' in browser.find_element(By.ID, "parameters").text
        assert browser.execute_script("return document.getElementById('preview').naturalWidth") > 0
        rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr")
        assert rows and "completed" in rows[0].text
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "web-page.png"))
    finally:
        stack.stop()
