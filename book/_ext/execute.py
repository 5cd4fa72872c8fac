"""Execute notebooks in place, as the book build does, so that their stored outputs are current.

    python book/_ext/execute.py book/01_anchors.ipynb [book/02_labeling.ipynb ...]

Plain `jupyter nbconvert --execute` can stall for the cell timeout on notebooks with ipywidgets
(see `widget_execution.py` beside this file); this applies the same fix. Each notebook runs with
`book/` as the working folder and a 600 s cell timeout, like `_config.yml`'s execution settings;
its execution time is printed.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from widget_execution import setup as _disable_widget_echo


def execute(path: Path) -> float:
    """Run every cell of the notebook at `path`, write the outputs back; returns the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(notebook, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    _disable_widget_echo(None)
    for name in sys.argv[1:]:
        print(f"{name}: {execute(Path(name).resolve()):.1f} s", flush=True)
