"""The build-your-own chapter (book/10_build_your_own.ipynb) and its result file stay in step with the code."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from fasterrcnn_edu import exercises
from fasterrcnn_edu.lab import capstone

sys.path.insert(0, str(Path(__file__).parent))
import book_solutions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "book" / "10_build_your_own.ipynb"
RESULTS = ROOT / "data" / "experiments" / "capstone.json"


def test_the_chapter_hides_the_solutions_and_checks_them():
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code" and "def my_" in c.source]
    assert cells and all("hide-input" in c.metadata.get("tags", []) for c in cells)
    assert all("nbval-check-output" in c.metadata.get("tags", []) for c in cells)
    checked = {name for c in cells for name in exercises.EXERCISES if f'("{name}", my_' in c.source}
    assert checked == set(book_solutions.SOLUTIONS)


def test_the_result_file_matches_the_settings_the_chapter_trains_with():
    results = json.loads(RESULTS.read_text())
    assert results["settings"] == capstone.SETTINGS        # the chapter's own run uses capstone.SETTINGS
    assert sorted(results["package"]) == ["0", "1", "2"] and set(results["broken"]) == set(capstone.BROKEN)
    maps = [run["voc07_map"] for run in results["package"].values()]
    assert results["package_summary"]["min"] == min(maps) and results["package_summary"]["max"] == max(maps)
    for name, run in results["broken"].items():
        assert run["piece"] == capstone.BROKEN[name][0]
        assert "diverged" in run or len(run["examples"]) == len(capstone.SETTINGS["example_images"])


@pytest.mark.parametrize("name", sorted(capstone.BROKEN))
def test_each_broken_piece_fails_its_checker(name):
    piece, fn, _ = capstone.BROKEN[name]
    assert not exercises.check(piece, fn, verbose=False)


def test_the_command_refuses_an_unknown_broken_piece(capsys):
    from fasterrcnn_edu.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["capstone", "--broken", "nothing"])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_capstone_config_takes_its_pre_nms_count_from_the_settings():
    settings = {**capstone.SETTINGS, "pre_nms_top_n_train": 123}
    cfg = capstone.capstone_config(settings=settings)
    assert cfg.rpn_pre_nms_top_n_train == 123 and cfg.joint.iterations == settings["iterations"]
