"""The book's solutions of every piece, read from the chapter that holds them (book/10_build_your_own.ipynb).

The tests check the chapter's own functions, not a copy: the imports and the `def my_...` functions of
its code cells are compiled (nothing else of the cells runs) under a name per cell that `linecache`
knows, so `inspect.getsource` gives each function's text as the chapter writes it.
"""
from __future__ import annotations

import ast
import linecache
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "book" / "10_build_your_own.ipynb"
PIECES = ("iou", "base_anchors", "grid_anchors", "label_anchors", "sample_anchors", "encode", "decode", "rpn_loss",
          "nms", "proposals", "roi_pool", "sample_rois", "average_precision")


def _definitions(source: str) -> str:
    """The import statements and function definitions of a cell's `source`, in order, as text (IPython
    magics such as `%matplotlib inline` are blank lines to the parser)."""
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef)
    python = "".join(line if not line.startswith("%") else "\n" for line in source.splitlines(keepends=True))
    return "\n\n".join(ast.get_source_segment(python, node) for node in ast.parse(python).body
                       if isinstance(node, keep)) + "\n"


def _load() -> dict:
    namespace: dict = {}
    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
        if cell.cell_type != "code" or "def my_" not in cell.source and "import" not in cell.source:
            continue
        text = _definitions(cell.source)
        name = f"<{NOTEBOOK.name} cell {cell.get('id', '?')}>"
        linecache.cache[name] = (len(text), None, text.splitlines(keepends=True), name)
        exec(compile(text, name, "exec"), namespace)
    return namespace


_NAMESPACE = _load()
SOLUTIONS = {piece: _NAMESPACE[f"my_{piece}"] for piece in PIECES}
