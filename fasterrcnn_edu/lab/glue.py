"""`glue(name, value)`: hand a value computed in a chapter to its text, for MyST-NB's `{glue}` role.

The chapters glue their measured numbers into the prose, so a sentence never quotes a stale value.
MyST-NB's own `myst_nb.glue` does the same, but it imports nbformat, whose jsonschema dependency
compiles an RFC 3987 grammar when it is imported: about 2.5 s per chapter, out of the book's
5-minute execution budget. This writes the same output (the display data MyST-NB reads back: MIME
types under `application/papermill.record/` and a `scrapbook` entry in the metadata) with IPython
alone; `tests/test_glue.py` checks that it is identical to MyST-NB's.
"""
from __future__ import annotations

from typing import Any

from IPython.core.formatters import format_display_data
from IPython.display import display as _display

#: The MIME-type prefix that hides a glued value where it is computed (MyST-NB's GLUE_PREFIX).
HIDDEN_PREFIX = "application/papermill.record/"


def glue(name: str, value: Any, display: bool = True) -> None:
    """Store `value`'s display (its text, HTML or image) under `name`, for `{glue}` in the chapter's text.

    `display=False` keeps it out of the cell's visible output, as `myst_nb.glue` does.
    """
    bundle, metadata = format_display_data(value)
    prefix = "" if display else HIDDEN_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    _display({prefix + mime: data for mime, data in bundle.items()}, raw=True, metadata=metadata)
