"""Sphinx extension: execute notebooks that use ipywidgets without random ten-minute stalls.

When jupyter-book executes a notebook, nbclient mimics a browser for ipywidgets' Output widget
(which `ipywidgets.interact` uses to show its figure): every output that the kernel sends into
the widget is echoed back to the kernel as a `comm_msg` on the shell channel
(`nbclient.output_widget.OutputWidget.sync_state`). That send happens while nbclient is awaiting
the cell's `execute_reply` on the same asyncio ZMQ socket, and now and then the reply is then not
noticed until the cell's timeout expires: the cell "succeeds" after `execute: timeout` seconds
(600 here) instead of two. Measured here: 1 stall in 8 executions of a one-`interact` notebook
without this extension, none in 20 with it. Upstream: jupyter/nbclient issue #312 (open).

The echo only keeps the kernel-side `Output.outputs` trait in sync with a front end, which no
notebook of this book reads; nbclient records the widget's outputs for the embedded widget state
itself, so the built HTML is unchanged. This extension therefore turns the echo off for the
build. Interactive sessions (JupyterLab, Binder, Colab) do not use nbclient and are not affected.
"""
from __future__ import annotations


def _no_echo(self) -> None:
    """Replacement for `OutputWidget.sync_state`: do not send the widget's state back to the kernel."""


def setup(app):
    from nbclient.output_widget import OutputWidget

    OutputWidget.sync_state = _no_echo
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
