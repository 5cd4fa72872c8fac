"""Repository-wide pytest configuration: how nbval runs and compares the book's notebooks.

`pytest` runs the notebooks in `book/` with `--nbval-lax --nbval-current-env`, switched on in
`pytest_configure` below when nbval is installed (not in pyproject's `addopts`, so that
`pytest tests/test_boxes.py` also works without nbval; `-p no:nbval` leaves the notebooks out):
every cell is executed, and only cells tagged `nbval-check-output` (or marked
`# NBVAL_CHECK_OUTPUT`) have their outputs compared with the outputs saved in the notebook.
For those cells we compare what the teaching depends on (stdout and text results) and skip
what legitimately varies between runs and machines:

- ``stderr``: warnings and progress bars (nbval's documented hook, see its docs,
  "Skipping certain output types");
- ``text/html`` and ``application/javascript``: rich reprs (e.g. pandas tables, widgets)
  whose markup changes between library versions;
- ``application/vnd.jupyter.widget-view+json``: widget model ids are random.

Images are never compared (nbval skips ``image/png`` unless run with ``--nbdime``).
"""
from __future__ import annotations

SKIP_COMPARE = ("stderr", "application/javascript", "text/html",
                "application/vnd.jupyter.widget-view+json")


def pytest_collectstart(collector):
    """Extend nbval's list of output keys that are never compared, for every notebook file."""
    path = getattr(collector, "path", None)
    if path is not None and path.suffix == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare += tuple(k for k in SKIP_COMPARE if k not in collector.skip_compare)


def pytest_configure(config):
    """Run notebooks the lax way (only tagged cells' outputs compared) in the current environment's
    kernel, when the nbval plugin is active and no strict `--nbval` was asked for."""
    if config.pluginmanager.hasplugin("nbval") and not config.getoption("nbval", False):
        config.option.nbval_lax = True
        config.option.nbval_current_env = True
