"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium: open a page, wait
for it, and tell what it requested. CI installs the browser; without it the test fails there."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from conftest import missing

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
DRIVER = ("/usr/bin/chromedriver", "chromedriver")
# Without the background-networking flags Chromium calls home at start; this machine has no network.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--window-size=1280,2000")


def _found(names) -> str | None:
    return next((shutil.which(name) for name in names if shutil.which(name)), None)


@contextmanager
def chromium(user_data: Path):
    """A selenium driver on the system Chromium, recording every network request (performance log)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed")
    binary, driver_path = _found(CHROMIUM), _found(DRIVER)
    if not binary or not driver_path:
        missing("headless Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver, document: str | None = None) -> list[str]:
    """Every URL asked for since the last call, by the document at `document` (None: by any document,
    the browser's own pages included)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            if document is None or params.get("documentURL") == document:
                urls.append(params["request"]["url"])
    return urls


def images_loaded(driver) -> list[dict]:
    """Each <img>: whether it finished loading and its natural size."""
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
        "width: i.naturalWidth, height: i.naturalHeight}));")


def screenshot(driver, path: Path) -> Path:
    """The whole page (its full height), saved as PNG."""
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 16000))
    driver.save_screenshot(str(path))
    return path
