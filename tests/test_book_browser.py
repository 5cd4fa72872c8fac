r"""The built book, as a reader sees it: every page of the table of contents opened in headless Chromium.

Uses the HTML in `_build/html` (`.ci/run` builds it first); if it is missing, the book is built here
with `jupyter-book build . --all -W -n --keep-going`, which executes every notebook (minutes).
The pages are served from a local `http.server` thread; every request that leaves 127.0.0.1 is
blocked (require.js and the widget manager come from CDNs, and the test machines have no
network), so this checks what the build produced, not what a CDN adds at view time. MathJax is
part of the build (`sphinx-mathjax-offline` copies it to `_static/mathjax`), so math must render.

For every page: the browser title is the page's own title; every formula was typeset by MathJax
(no raw `\(`, `\[`, `$$` or stray `$` left in the visible text, no MathJax error); every image in
the article has loaded (`naturalWidth > 0`); no cell output is an error (a traceback, or an
exception printed to stderr); no output is an empty widget area (no ipywidgets view or state is
left in the page, no output without text or image); and a full-page screenshot is saved to
`_build/screenshots/<page>.png` for a person to look at. Chapter pages (`book/NN_*`) must also
show at least one figure.

`test_figures_legible` reads, for every figure of every page (explorer frames included), the smallest
font size (pt) and dpi that `fasterrcnn_edu.legibility` wrote into the image, and the image's natural
and displayed widths in a 1280-px window: the smallest text, as displayed, must be at least
`MIN_TEXT_PX` CSS pixels. It writes every measure to `_build/screenshots/font_sizes.json`.

`test_explorer_offline` moves every control of every kernel-free explorer (`fasterrcnn_edu.explorer`)
with the keyboard or a selection, and checks that the figure changed; it saves each explorer in its
first and its moved state to `_build/screenshots/explorer_<page>_<n>_{a,b}.png`.
`test_answer_checks` types the right answer into every answer check (`fasterrcnn_edu.selfcheck`) and
expects "Right", then a wrong one and expects "Not yet"; the solutions must still be in dropdowns.
`test_code_links` checks that every name a chapter imports from the package links to the API
reference wherever it appears in a code cell (sphinx-codeautolink).

`test_anchor_explorer_in_jupyterlab` follows the path a reader takes with a live kernel: it starts
JupyterLab on 127.0.0.1 (a random free port, a random token) on a copy of chapter 2's notebook
(`book/01_anchors.ipynb`, so the repository's file is never autosaved), runs all cells in headless
Chromium, moves the "smallest (px)" slider of the anchor explorer and checks that its figure was
redrawn and that no cell shows an error.

Skipped, with the reason, only when Debian's `chromium` is not installed (`.ci/run` installs it).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
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
    const media = "img, svg, canvas, video, table, input, select, mjx-container";
    return {
        errors: texts(".output.error, .output.traceback, .cell_output .error"),
        stderr: texts(".output.stderr"),
        outputs: texts(".cell_output"),
        // an output with neither text nor an image is a blank gap (what an unrendered widget leaves)
        empty: Array.from(article.querySelectorAll(".cell_output > *"))
            .filter(e => e.innerText.trim() === "" && !e.querySelector(media) && !e.matches(media))
            .map(e => e.outerHTML.slice(0, 200)),
        widgets: document.querySelectorAll('script[type^="application/vnd.jupyter.widget"]').length,
    };
}"""

# Runs in the page: wait for MathJax (served from _static/mathjax) to finish, then return every piece
# of visible prose that still looks like TeX. Code, outputs and typeset math are skipped.
_MATH_JS = r"""async () => {
    const article = document.querySelector("article.bd-article") || document.body;
    const hasMath = article.querySelector(".math, mjx-container") !== null;
    if (hasMath) {
        for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
            await new Promise(r => setTimeout(r, 50));
        if (!(window.MathJax && MathJax.startup && MathJax.startup.promise))
            return {loaded: false, typeset: 0, raw: [], errors: []};
        await MathJax.startup.promise;
    }
    const skip = "pre, code, script, style, mjx-container, .cell_output, .highlight, kbd, samp";
    const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
    const raw = [];
    const tex = /\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\s][^$]*\$|(^|[^\\])\$/;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (node.parentElement.closest(skip)) continue;
        const text = node.textContent;
        if (tex.test(text)) raw.push(text.trim().slice(0, 120));
    }
    return {loaded: true, typeset: article.querySelectorAll("mjx-container").length, raw: raw,
            errors: Array.from(article.querySelectorAll("mjx-merror")).map(e => e.textContent)};
}"""

_EXCEPTION = re.compile(r"Traceback \(most recent call last\)|^\s*[A-Z]\w*(Error|Exception): ", re.MULTILINE)


@contextlib.contextmanager
def offline_tab(browser, site: str, page: str, screenshot: Path | None = None):
    """A 1280-px tab showing `page`; nothing may leave this machine: every request off 127.0.0.1
    (a CDN script, say) is aborted at once instead of timing out. A full-page screenshot is saved to
    `screenshot` at the end, whatever happened."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    tab = context.new_page()
    try:
        response = tab.goto(f"{site}/{page}.html", wait_until="load", timeout=60_000)
        assert response is not None and response.ok, f"{page}.html: HTTP {response and response.status}"
        yield tab
    finally:
        if screenshot is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(screenshot), full_page=True)
        context.close()


@pytest.mark.parametrize("page", toc_pages())
def test_page_renders(site, browser, page):
    with offline_tab(browser, site, page, screenshot=SCREENSHOTS / f"{Path(page).name}.png") as tab:
        title = source_title(page)
        assert title in tab.title(), f"browser title {tab.title()!r} does not contain {title!r}"
        assert title in tab.locator("article.bd-article h1").first.inner_text()

        math = tab.evaluate(_MATH_JS)
        assert math["loaded"], f"{page}: MathJax did not load from _static/mathjax"
        assert not math["raw"], f"{page}: formulas left as raw TeX: {math['raw'][:5]}"
        assert not math["errors"], f"{page}: MathJax errors: {math['errors'][:5]}"

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
        assert not found["widgets"], f"{page}: {found['widgets']} ipywidgets views/state left in the page"
        assert not found["empty"], f"{page}: empty output areas: {found['empty'][:3]}"


# ---------------------------------------------------------------------------------------------
# Figures: the smallest text, as displayed
# ---------------------------------------------------------------------------------------------
MIN_TEXT_PX = 9.0
FONT_REPORT = SCREENSHOTS / "font_sizes.json"

# Runs in the page: every figure (an image in a cell output, or an explorer), with its displayed width;
# an explorer lists all its frames (they have the size of the one on display).
_FIGURES_JS = """() => {
    const article = document.querySelector("article.bd-article") || document.body;
    return Array.from(article.querySelectorAll(".cell_output img")).map(img => {
        const explorer = img.closest(".fre-explorer");
        const sources = explorer ? JSON.parse(explorer.querySelector("script.fre-explorer-data").textContent).frames
                                 : [img.src];
        return {sources: sources, natural: img.naturalWidth, displayed: img.getBoundingClientRect().width,
                figure: (img.closest("figure") && img.closest("figure").id) || (explorer ? "explorer" : "")};
    });
}"""


def _image_bytes(source: str) -> bytes:
    """The bytes of an image URL of the served book: a data: URI, or a file under _build/html."""
    if source.startswith("data:"):
        return base64.b64decode(source.split(",", 1)[1])
    path = urllib.parse.unquote(urllib.parse.urlsplit(source).path).lstrip("/")
    return (HTML / path).read_bytes()


@pytest.mark.parametrize("page", toc_pages())
def test_figures_legible(site, browser, page):
    from fasterrcnn_edu.legibility import read_comment

    with offline_tab(browser, site, page) as tab:
        tab.evaluate(_IMAGES_JS)                 # every image loaded, so that its widths are known
        figures = tab.evaluate(_FIGURES_JS)
    records, problems = [], []
    for n, figure in enumerate(figures):
        name = figure["figure"] or f"output image {n}"
        assert figure["natural"] > 0 and figure["displayed"] > 0, f"{page}: {name} is not displayed"
        smallest = None
        for source in figure["sources"]:
            comment = read_comment(_image_bytes(source))
            assert comment is not None, (f"{page}: {name} has no font record (it was not displayed through "
                                         "fasterrcnn_edu.legibility)")
            if comment["smallest_font_pt"] is not None:
                px = comment["smallest_font_pt"] * comment["dpi"] / 72 * figure["displayed"] / figure["natural"]
                smallest = px if smallest is None else min(smallest, px)
        records.append({"figure": name, "frames": len(figure["sources"]), "natural_px": figure["natural"],
                        "displayed_px": round(figure["displayed"], 1),
                        "smallest_text_px": None if smallest is None else round(smallest, 2)})
        if smallest is not None and smallest < MIN_TEXT_PX:
            problems.append(f"{name}: {smallest:.1f} px")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    old = json.loads(FONT_REPORT.read_text()) if FONT_REPORT.exists() else {}
    old[page] = records
    FONT_REPORT.write_text(json.dumps(old, indent=1))
    assert not problems, f"{page}: smallest text below {MIN_TEXT_PX} CSS px as displayed: {problems}"


# ---------------------------------------------------------------------------------------------
# Kernel-free explorers and answer checks
# ---------------------------------------------------------------------------------------------
EXPLORER_PAGES = {"book/00_introduction": 1, "book/01_anchors": 1, "book/02_labeling": 1,
                  "book/04_proposals_nms": 1, "book/05_roi_pooling": 1}

_FRAME_JS = """el => { const img = el.querySelector("img.fre-explorer-frame");
                      return {src: img.getAttribute("src"), width: img.naturalWidth,
                              readouts: Array.from(el.querySelectorAll("output")).map(o => o.textContent)}; }"""


@pytest.mark.parametrize("page", sorted(EXPLORER_PAGES))
def test_explorer_offline(site, browser, page):
    with offline_tab(browser, site, page) as tab:
        explorers = tab.locator(".fre-explorer")
        assert explorers.count() == EXPLORER_PAGES[page], f"{page}: {explorers.count()} explorers"
        for n in range(explorers.count()):
            explorer = explorers.nth(n)
            explorer.scroll_into_view_if_needed()
            shot = SCREENSHOTS / f"explorer_{Path(page).name}_{n}"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            explorer.screenshot(path=f"{shot}_a.png")
            controls = explorer.locator("[data-control]")
            assert controls.count() > 0, f"{page}: explorer {n} has no controls"
            for k in range(controls.count()):
                control = controls.nth(k)
                before = explorer.evaluate(_FRAME_JS)
                if control.evaluate("c => c.tagName") == "SELECT":
                    options = control.locator("option")
                    current = int(control.input_value())
                    control.select_option(index=(current + 1) % options.count())
                else:                             # a range input: move it with the keyboard, like a reader
                    control.focus()
                    at_end = control.evaluate("c => c.value === c.max")
                    tab.keyboard.press("Home" if at_end else "End")
                after = explorer.evaluate(_FRAME_JS)
                label = control.get_attribute("aria-label")
                assert after["src"] != before["src"], f"{page}: moving {label!r} did not change the figure"
                assert after["width"] > 0, f"{page}: after moving {label!r} the figure did not load"
                if control.evaluate("c => c.type") == "range":
                    assert after["readouts"] != before["readouts"], f"{page}: the readout of {label!r} did not change"
            explorer.screenshot(path=f"{shot}_b.png")


_CHECKS_JS = """() => Array.from(document.querySelectorAll(".fre-check")).map(c => ({
    kind: c.dataset.kind, answer: c.dataset.answer, tolerance: c.dataset.tolerance,
    options: c.querySelectorAll("input[type=radio]").length, label: c.innerText.slice(0, 80)}))"""


def _answer_check_pages() -> list[str]:
    return [page for page in toc_pages() if is_chapter(page)]


@pytest.mark.parametrize("page", _answer_check_pages())
def test_answer_checks(site, browser, page):
    with offline_tab(browser, site, page) as tab:
        checks = tab.evaluate(_CHECKS_JS)
        if not checks:
            pytest.skip(f"{page} has no exercise with a numeric or multiple-choice answer")
        solutions = tab.locator("details, .dropdown").filter(has_text=re.compile(r"Solution \d"))
        assert solutions.count() > 0, f"{page}: the solutions are no longer in dropdowns"
        for n, check in enumerate(checks):
            box = tab.locator(".fre-check").nth(n)
            verdict = box.locator(".fre-check-verdict")
            if check["kind"] == "numeric":
                right = float(check["answer"])
                wrong = right + 10 * float(check["tolerance"]) + 1
                attempts = [(f"{right:.4f}".rstrip("0").rstrip("."), "fre-check-right"), (f"{wrong:g}", "fre-check-wrong")]
                for text, expected in attempts:
                    box.locator("input").fill(text)
                    box.locator("button").click()
                    assert expected in verdict.get_attribute("class"), f"{page}: {check['label']!r}: {text} -> {verdict.inner_text()}"
            else:
                right = int(check["answer"])
                wrong = (right + 1) % check["options"]
                for index, expected in ((wrong, "fre-check-wrong"), (right, "fre-check-right")):
                    box.locator("input[type=radio]").nth(index).check()
                    box.locator("button").click()
                    assert expected in verdict.get_attribute("class"), f"{page}: {check['label']!r}: option {index}"


# ---------------------------------------------------------------------------------------------
# Code cells link to the API reference
# ---------------------------------------------------------------------------------------------
# `from fasterrcnn_edu[.mod] import a, b as c` on one line, or `import (a, b,\n c)` in parentheses
_IMPORT = re.compile(r"^[ \t]*from[ \t]+fasterrcnn_edu(?:\.[\w.]+)?[ \t]+import[ \t]+(?:\(([^)]*)\)|([^\n#]*))", re.MULTILINE)

_LINKS_JS = """names => {
    const article = document.querySelector("article.bd-article") || document.body;
    const unlinked = {}, linked = {};
    article.querySelectorAll(".cell_input pre span.n, .cell_input pre span.nn").forEach(span => {
        const name = span.textContent;
        if (!names.includes(name)) return;
        // `import x as name`: the alias itself is the binding, not a use (its original name is linked)
        let before = span.previousElementSibling;
        if (before && before.tagName === "A") before = null;
        if (before && before.textContent === "as") return;
        // sphinx-codeautolink 0.19 links no part of a chain that ends in a dict method of a documented
        // constant (`profiling.PAPER_TABLE5_MS.items()`): it cannot type the call. Skip such chains.
        const chain = [];
        for (let t = span.nextElementSibling; t && (t.textContent === "." || /^n/.test(t.className)); t = t.nextElementSibling)
            chain.push(t);
        const next = chain.length ? chain[chain.length - 1].nextElementSibling : null;
        const last = chain.length ? chain[chain.length - 1].textContent : "";
        if (["items", "keys", "values", "get"].includes(last) && next && next.textContent.startsWith("(")) return;
        const a = span.closest("a");
        const good = a && /api\\.html#(module-)?fasterrcnn_edu\\./.test(a.getAttribute("href") || "");
        const bucket = good ? linked : unlinked;
        bucket[name] = (bucket[name] || 0) + 1;
    });
    return {linked: linked, unlinked: unlinked};
}"""


def imported_names(page: str) -> list[str]:
    """Every name a notebook imports from the package (`from fasterrcnn_edu[.mod] import a, b`)."""
    path = ROOT / f"{page}.ipynb"
    if not path.exists():
        return []
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    names = set()
    for parenthesised, plain in _IMPORT.findall(code):
        for item in (parenthesised or plain).replace("\n", ",").split(","):
            words = item.split("#")[0].split()
            if words:
                names.add(words[-1])          # `a as b` binds b
    return sorted(names)


@pytest.mark.parametrize("page", [p for p in toc_pages() if (ROOT / f"{p}.ipynb").exists()])
def test_code_links(site, browser, page):
    names = imported_names(page)
    if not names:
        pytest.skip(f"{page} imports nothing from the package")
    with offline_tab(browser, site, page) as tab:
        found = tab.evaluate(_LINKS_JS, names)
    if not found["linked"] and not found["unlinked"]:
        pytest.skip(f"{page} shows no code cell that uses the package (its code cells are hidden)")
    assert not found["unlinked"], (f"{page}: package names in code cells without a link to the API reference "
                                   f"(name: occurrences): {found['unlinked']}")


# ---------------------------------------------------------------------------------------------
# The interactive path: JupyterLab + a live kernel + one explorer slider
# ---------------------------------------------------------------------------------------------
EXPLORER_NOTEBOOK = "book/01_anchors.ipynb"
EXPLORER_SLIDER = "smallest (px)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """(base URL, token, notebook path in the server) of a JupyterLab on 127.0.0.1 serving a copy of the book."""
    root = tmp_path_factory.mktemp("lab")
    (root / "book").mkdir()
    # a copy without outputs, so that "every cell has run" can be read from the prompts
    notebook = json.loads((ROOT / EXPLORER_NOTEBOOK).read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["metadata"].pop("widgets", None)
    (root / EXPLORER_NOTEBOOK).write_text(json.dumps(notebook), encoding="utf-8")
    # user settings: every cell stays in the page (no windowing), no news pop-up
    settings = root / ".lab-settings"
    for name, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                         "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    (root / "data").symlink_to(ROOT / "data")          # the notebook reads ../data/shapes
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / ".jupyter"), JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"),
               OMP_WAIT_POLICY="PASSIVE")
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False", "--allow-root", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (root / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token, EXPLORER_NOTEBOOK
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


_OUTPUT_ERRORS_JS = """() => Array.from(document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], ' +
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]'))
    .map(e => e.innerText).filter(t => /Traceback|Error|Exception/.test(t))"""

_PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
    .map(e => e.innerText.trim())"""


def test_anchor_explorer_in_jupyterlab(jupyterlab, browser):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    base, token, notebook = jupyterlab
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.route(re.compile(r"^(?!(http|ws)://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    tab = context.new_page()
    try:
        tab.goto(f"{base}/lab/tree/{notebook}?token={token}", wait_until="load", timeout=90_000)
        tab.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=90_000)
        # JupyterLab may ask which kernel to start: take the preselected one (this environment's python3)
        try:
            tab.locator(".jp-Dialog .jp-mod-accept").click(timeout=10_000)
        except PlaywrightTimeout:
            pass
        tab.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached", timeout=90_000)
        tab.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        tab.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        # every code cell has run when every prompt is a number: "[12]:" (running cells show "[*]:")
        tab.wait_for_function(rf"""() => {{ const p = ({_PROMPTS_JS})();
                                           return p.length > 0 && p.every(t => /\[\d+\]/.test(t)); }}""",
                              timeout=240_000, polling=500)
        errors = tab.evaluate(_OUTPUT_ERRORS_JS)
        assert not errors, f"errors after running {notebook}: {[e[:300] for e in errors]}"

        slider = tab.locator(".widget-slider", has=tab.locator(".widget-label", has_text=EXPLORER_SLIDER)).first
        slider.scroll_into_view_if_needed(timeout=30_000)
        explorer = tab.locator(".widget-interact", has=slider).first
        image = explorer.locator(".jp-OutputArea-output img").first
        image.wait_for(timeout=60_000)
        before = image.get_attribute("src")
        readout = slider.locator(".widget-readout")
        old_value = readout.inner_text().strip()
        readout.click()
        tab.keyboard.press("Control+A")
        tab.keyboard.type("64")
        tab.keyboard.press("Enter")
        tab.wait_for_function("""([el, before]) => { const img = el.querySelector('.jp-OutputArea-output img');
                                                     return img && img.getAttribute('src') !== before && img.naturalWidth > 0; }""",
                              arg=[explorer.element_handle(), before], timeout=60_000, polling=250)
        assert readout.inner_text().strip() == "64" != old_value
        errors = tab.evaluate(_OUTPUT_ERRORS_JS)
        assert not errors, f"errors after moving the slider: {[e[:300] for e in errors]}"
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / "jupyterlab_anchor_explorer.png"))
        context.close()


if __name__ == "__main__":  # pragma: no cover - `python tests/test_book_browser.py` runs just this file
    sys.exit(pytest.main([__file__, "-v"]))
