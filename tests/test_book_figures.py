"""The published book has its figures: a chapter built the way the Pages workflow builds it shows them.

The workflow (.github/workflows/book.yml) builds with `MPLBACKEND: Agg` in its environment. Under
that variable a kernel that does not select a backend itself renders no inline figure at all
(chapter 1 produced 0 instead of 4), so the published book would have none. Every chapter
therefore starts with `%matplotlib inline`. This test reads the workflow's environment and build
command, builds one chapter with them in a scratch copy of the book, and counts its figures.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
CHAPTER = "book/01_anchors"


def workflow_build() -> tuple[dict[str, str], list[str]]:
    """The build job's environment and the argv of its `jupyter-book build` step."""
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]
    env = {k: str(v) for k, v in job.get("env", {}).items()}
    run = next(step["run"] for step in job["steps"] if "jupyter-book build" in str(step.get("run", "")))
    return env, shlex.split(run)


def test_every_chapter_selects_the_inline_backend_itself():
    for path in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        first_code = next(c for c in cells if c["cell_type"] == "code")
        source = "".join(first_code["source"])
        assert source.startswith("%matplotlib inline"), f"{path.name}: first code cell must select the inline backend"


@pytest.mark.slow
def test_a_chapter_built_like_the_workflow_shows_its_figures(tmp_path):
    env, argv = workflow_build()
    assert env.get("MPLBACKEND") == "Agg", "the workflow no longer sets MPLBACKEND: update this test's premise"
    assert argv[:3] == ["jupyter-book", "build", "."]
    # A scratch book with the real configuration and one chapter; the data is linked, not copied.
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("*.ipynb", "_build"))
    shutil.copy(ROOT / f"{CHAPTER}.ipynb", tmp_path / f"{CHAPTER}.ipynb")
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "_toc.yml").write_text(f"format: jb-book\nroot: {CHAPTER}\n")
    result = subprocess.run(argv, cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=900)
    page = tmp_path / "_build" / "html" / f"{CHAPTER}.html"
    assert page.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    figures = re.findall(r'<img[^>]+src="[^"]*_images/[^"]+\.(?:png|jpe?g|svg)"', page.read_text())
    assert len(figures) >= 4, f"{len(figures)} figures in {page.name} built with {env}"
