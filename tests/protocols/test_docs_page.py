"""The /docs page in a real browser (issue 14): Debian's chromium, headless, driven by selenium
through Debian's chromium-driver (`make browser-deps` installs both).

A person's path through the page: it loads with no console error and no request beyond
127.0.0.1; a cat photo gives labelled bars with the right top label; a text file and a file over
the body limit show the server's own words; with API keys on, the server's 401 until a key is
typed in; every control is reachable with the keyboard; at phone width nothing scrolls sideways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from inferd import keys
from tests.support import EXPECTED_TOP1, config_for

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT_COPY = Path("/work/wt/docs-screenshot.png")  # for the lead's eyes, when that folder exists
BODY_LIMIT = 2_000_000

webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (make browser-deps, as root)"),
]

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def site(serve, default_model_dir):
    return serve(config_for(default_model_dir, logging={"access_log": "false"}, limits={"max_body_bytes": BODY_LIMIT}))


def requested_urls(driver) -> list[str]:
    """Every URL asked for since the last call (Chromium's performance log), but those of the
    browser's own start page (chrome://new-tab-page...), which may still be loading when the
    test navigates away from it."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            if not message["params"].get("documentURL", "").startswith("chrome://"):
                urls.append(message["params"]["request"]["url"])
    return urls


def served_here(url: str) -> bool:
    """From the server under test on 127.0.0.1, or made by the page itself (an image preview)."""
    parts = urlsplit(url)
    return (parts.scheme == "http" and parts.hostname == "127.0.0.1") or parts.scheme in ("blob", "data")


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def upload(driver, path: Path) -> None:
    """Choose `path` alone (a file input with `multiple` keeps what send_keys chose before)."""
    chooser = driver.find_element(By.ID, "files")
    chooser.clear()
    chooser.send_keys(str(path))


def answer_for(driver, name: str, css: str, timeout: float = 30.0):
    """The elements matching `css` in the result card of the file `name`, once there are some."""
    def found(d):
        for card in d.find_elements(By.CSS_SELECTOR, ".result"):
            if card.find_element(By.TAG_NAME, "h3").text == name:
                return card.find_elements(By.CSS_SELECTOR, css)
        return []
    return WebDriverWait(driver, timeout).until(found)


def wait_for(driver, css: str, timeout: float = 30.0):
    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def test_page_classifies_a_cat_and_shows_the_servers_errors(browser, site, images, tmp_path):
    browser.get(f"{site.url}/docs")
    wait_for(browser, "#api details")  # the endpoints came from /openapi.json
    wait_for(browser, "#figures dd")  # the live figures from /metrics
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "health").text.startswith("ok"))
    assert browser.find_element(By.ID, "model").get_attribute("value") == "efficientnet-lite0"

    cat = tmp_path / "cat.jpg"
    cat.write_bytes(images["cat.jpg"])
    upload(browser, cat)
    labels = answer_for(browser, "cat.jpg", ".bars .label")
    assert labels[0].text in EXPECTED_TOP1["cat.jpg"]
    assert len(labels) == 5  # [model] top_k
    timing = browser.find_element(By.CSS_SELECTOR, ".result .time").text
    assert "ms inference" in timing and "efficientnet-lite0 v1" in timing
    browser.save_screenshot(str(tmp_path / "docs-cat.png"))
    if SCREENSHOT_COPY.parent.is_dir():
        shutil.copy(tmp_path / "docs-cat.png", SCREENSHOT_COPY)

    assert console_errors(browser) == []
    urls = requested_urls(browser)
    assert {urlsplit(u).path for u in urls} >= {"/docs", "/openapi.json", "/models", "/health", "/metrics", "/infer"}
    assert [u for u in urls if not served_here(u)] == []

    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    upload(browser, text)
    shown = answer_for(browser, "notes.txt", ".error")[0].text
    answer = requests.post(f"{site.url}/infer", files={"file": ("notes.txt", text.read_bytes(), "text/plain")}, timeout=10)
    assert answer.status_code == 415
    assert shown.startswith("415 ") and shown.endswith(answer.json()["error"])

    huge = tmp_path / "huge.jpg"
    huge.write_bytes(images["cat.jpg"] * (BODY_LIMIT // len(images["cat.jpg"]) + 1))
    upload(browser, huge)
    shown = answer_for(browser, "huge.jpg", ".error")[0].text
    assert shown.startswith("413 ") and f"the limit is {BODY_LIMIT}" in shown
    # The browser reports the 4xx answers themselves, and nothing else.
    assert all(" 415 " in e or " 413 " in e for e in console_errors(browser))
    assert [u for u in requested_urls(browser) if not served_here(u)] == []


def test_page_sends_the_api_key_typed_in(browser, serve, default_model_dir, images, tmp_path):
    key = keys.new_key()
    keys_path = tmp_path / "keys"
    keys_path.write_text(keys.KeyLine("browser", keys.key_hash(key), {}).text() + "\n")
    keys_path.chmod(0o600)
    keyed = serve(config_for(default_model_dir, auth={"keys_file": str(keys_path)}, logging={"access_log": "false"}))
    browser.get(f"{keyed.url}/docs")
    wait_for(browser, "#model option")
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(images["cat.jpg"])
    upload(browser, cat)
    assert answer_for(browser, "cat.jpg", ".error")[0].text.startswith("401 ")
    browser.find_element(By.ID, "key").send_keys(key)
    upload(browser, cat)
    assert answer_for(browser, "cat.jpg", ".bars .label")[0].text in EXPECTED_TOP1["cat.jpg"]
    assert all(" 401 " in e for e in console_errors(browser))


def test_page_works_with_the_keyboard_and_at_phone_width(browser, site, images, tmp_path):
    browser.set_window_size(375, 812)
    browser.get(f"{site.url}/docs")
    wait_for(browser, "#api details")
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at 375 px: {width}"

    reached = []
    for _ in range(10):  # Tab as a person presses it (send_keys to a file input would choose a file)
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        reached.append(active.get_attribute("id") or active.tag_name)
    assert {"files", "model", "topk", "key", "button", "summary"} <= set(reached), reached

    cat = tmp_path / "cat.jpg"
    cat.write_bytes(images["cat.jpg"])
    upload(browser, cat)
    answer_for(browser, "cat.jpg", ".bars .label")
    topk = browser.find_element(By.ID, "topk")
    topk.clear()
    topk.send_keys("2", Keys.ENTER)  # Enter submits the form: classify again with top_k=2
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bars .label")) == 2)
    summary = browser.find_element(By.CSS_SELECTOR, "#api details summary")
    summary.send_keys(Keys.ENTER)
    assert browser.find_element(By.CSS_SELECTOR, "#api details").get_attribute("open") is not None
    browser.save_screenshot(str(tmp_path / "docs-phone.png"))
    if SCREENSHOT_COPY.parent.is_dir():
        shutil.copy(tmp_path / "docs-phone.png", SCREENSHOT_COPY.with_name("docs-screenshot-phone.png"))
    assert console_errors(browser) == []
