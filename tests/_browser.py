"""Helpers for the browser tests: headless Debian chromium driven by Playwright, nothing beyond localhost.

Chromium comes from apt (`make browser-deps`), Playwright from the `dev` extra; without either, the browser
tests skip and say which one is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Any http(s) request whose host is not this machine.
EXTERNAL = re.compile(r"^(https?|wss?)://(?!(127\.0\.0\.1|localhost)(:\d+)?(/|$))")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def sync_playwright():
    """Playwright's sync entry point, or a skip naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install -y chromium) as root")
    try:
        from playwright.sync_api import sync_playwright as entry
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[dev]' (or pip install playwright)")
    return entry


def launch(playwright):
    """Headless Debian chromium with background networking off."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


class PageWatch:
    """Counts the non-local requests a page tries (each is aborted) and collects its console errors."""

    def __init__(self, page):
        self.external: list[str] = []
        self.console_errors: list[str] = []
        page.route(EXTERNAL, self._abort)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(f"pageerror: {error}"))

    def _abort(self, route):
        self.external.append(route.request.url)
        route.abort()

    def _console(self, message):
        if message.type == "error":
            self.console_errors.append(f"{message.text} @ {message.location.get('url', '')}")


def screenshot_path(*parts: str) -> Path:
    path = ARTIFACTS.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
