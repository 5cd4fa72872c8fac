"""The built book, as a reader sees it: every page of the table of contents opened in headless Chromium.

Uses the HTML in `_build/html` (`.ci/run` builds it first); if it is missing, the book is built here
with `jupyter-book build . --all -W -n --keep-going`, which executes every notebook (minutes).
The pages are served from a local `http.server` thread; every request that leaves 127.0.0.1 is
blocked (MathJax, require.js and the widget manager come from CDNs, and the test machines have no
network), so this checks what the build produced, not what a CDN adds at view time.

For every page: the browser title is the page's own title; every image in the article has loaded
(`naturalWidth > 0`); no cell output is an error (a traceback, or an exception printed to stderr);
and a full-page screenshot is saved to `_build/screenshots/<page>.png` for a person to look at.
Chapter pages (`book/NN_*`) must also show at least one figure.

Skipped, with the reason, only when Debian's `chromium` is not installed (`.ci/run` installs it).
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BUILD_COMMAND = ["jupyter-book", "build", ".", "--all", "-W", "-n", "--keep-going"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install chromium); .ci/run installs it")


def toc_pages() -> list[str]:
    """Every file of `_toc.yml`, in reading order, as paths without suffix (e.g. 'book/01_anchors')."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [chapter["file"] for chapter in part.get("chapters", [])]
    return pages


def is_chapter(page: str) -> bool:
    """Numbered chapters (book/00_introduction ... book/09_speed) must show figures."""
    return re.match(r"\d\d_", Path(page).name) is not None


def source_title(page: str) -> str:
    """The first level-1 heading of the page's source (.ipynb or .md), as plain text."""
    for suffix in (".ipynb", ".md"):
        path = ROOT / (page + suffix)
        if path.exists():
            if suffix == ".ipynb":
                cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
                text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
            else:
                text = path.read_text(encoding="utf-8")
            for line in text.splitlines():
                if line.startswith("# "):
                    return re.sub(r"[`*_$]", "", line[2:]).strip()
    raise AssertionError(f"no source file with a '# title' line for {page}")


def _build_book() -> None:
    result = subprocess.run(BUILD_COMMAND, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def site():
    """Base URL of `_build/html`, served on 127.0.0.1 by a background thread (built first if missing)."""
    if not (HTML / "index.html").exists():
        _build_book()
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# Runs in the page: scroll through it (so lazy images load), then wait for every image of the article.
_IMAGES_JS = """async () => {
    const article = document.querySelector("article.bd-article") || document.body;
    for (let y = 0; y < document.body.scrollHeight; y += window.innerHeight) {
        window.scrollTo(0, y);
        await new Promise(r => setTimeout(r, 20));
    }
    window.scrollTo(0, 0);
    const images = Array.from(article.querySelectorAll("img"));
    await Promise.all(images.map(img => img.complete ? null :
        new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); })));
    return images.map(img => ({src: img.getAttribute("src").slice(0, 80), width: img.naturalWidth,
                               output: !!img.closest(".cell_output, figure")}));
}"""

_ERRORS_JS = """() => {
    const article = document.querySelector("article.bd-article") || document.body;
    const texts = sel => Array.from(article.querySelectorAll(sel)).map(e => e.innerText);
    return {
        errors: texts(".output.error, .output.traceback, .cell_output .error"),
        stderr: texts(".output.stderr"),
        outputs: texts(".cell_output"),
    };
}"""

_EXCEPTION = re.compile(r"Traceback \(most recent call last\)|^\s*[A-Z]\w*(Error|Exception): ", re.MULTILINE)


@pytest.mark.parametrize("page", toc_pages())
def test_page_renders(site, browser, page):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # Nothing may leave this machine: CDN scripts are aborted at once instead of timing out.
    context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    tab = context.new_page()
    try:
        response = tab.goto(f"{site}/{page}.html", wait_until="load", timeout=60_000)
        assert response is not None and response.ok, f"{page}.html: HTTP {response and response.status}"

        title = source_title(page)
        assert title in tab.title(), f"browser title {tab.title()!r} does not contain {title!r}"
        assert title in tab.locator("article.bd-article h1").first.inner_text()

        images = tab.evaluate(_IMAGES_JS)
        broken = [img["src"] for img in images if img["width"] == 0]
        assert not broken, f"{page}: images that did not load: {broken}"
        if is_chapter(page):
            figures = [img for img in images if img["output"]]
            assert figures, f"{page}: a chapter without a single figure"

        found = tab.evaluate(_ERRORS_JS)
        assert not found["errors"], f"{page}: error outputs: {[e[:300] for e in found['errors']]}"
        bad_stderr = [t for t in found["stderr"] if "Traceback" in t or _EXCEPTION.search(t)]
        assert not bad_stderr, f"{page}: exceptions on stderr: {[t[:300] for t in bad_stderr]}"
        bad_outputs = [t for t in found["outputs"] if _EXCEPTION.search(t)]
        assert not bad_outputs, f"{page}: outputs showing an exception: {[t[:300] for t in bad_outputs]}"
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / f"{Path(page).name}.png"), full_page=True)
        context.close()


if __name__ == "__main__":  # pragma: no cover - `python tests/test_book_browser.py` runs just this file
    sys.exit(pytest.main([__file__, "-v"]))
