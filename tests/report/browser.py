"""Open a page in headless Chromium: a screenshot, where each part landed, what the console said.

A small script goes into a copy of the page, ahead of the page's own Content-Security-Policy
(a policy in a ``<meta>`` covers only what follows it): on load it measures the page's parts and
writes them into the DOM, which ``--dump-dom`` prints; script errors and CSP violations are
recorded there too. Console messages come from Chromium's log on stderr.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",  # CSS pixels are screenshot pixels
    "--enable-logging=stderr",
    "--v=0",
)
PARTS = "header, section > h2, .card, p.finding, figure.chart, footer"

PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push("error: " + e.message); });
  document.addEventListener("securitypolicyviolation", function (e) {
    errors.push("csp: " + e.violatedDirective + " " + e.blockedURI);
  });
  window.addEventListener("load", function () {
    var box = function (el) {
      var r = el.getBoundingClientRect();
      return [r.left + scrollX, r.top + scrollY, r.width, r.height];
    };
    var parts = Array.prototype.map.call(document.querySelectorAll("PARTS"), function (el) {
      var svg = Array.prototype.find.call(el.querySelectorAll("svg"), function (s) {
        return s.getBoundingClientRect().width > 0;  // a lone chart has a wide and a narrow one
      });
      return {tag: el.tagName.toLowerCase(), cls: el.className, title: el.dataset.title || null,
              box: box(el), svg: svg ? box(svg) : null,
              paths: svg ? svg.querySelectorAll("path").length : 0,
              text: el.textContent.trim().slice(0, 80)};
    });
    var out = document.createElement("pre");
    out.id = "llmtop-probe";
    out.textContent = JSON.stringify({
      parts: parts, errors: errors, viewport: [innerWidth, innerHeight],
      page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight]
    });
    document.body.appendChild(out);
  });
})();
</script>""".replace("PARTS", PARTS)


@dataclass
class PageView:
    screenshot: Path
    parts: list[dict[str, Any]]
    errors: list[str]
    console: list[str]
    viewport: tuple[int, int]
    page: tuple[int, int]


def open_page(page: Path, tmp: Path, width: int, height: int) -> PageView:
    """Load ``page`` (a copy with the probe) at ``width`` x ``height``; screenshot and measure."""
    text = page.read_text(encoding="utf-8")
    probed = tmp / f"probed-{page.name}"
    probed.write_text(re.sub(r"<head>", "<head>\n" + PROBE, text, count=1), encoding="utf-8")
    shot = tmp / f"{page.stem}-{width}.png"
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
         f"--window-size={width},{height}", f"--screenshot={shot}", "--dump-dom",
         probed.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="llmtop-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the probe did not run: " + proc.stdout[-500:]
    probe = json.loads(html.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return PageView(
        screenshot=shot,
        parts=probe["parts"],
        errors=probe["errors"],
        console=console,
        viewport=tuple(probe["viewport"]),
        page=tuple(probe["page"]),
    )


def overlaps(a: list[float], b: list[float], slack: float = 0.5) -> bool:
    """Whether two boxes ``[x, y, w, h]`` share more than ``slack`` pixels each way."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return (
        min(ax + aw, bx + bw) - max(ax, bx) > slack and min(ay + ah, by + bh) - max(ay, by) > slack
    )
