"""How small is a figure's smallest text? Recorded in every image the book shows, so that it can be measured.

A figure's text is set in points, but the reader sees CSS pixels: a figure ``W`` inches wide, saved at
``dpi``, is an image ``W * dpi`` pixels wide, which the book's ~700-px column shrinks to its displayed
width. Its smallest text is then ``pt * dpi / 72 * displayed_width / natural_width`` CSS pixels high.
Only the browser knows the displayed width; only the figure knows ``pt``. So every image gets its
smallest font size and dpi written into it, in the image's comment (a JPEG COM segment, a PNG tEXt
chunk with key ``Comment``), as ``fasterrcnn_edu smallest_font_pt=7.00 dpi=100``, and the book's
browser test (``tests/test_book_browser.py``) combines it with the widths it sees.

- `figure_image(fig, fmt)`: the figure as JPEG/PNG bytes, with the comment (used by `explorer`).
- `install()`: in a Jupyter kernel, every figure the notebook displays carries the comment
  (``fasterrcnn_edu.viz`` calls it on import).
"""
from __future__ import annotations

import base64
import contextlib
import io
import re
import struct
import zlib
from typing import Iterator

from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["recording_text_sizes", "image_comment", "with_comment", "read_comment", "figure_image", "install"]

COMMENT_RE = re.compile(r"fasterrcnn_edu smallest_font_pt=(?P<pt>[\d.]+|none) dpi=(?P<dpi>[\d.]+)")


@contextlib.contextmanager
def recording_text_sizes() -> Iterator[list[float]]:
    """Within the block, every non-empty text that Matplotlib draws appends its size (pt) to the yielded list.

    Hooks `Text.draw` (annotations, tick labels, legends and tables all draw through it), so only text
    that is really drawn counts: the tick labels of an axis turned off, for example, are never drawn.
    """
    sizes: list[float] = []
    original = Text.draw

    def draw(self: Text, renderer) -> None:
        if self.get_visible() and self.get_text().strip():
            sizes.append(float(self.get_fontsize()))
        return original(self, renderer)

    Text.draw = draw
    try:
        yield sizes
    finally:
        Text.draw = original


def image_comment(sizes: list[float], dpi: float) -> str:
    """The comment recorded in an image: its smallest font size (pt; "none" without text) and dpi."""
    smallest = f"{min(sizes):.2f}" if sizes else "none"
    return f"fasterrcnn_edu smallest_font_pt={smallest} dpi={dpi:g}"


def with_comment(data: bytes, comment: str) -> bytes:
    """JPEG or PNG bytes with `comment` added (JPEG: a COM segment after SOI; PNG: a tEXt chunk after IHDR)."""
    text = comment.encode("latin-1")
    if data[:2] == b"\xff\xd8":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        body = b"tEXt" + b"Comment\x00" + text
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    raise ValueError("with_comment: the image is neither JPEG nor PNG")


def read_comment(data: bytes) -> dict[str, float | None] | None:
    """(smallest_font_pt, dpi) read back from JPEG/PNG bytes, or None when the image has no such comment."""
    from PIL import Image

    info = Image.open(io.BytesIO(data)).info
    comment = info.get("comment", info.get("Comment", b""))
    match = COMMENT_RE.search(comment.decode("latin-1") if isinstance(comment, bytes) else str(comment))
    if match is None:
        return None
    pt = None if match["pt"] == "none" else float(match["pt"])
    return {"smallest_font_pt": pt, "dpi": float(match["dpi"])}


def figure_image(fig: Figure, fmt: str = "jpeg", dpi: float | None = None, quality: int = 85) -> bytes:
    """`fig` saved as JPEG or PNG bytes (bbox as drawn, so every frame of an explorer has the same size),
    with its smallest font size and dpi in the image's comment."""
    dpi = float(dpi or fig.dpi)
    buffer = io.BytesIO()
    kwargs = {"pil_kwargs": {"quality": quality}} if fmt in ("jpg", "jpeg") else {}
    with recording_text_sizes() as sizes:
        fig.savefig(buffer, format=fmt, dpi=dpi, facecolor="white", **kwargs)
    return with_comment(buffer.getvalue(), image_comment(sizes, dpi))


# ----------------------------------------------------------------------------------------------
# Jupyter: every displayed figure carries the comment
# ----------------------------------------------------------------------------------------------

def _with_comment_printer(printer):
    """Wrap the inline backend's figure printer (a `functools.partial` of IPython's `print_figure` or
    `retina_figure` returning base64) so that its image carries the comment."""
    keywords = getattr(printer, "keywords", {})
    retina = getattr(getattr(printer, "func", None), "__name__", "") == "retina_figure"

    def print_with_comment(fig: Figure):
        with recording_text_sizes() as sizes:
            data = printer(fig)
        if not data:
            return data
        dpi = float(keywords.get("dpi", fig.dpi)) * (2 if retina else 1)
        raw = with_comment(base64.b64decode(data), image_comment(sizes, dpi))
        return base64.b64encode(raw).decode("ascii")

    print_with_comment.fasterrcnn_edu_comment = True
    return print_with_comment


def _wrap_figure_printers(shell) -> None:
    """Wrap the current PNG/JPEG printers for `Figure` (the inline backend replaces them whenever
    `%matplotlib` or `%config InlineBackend...` runs, so this is repeated before every cell)."""
    for mime in ("image/png", "image/jpeg"):
        formatter = shell.display_formatter.formatters[mime]
        printer = formatter.type_printers.get(Figure)
        if printer is not None and not getattr(printer, "fasterrcnn_edu_comment", False):
            formatter.for_type(Figure, _with_comment_printer(printer))


def install() -> bool:
    """In a Jupyter kernel, make every figure the notebook displays carry its smallest font size and dpi.
    Returns whether it did (False outside a kernel: terminals and scripts show no images)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    if getattr(shell, "_fasterrcnn_edu_legibility", False):
        return True
    try:  # the inline backend registers its printers on import: let it, so that ours wrap them
        import matplotlib_inline.backend_inline  # noqa: F401
    except ImportError:
        pass
    _wrap_figure_printers(shell)
    shell.events.register("pre_run_cell", lambda *args: _wrap_figure_printers(shell))
    shell._fasterrcnn_edu_legibility = True
    return True
