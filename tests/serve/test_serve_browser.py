"""The playground page in a real headless browser (Debian's chromium through chromium-driver, driven by Selenium)."""

from __future__ import annotations

import os
import shutil

import pytest

from deployft.runtime import Predictor
from live_server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        reason = "chromium and chromium-driver are not installed (make test installs them with apt-get as root)"
        if os.environ.get("DEPLOYFT_REQUIRE_BROWSER") == "1":  # make test installed them: missing is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield browser
    browser.quit()


def _wait(browser, css: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda b: b.find_element(By.CSS_SELECTOR, css))


def test_chat_streams_the_models_answer(browser, runtime_bundle):
    from selenium.webdriver.common.by import By

    server = Server(runtime_bundle("llama"))
    try:
        browser.get(server.url + "/")
        assert browser.find_element(By.ID, "chat").is_displayed()
        assert not browser.find_element(By.ID, "classify").is_displayed()
        browser.find_element(By.ID, "message").send_keys("what is the capital of france")
        browser.find_element(By.ID, "send").click()
        answer = _wait(browser, '.assistant[data-done="true"]')
        messages = [{"role": "user", "content": "what is the capital of france"}]
        expected = Predictor.load(runtime_bundle("llama")).generate(messages, max_new_tokens=64)
        assert expected and answer.get_attribute("textContent") == expected
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        server.stop()


def test_a_bundle_without_a_chat_template_is_completed_prompt_by_prompt(browser, runtime_bundle):
    from selenium.webdriver.common.by import By

    server = Server(runtime_bundle("gpt2"))
    try:
        browser.get(server.url + "/")
        assert "/v1/completions" in browser.find_element(By.ID, "about").text
        browser.find_element(By.ID, "message").send_keys("bees")
        browser.find_element(By.ID, "send").click()
        answer = _wait(browser, '.assistant[data-done="true"]')
        expected = Predictor.load(runtime_bundle("gpt2")).generate("bees", max_new_tokens=64)
        assert expected and answer.get_attribute("textContent") == expected
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        server.stop()


def test_classifier_shows_every_labels_score(browser, runtime_bundle):
    from selenium.webdriver.common.by import By

    server = Server(runtime_bundle("bert"), "--api-key", "browser-key")
    try:
        browser.get(server.url + "/")
        assert browser.find_element(By.ID, "classify").is_displayed()
        browser.find_element(By.ID, "text").send_keys("the film was great")
        browser.find_element(By.ID, "score").click()
        _wait(browser, '#scores[data-done="true"]')
        assert "API key" in browser.find_element(By.ID, "error").text  # the key field is empty: 401 shown
        browser.find_element(By.ID, "key").send_keys("browser-key")
        browser.find_element(By.ID, "score").click()
        _wait(browser, '#scores[data-done="true"] tr')
        rows = [r.find_elements(By.TAG_NAME, "td") for r in browser.find_elements(By.CSS_SELECTOR, "#scores tr")]
        expected = Predictor.load(runtime_bundle("bert")).predict("the film was great")
        assert {r[0].text: float(r[1].text) for r in rows} == pytest.approx(expected.scores, abs=1e-4)
        best = browser.find_element(By.CSS_SELECTOR, "#scores tr.best td").text
        assert best == expected.label and browser.find_element(By.ID, "error").text == ""
    finally:
        server.stop()
