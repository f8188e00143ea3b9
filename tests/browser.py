"""The pages a user looks at (the review page, the EDA report), opened in a real browser: Debian's headless Chromium
(``.ci/run`` installs it, as it installs PostgreSQL). :func:`open_page` loads a copy of the page with a few lines of
instrumentation in front of its own scripts, with the network closed, and reports what a user would see."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",  # offline: anything the page fetches from the network fails, and is reported
    "--virtual-time-budget=20000",  # run the page's scripts to the end (plotly draws its charts) before reporting
]
# records every error (uncaught exceptions, console.error, resources that fail to load) and, once the page has
# loaded, what it drew: the plotly charts without their SVG and the images that did not decode
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || "error"));
}, true);
var __consoleError = console.error;
console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); };
window.addEventListener("load", function () { setTimeout(function () {
  var charts = document.querySelectorAll(".plotly-graph-div");
  var drawn = Array.prototype.filter.call(charts, function (c) { return c.querySelector("svg.main-svg"); });
  var images = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
  var root = document.documentElement;
  root.setAttribute("data-errors", JSON.stringify(window.__errors));
  root.setAttribute("data-charts", charts.length + "/" + drawn.length);
  root.setAttribute("data-images", document.images.length + "/" + images.length);
}, 1000); });
</script>"""


@dataclass
class Opened:
    errors: list[str]  # uncaught errors, console.error calls and failed loads, as the page ran
    charts: int  # plotly charts on the page
    charts_drawn: int  # of them, those with their SVG drawn
    images: int
    images_drawn: int  # images that decoded
    screenshot: Path
    distinct_colours: int  # in the screenshot: a blank page has one


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no headless Chromium (Debian's chromium package); .ci/run installs it")
    return found


def open_page(page: Path, work: Path) -> Opened:
    """``page`` opened offline in headless Chromium: its errors, charts and images, and a screenshot."""
    from PIL import Image

    browser = chromium()
    work.mkdir(parents=True, exist_ok=True)
    probed = work / f"probed-{page.name}"
    text = page.read_text()
    head = re.search(r"<head[^>]*>", text)
    at = head.end() if head else 0  # in front of the page's own scripts
    probed.write_text(text[:at] + PROBE + text[at:])
    base = [browser, *FLAGS, f"--user-data-dir={work / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    shot = work / f"{page.stem}.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )

    def attribute(name: str) -> str:
        found = re.search(rf'<html[^>]*\b{name}="([^"]*)"', dom)
        assert found, f"{page}: the page never finished loading ({name} missing)"
        return found.group(1).replace("&quot;", '"')

    charts, drawn = map(int, attribute("data-charts").split("/"))
    images, decoded = map(int, attribute("data-images").split("/"))
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    return Opened(
        json.loads(attribute("data-errors")),
        charts,
        drawn,
        images,
        decoded,
        shot,
        len(colours) if colours is not None else 1 << 20,
    )
