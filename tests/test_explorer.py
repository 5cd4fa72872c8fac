"""fasterrcnn_edu.explorer (kernel-free explorers), .legibility (font records in images) and .selfcheck
(answer checks): what the static book relies on, tested without a browser (tests/test_book_browser.py
runs them in Chromium)."""
import base64
import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from fasterrcnn_edu import legibility  # noqa: E402
from fasterrcnn_edu.explorer import STATIC_ENV, Dropdown, Slider, explorer  # noqa: E402
from fasterrcnn_edu.selfcheck import Choice, Numeric, answer_checks  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _draw(a, b):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, a])
    ax.set_title(f"{a} {b}", fontsize=8.5)
    ax.set_xlabel("x", fontsize=11)
    return ax                                     # an Axes is enough: the explorer takes its figure


def _frames(html: str) -> dict:
    payload = re.search(r'<script type="application/json" class="fre-explorer-data">(.*?)</script>', html, re.S)
    return json.loads(payload.group(1).replace("<\\/", "</"))


def test_smallest_font_is_recorded_in_jpeg_and_png():
    fig, ax = plt.subplots(figsize=(3, 2), dpi=90)
    ax.set_title("title", fontsize=13)
    ax.text(0.5, 0.5, "tiny", fontsize=6.5)
    ax.text(0.5, 0.2, "", fontsize=2)             # empty: draws nothing, so it does not count
    ax.tick_params(labelsize=8)
    for fmt in ("jpeg", "png"):
        record = legibility.read_comment(legibility.figure_image(fig, fmt))
        assert record == {"smallest_font_pt": 6.5, "dpi": 90.0}, fmt


def test_text_that_is_not_drawn_does_not_count():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.tick_params(labelsize=4)
    ax.axis("off")                                # tick labels exist but are never drawn
    ax.imshow([[0, 1], [1, 0]])
    ax.set_title("shown", fontsize=10)
    assert legibility.read_comment(legibility.figure_image(fig, "png"))["smallest_font_pt"] == 10.0


def test_image_without_record_reads_none():
    fig, _ = plt.subplots()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert legibility.read_comment(buffer.getvalue()) is None
    with pytest.raises(ValueError, match="neither JPEG nor PNG"):
        legibility.with_comment(b"GIF89a", "x")


def test_static_explorer_has_one_frame_per_grid_point(monkeypatch):
    monkeypatch.setenv(STATIC_ENV, "1")
    e = explorer(_draw, a=Slider("a", [1, 2, 3], 2), b=Dropdown("b", ["x", "y"], "y"))
    bundle = e._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}   # no widget view: nothing needs a widget manager
    html = bundle["text/html"]
    data = _frames(html)
    assert data["sizes"] == [3, 2] and data["labels"] == [["1", "2", "3"], ["x", "y"]]
    assert len(data["frames"]) == 6 and len(set(data["frames"])) == 6     # every combination drawn, all different
    # frame order: the last control varies fastest, as the page's script computes the index
    assert data["alts"][:2] == ["a 1; b x", "a 1; b y"]
    record = legibility.read_comment(base64.b64decode(data["frames"][0].split(",", 1)[1]))
    assert record["smallest_font_pt"] == 8.5
    # the controls start at the start values; the image shown first is the frame of those values
    assert 'type="range" min="0" max="2" step="1" value="1"' in html
    assert '<option value="1" selected>y</option>' in html
    assert re.search(r'<img class="fre-explorer-frame"[^>]*src="([^"]+)"', html).group(1) == data["frames"][0]
    markup = re.sub(r"data:image/[^\"]+", "", html.replace(json.dumps(data["frames"])[1:-1], ""))
    assert "http" not in markup and "require" not in markup      # nothing to fetch: works offline


def test_live_explorer_is_an_ipywidgets_interactive(monkeypatch):
    monkeypatch.delenv(STATIC_ENV, raising=False)
    e = explorer(_draw, a=Slider("a", [1, 2, 3], 2, limits=(0, 10)), b=Dropdown("b", ["x", "y"], "y"))
    bundle = e._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" not in bundle
    widget = e.widget()
    slider, dropdown = widget.children[:2]
    assert (slider.min, slider.max, slider.step, slider.value) == (0, 10, 1, 2)
    assert type(slider).__name__ == "IntSlider" and dropdown.options == ("x", "y")
    floats = explorer(_draw, a=Slider("a", [0.1, 0.3], 0.3, step=0.05), b=Dropdown("b", ["x"], "x")).widget()
    assert type(floats.children[0]).__name__ == "FloatSlider" and floats.children[0].step == 0.05


@pytest.mark.parametrize("controls, message", [
    ({}, "at least one control"),
    ({"a": Slider("a", [1, 2], 5)}, "start value 5 is not one of"),
    ({"a": Slider("a", [1], 1)}, "at least two grid values"),
    ({"a": Slider("a", [1, 20], 1, limits=(0, 10))}, "leaves its limits"),
    ({"a": (1, 2)}, "not a Slider or Dropdown"),
])
def test_explorer_rejects_bad_controls(controls, message):
    with pytest.raises((ValueError, TypeError), match=message):
        explorer(_draw, **controls)


def test_answer_checks_html():
    html = answer_checks(Numeric("IoU", 1 / 7, tolerance=0.005), Choice("rule", ["a", "b"], "b"))._repr_html_()
    assert 'data-kind="numeric" data-answer="0.14285714285714285" data-tolerance="0.005"' in html
    assert 'data-kind="choice" data-answer="1"' in html
    assert html.count('type="radio"') == 2 and html.count("<button") == 2
    names = re.findall(r'type="radio" name="([^"]+)"', html)
    assert len(names) == 2 and len(set(names)) == 1          # one group: picking one option unpicks the other


@pytest.mark.parametrize("make, message", [
    (lambda: Numeric("x", float("nan")), "not a finite number"),
    (lambda: Numeric("x", 1, tolerance=-1), "tolerance must be >= 0"),
    (lambda: Choice("x", ["a"], "b"), "not one of the options"),
    (lambda: answer_checks(), "at least one"),
])
def test_answer_checks_reject_bad_input(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()
