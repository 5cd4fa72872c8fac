"""Sphinx extension: the book's explorers are built kernel-free (see `fasterrcnn_edu.explorer`).

Sets ``FASTERRCNN_EDU_STATIC_EXPLORERS=1`` in the build's environment, which the notebook kernels that
myst-nb starts inherit: an explorer cell then outputs static HTML (HTML controls, precomputed frames,
a few lines of JavaScript) instead of an ipywidgets view, so the published page needs no kernel, no
widget manager and no network. A live session (JupyterLab, `book/_ext/execute.py`) does not set it and
gets the ipywidgets version.
"""
from __future__ import annotations

import os


def setup(app):
    from fasterrcnn_edu.explorer import STATIC_ENV

    os.environ[STATIC_ENV] = "1"
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
