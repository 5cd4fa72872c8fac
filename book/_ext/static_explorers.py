"""Sphinx extension: the book's explorers are built kernel-free (see `fasterrcnn_edu.explorer`).

Sets ``FASTERRCNN_EDU_STATIC_EXPLORERS=1`` in the build's environment, which the notebook kernels that
myst-nb starts inherit: an explorer cell then outputs static HTML (HTML controls, precomputed frames,
a few lines of JavaScript) instead of an ipywidgets view, so the published page needs no kernel, no
widget manager and no network. A live session (JupyterLab, `book/_ext/execute.py`) does not set it and
gets the ipywidgets version. The widget state that such a run leaves in a notebook is not put into
the page either.
"""
from __future__ import annotations

import os


def _drop_widget_state(app, pagename, templatename, context, doctree) -> None:
    """No ipywidgets state or widget manager in the page: the stored notebooks keep the widget state of
    their last live run (`book/_ext/execute.py`) in their metadata, and myst-nb would embed it with the
    widget manager's CDN scripts; no output of the built book uses it. Runs before myst-nb adds them."""
    js_files = getattr(app.env, "nb_metadata", {}).get(pagename, {}).get("js_files", {})
    for key in [key for key in js_files if key.startswith("ipywidgets")]:
        del js_files[key]


def setup(app):
    from fasterrcnn_edu.explorer import STATIC_ENV

    os.environ[STATIC_ENV] = "1"
    app.connect("html-page-context", _drop_widget_state, priority=400)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
