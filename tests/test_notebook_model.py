"""The book's stored outputs were produced with the shipped reference model.

Every chapter that loads `data/reference_model.pt` prints `records.model_fingerprint` of it in a
cell whose output nbval checks. This test reads the stored outputs (no execution): a chapter
last executed with another model file fails here until it is re-executed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fasterrcnn_edu.lab.records import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "reference_model.pt"


def loads_the_model(path: Path) -> bool:
    """Whether a code cell of the notebook names the reference model file."""
    return any(c["cell_type"] == "code" and "reference_model.pt" in "".join(c["source"])
               for c in json.loads(path.read_text())["cells"])


CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.ipynb") if loads_the_model(p))


def checked_outputs(path: Path) -> str:
    """The text of every stored output of the notebook's nbval-checked cells."""
    text = []
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell.get("source", ""))
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] == "code" and ("nbval-check-output" in tags or "NBVAL_CHECK_OUTPUT" in source):
            for output in cell.get("outputs", []):
                text.append("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_chapters_that_use_the_reference_model_are_found():
    assert {p.stem for p in CHAPTERS} >= {"00_introduction", "06_training", "07_evaluation"}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_the_shipped_reference_model(path):
    fingerprint = model_fingerprint(MODEL)
    assert fingerprint in checked_outputs(path), (
        f"{path.name} has no checked cell printing {fingerprint!r}: its stored outputs were made with "
        f"another model file (re-execute it) or it does not print records.model_fingerprint")
