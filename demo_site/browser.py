"""Headless Debian Chromium for the workbench's browser tests and README screenshots.

Selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` (Debian's ``chromium``
and ``chromium-driver`` packages): selenium's own driver download cannot reach the internet.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Without the background-networking flags Chromium keeps calling home, and a closed network
# refuses every such connection.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def missing() -> list[str]:
    """Return the browser files that are not installed."""
    return [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]


def start_chromium(profile: str, *, width: int = 1200, height: int = 1700) -> object:
    """Start headless Chromium with its own profile folder; return the selenium driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
