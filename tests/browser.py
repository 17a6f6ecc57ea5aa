"""Checking a report in a real browser: Playwright driving the system Chromium.

``chromium_or_skip()`` skips the calling test with a reason where Playwright or a Chromium
binary is missing (``scripts/setup.sh test`` installs both where it may). Playwright's own
browser download (``playwright install``) is never used: the binary comes from the system
(Debian's ``chromium``) or ``VLPROBE_CHROMIUM``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WIDTH = 1280
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str | None:
    """The Chromium to drive: ``VLPROBE_CHROMIUM`` or the first one on PATH."""
    env = os.environ.get("VLPROBE_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, _CANDIDATES) if p), None)


@contextlib.contextmanager
def chromium_or_skip() -> Iterator[Any]:
    """A launched headless Chromium browser (Playwright), or skip the test with the reason."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install 'vlprobe[test]')")
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set VLPROBE_CHROMIUM)")
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        except Exception as exc:  # a broken or incompatible binary: say so, do not fail
            pytest.skip(f"Chromium at {binary} does not start under Playwright: {exc}")
        try:
            yield browser
        finally:
            browser.close()


_CHECKS = """() => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const imgs = Array.from(document.images);
  const links = Array.from(document.querySelectorAll('a[href^="#"]'));
  return {
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt.slice(0, 80)),
    no_alt: imgs.filter(i => !(i.getAttribute('alt') || '').trim()).length,
    links: links.length,
    dangling: links.map(a => a.getAttribute('href'))
      .filter(h => !document.getElementById(decodeURIComponent(h.slice(1)))),
    scroll_width: document.documentElement.scrollWidth,
    view_width: window.innerWidth,
  };
}"""


def check_report(browser: Any, path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Open ``path`` at 1280 px and collect its problems.

    Returns a dict with ``console_errors`` (console errors and uncaught page errors),
    ``broken`` (images that did not load), ``no_alt`` (images without alt text),
    ``dangling`` (in-page links without a target), ``overflow`` (px of horizontal page
    overflow with every ``<details>`` open) and the counts of images and links. With
    ``screenshot``, saves the first screen (before any ``<details>`` is opened).
    """
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.resolve().as_uri(), wait_until="load")
    if screenshot is not None:
        page.screenshot(path=str(screenshot))
    found = page.evaluate(_CHECKS)
    page.close()
    found["console_errors"] = errors
    found["overflow"] = max(0, found["scroll_width"] - found["view_width"])
    return found


def assert_clean(found: dict[str, Any]) -> None:
    """No console error, every image loads and has alt text, links resolve, no overflow."""
    assert found["console_errors"] == [], found["console_errors"]
    assert found["broken"] == [], found["broken"]
    assert found["no_alt"] == 0
    assert found["dangling"] == [], found["dangling"]
    assert found["overflow"] == 0, f"page is {found['overflow']} px wider than {WIDTH} px"
