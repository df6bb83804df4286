"""index.html in a real browser (headless Chromium): every figure decodes, nothing errors, no script runs.

Chromium is driven without any dependency: `--dump-dom` on a copy of the page into which a probe script is
injected. The page's Content-Security-Policy forbids scripts, so the copy allows exactly the probe (by its
SHA-256); everything else in the policy stays, so a blocked fetch or an injected script shows up as a
violation. The probe records errors (window errors, failed resources, CSP violations, console.error) and, on
load, writes what it saw into the DOM as JSON, which the dumped DOM carries back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

PROBE = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t !== window ? "resource failed: " + (t.tagName || "") + " " + (t.src || t.href || "")
                                  : "error: " + e.message);
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) {
    errors.push("csp: " + e.violatedDirective + " " + e.blockedURI);
  });
  var consoleError = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (i) {
      return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
    });
    var out = document.createElement("pre");
    out.id = "qk-probe";
    out.textContent = JSON.stringify({images: images, errors: errors, title: document.title,
                                      sections: document.querySelectorAll("section").length,
                                      scripts: document.scripts.length});
    document.body.appendChild(out);
  });
})();
"""


def _chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _probe(browser: str, html: Path, work: Path) -> dict:
    """Open a probed copy of `html` in headless Chromium and return what the probe recorded."""
    page = html.read_text()
    digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    assert "script-src 'none'" in page
    page = page.replace("script-src 'none'", f"script-src 'sha256-{digest}'", 1)
    head = re.search(r"<meta http-equiv=\"Content-Security-Policy\"[^>]*>", page)
    assert head is not None
    page = page[: head.end()] + f"<script>{PROBE}</script>" + page[head.end() :]
    copy = work / "probed.html"
    copy.write_text(page, encoding="utf-8")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        f"--user-data-dir={work / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        copy.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    found = re.search(r'<pre id="qk-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe output (exit {done.returncode}): {done.stderr[-2000:]}"
    text = found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    return json.loads(text)


def _require_chromium() -> str:
    """Chromium's path; skipped where it is absent, except in CI (CI=true), whose .ci/run installs it."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("Chromium is not installed, and CI must run the browser test (.ci/run installs it)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    return browser


@pytest.mark.parametrize("report", ["compared", "evil_report"])
def test_report_opens_in_chromium(report: str, request: pytest.FixtureRequest, tmp_path: Path):
    browser = _require_chromium()
    _, html = request.getfixturevalue(report)
    seen = _probe(browser, html, tmp_path)
    assert seen["errors"] == []
    assert seen["scripts"] == 1  # the probe alone: the page itself runs nothing
    assert seen["sections"] >= 10
    assert seen["images"], "no figures in the page"
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    if report == "evil_report":
        assert seen["title"].startswith("qkbench report: <script>")  # the title is text, not markup


def test_probe_sees_broken_figures_and_blocked_fetches(tmp_path: Path):
    """The check is not vacuous: a corrupt PNG, a network image and an inline script are all caught."""
    browser = _require_chromium()
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'none'\"><title>broken</title></head><body>"
        '<img src="data:image/png;base64,AAAA" alt="corrupt"><img src="https://example.invalid/x.png" alt="net">'
        "<script>console.log('ran')</script></body></html>"
    )
    seen = _probe(browser, broken, tmp_path)
    assert [image["width"] for image in seen["images"]] == [0, 0]
    assert any(e.startswith("resource failed: IMG") for e in seen["errors"])
    assert any(e.startswith("csp: img-src") for e in seen["errors"])
    assert seen["scripts"] == 2  # the page's own script besides the probe: what the report test rejects
