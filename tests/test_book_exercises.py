"""The "Write it yourself" exercises of chapters 1-8: each stub runs and is told it is not written yet, each hidden
solution passes its checker, every piece the book teaches is an exercise somewhere, and each solution is the
capstone's (book/10_build_your_own.ipynb, read by tests/book_solutions.py), not a second one.

The exercise cells are run here in a fresh namespace holding only the chapter's imports, so a cell that needs a
name the chapter computes elsewhere (or an earlier exercise cell it does not follow) fails here."""
from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re
import sys
from pathlib import Path

import nbformat
import pytest

from fasterrcnn_edu import exercises

sys.path.insert(0, str(Path(__file__).parent))
import book_solutions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("0[1-8]_*.ipynb"))
HEADING = "## Write it yourself"
CHECK = re.compile(r'exercises\.check\("(\w+)", (my_\w+)\)')
# where a chapter has not written the capstone's helper piece, the package's function stands in for it
STAND_INS = {"nms": {"my_iou(": "box_iou("}, "proposals": {"my_decode(": "decode("}}


def exercise_cells(path: Path) -> list:
    """The cells from the chapter's "Write it yourself" heading to its end."""
    cells = nbformat.read(path, as_version=4).cells
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith(HEADING))
    return cells[start:]


def imports_of(path: Path) -> str:
    """Every top-level import statement of the chapter's code cells (IPython magics left out)."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        found += [ast.get_source_segment(code, node) for node in ast.parse(code).body
                  if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(found)


def checked_cells(path: Path):
    """(cell, [(piece, function name), ...]) for each exercise code cell that calls `check`."""
    return [(c, CHECK.findall(c.source)) for c in exercise_cells(path)
            if c.cell_type == "code" and CHECK.search(c.source)]


def test_every_chapter_has_the_exercise_section_and_points_to_the_capstone():
    for path in CHAPTERS:
        text = "\n".join(c.source for c in exercise_cells(path) if c.cell_type == "markdown")
        assert "{doc}`10_build_your_own`" in text, path.name


@pytest.mark.parametrize("path", [p for p in CHAPTERS if checked_cells(p)], ids=lambda p: p.stem)
def test_stubs_say_not_written_and_solutions_pass(path):
    namespace: dict = {}
    exec(imports_of(path), namespace)
    for cell, checks in checked_cells(path):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(cell.source, f"{path.name}:{cell.id}", "exec"), namespace)
        printed = out.getvalue().splitlines()
        assert "".join("".join(o.get("text", "")) for o in cell.outputs) == out.getvalue(), f"{cell.id}: stale output"
        tags = cell.metadata.get("tags", [])
        assert "nbval-check-output" in tags, cell.id
        assert len(printed) == len(checks), (cell.id, printed)
        if "raise NotImplementedError" in cell.source:        # the reader's stub: shown, and it runs
            assert "hide-input" not in tags, cell.id
            assert all(line.startswith(f"{piece}: not written yet")
                       for line, (piece, _) in zip(printed, checks)), printed
        else:                                                  # the book's solution: hidden, and it passes
            assert "hide-input" in tags, cell.id
            for line, (piece, fn) in zip(printed, checks):
                assert re.fullmatch(rf"{piece}: all \d+ cases pass", line), line
                assert exercises.check(piece, namespace[fn], verbose=False).ok


def test_every_piece_is_a_chapter_exercise_with_a_stub_and_a_solution():
    stubbed, solved = set(), set()
    for path in CHAPTERS:
        for cell, checks in checked_cells(path):
            (stubbed if "raise NotImplementedError" in cell.source else solved).update(piece for piece, _ in checks)
    assert stubbed == solved == set(exercises.EXERCISES)


def test_the_chapters_solutions_are_the_capstones():
    code = "\n".join(c.source for path in CHAPTERS for c in exercise_cells(path) if c.cell_type == "code")
    for piece, fn in book_solutions.SOLUTIONS.items():
        if piece == "sample_rois":      # chapter 5 draws with the package's sample_balanced (chapter 2 has the sampler)
            continue
        source = inspect.getsource(fn).strip()
        for mine, package in STAND_INS.get(piece, {}).items():
            source = source.replace(mine, package)
        assert source in code, f"chapters 1-8 do not hold the capstone's {fn.__name__}"
