"""Issue 10 item 6: packaging. Every runtime dependency declared with a floor, a LICENSE, pytest
that runs without nbval, and CLI defaults that find the shipped data from any folder."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fasterrcnn_edu.commands import DEFAULT_DATA, DEFAULT_MODEL

tomllib = pytest.importorskip("tomllib")        # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "faster_coco_eval": "faster-coco-eval", "cv2": "opencv-contrib-python-headless",
                 "skimage": "scikit-image", "IPython": "ipython",
                 "matplotlib_inline": "matplotlib-inline"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in (ROOT / "fasterrcnn_edu").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in stdlib and n not in ("fasterrcnn_edu", "__future__")}


def _floors(requirements: list[str]) -> dict[str, str]:
    floors = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement)
        assert match, f"{requirement!r} has no floor (>=)"
        floors[match[1].lower()] = match[2]
    return floors


def test_every_runtime_dependency_is_declared_with_a_floor():
    project = _pyproject()["project"]
    required = _floors(project["dependencies"])
    optional = _floors(sum(project.get("optional-dependencies", {}).values(), []))
    imported = {DISTRIBUTIONS.get(n, n).lower() for n in _third_party_imports()}
    assert imported <= set(required) | set(optional), f"not in pyproject: {imported - set(required) - set(optional)}"
    assert required["torch"] == "2.4" and required["torchvision"] == "0.19" and required["faster-coco-eval"] == "1.6"
    assert {"numpy", "pillow", "matplotlib", "defusedxml", "tqdm"} <= set(required)


def test_license_file_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the fasterrcnn-edu authors" in text
    assert _pyproject()["project"]["license"] == "MIT"


def test_nbval_options_are_not_in_addopts():
    assert "nbval" not in _pyproject()["tool"]["pytest"]["ini_options"].get("addopts", "")


def test_pytest_runs_unit_tests_without_nbval():
    """`-p no:nbval` is what a machine without nbval sees: its options must not be required."""
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_boxes.py", "-p", "no:nbval", "-q",
                           "-k", "iou"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "passed" in done.stdout


def test_notebooks_still_run_lax_with_nbval():
    pytest.importorskip("nbval")
    done = subprocess.run([sys.executable, "-m", "pytest", "book/01_anchors.ipynb", "--collect-only", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "01_anchors.ipynb::Cell" in done.stdout, done.stdout[-2000:]


def test_data_defaults_resolve_to_the_shipped_files_from_any_folder(tmp_path):
    assert DEFAULT_MODEL.is_absolute() and DEFAULT_MODEL.is_file()
    assert DEFAULT_DATA.is_absolute() and (DEFAULT_DATA / "ImageSets" / "Main").is_dir()
    image = next((DEFAULT_DATA / "JPEGImages").glob("*.jpg"))
    done = subprocess.run([sys.executable, "-m", "fasterrcnn_edu", "detect", str(image), "--device", "cpu",
                           "--threads", "1", "--out", "det"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "det" / "detections.json").is_file()          # --out: relative to the current folder
    helptext = subprocess.run([sys.executable, "-m", "fasterrcnn_edu", "eval", "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300).stdout
    assert str(DEFAULT_MODEL).replace(" ", "") in "".join(helptext.split())     # the help says where it is
