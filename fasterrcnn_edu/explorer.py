"""Explorers: a figure with controls, live in a Jupyter kernel and still working in the static book.

``explorer(draw, smallest=Slider(...), ratios=Dropdown(...))`` is what a chapter's explorer cell ends with.

- In a running notebook it shows ipywidgets controls; every move calls ``draw(**values)`` again
  (the classic `ipywidgets.interactive`), for any value of the slider's range.
- When the book is built (the build sets ``FASTERRCNN_EDU_STATIC_EXPLORERS=1``, see
  ``book/_ext/static_explorers.py``), ``draw`` runs once for every point of the controls' grid (the
  product of the sliders' ``values`` and the dropdowns' options), and the cell's output is plain HTML:
  the same controls as HTML inputs, every frame as an embedded image, and a few lines of JavaScript
  that show the frame of the current values. No kernel, no widget manager, no network.

Precomputing only at build time keeps a live session fast (no hundreds of frames drawn for nothing)
and keeps the notebooks' stored outputs small. Every frame carries its smallest font size and dpi in
its comment (`fasterrcnn_edu.legibility`), like every other figure of the book.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fasterrcnn_edu.legibility import figure_image

__all__ = ["Slider", "Dropdown", "Explorer", "explorer", "STATIC_ENV"]

STATIC_ENV = "FASTERRCNN_EDU_STATIC_EXPLORERS"


@dataclass(frozen=True)
class Slider:
    """A numeric control. `values`: the grid the static book precomputes (ascending); the live slider
    runs over `limits` (default: values[0] to values[-1]) in steps of `step` (default: the grid's
    first spacing), so a coarse grid keeps the build fast while a live session gets the full range."""

    description: str
    values: Sequence[float]
    value: float
    step: float | None = None
    format: str = "{:g}"
    limits: tuple[float, float] | None = None

    def options(self) -> list:
        return list(self.values)

    def label(self, value) -> str:
        return self.format.format(value)

    def widget(self):
        import ipywidgets as widgets

        values = list(self.values)
        step = self.step if self.step is not None else values[1] - values[0]
        low, high = self.limits if self.limits is not None else (values[0], values[-1])
        integer = all(isinstance(v, (int, np.integer)) for v in values + [self.value, step, low, high])
        cls = widgets.IntSlider if integer else widgets.FloatSlider
        return cls(value=self.value, min=low, max=high, step=step, continuous_update=False,
                   description=self.description, style={"description_width": "initial"})


@dataclass(frozen=True)
class Dropdown:
    """A choice among `choices` (all precomputed in the static book)."""

    description: str
    choices: Sequence[Any]
    value: Any

    def options(self) -> list:
        return list(self.choices)

    def label(self, value) -> str:
        return str(value)

    def widget(self):
        import ipywidgets as widgets

        return widgets.Dropdown(options=self.options(), value=self.value, description=self.description,
                                style={"description_width": "initial"})



def _figure_of(result) -> Figure:
    """The figure a draw function drew: the Figure or Axes it returned, else pyplot's current figure."""
    if isinstance(result, Figure):
        return result
    if isinstance(result, Axes):
        return result.figure
    if isinstance(result, np.ndarray) and result.size and isinstance(result.flat[0], Axes):
        return result.flat[0].figure
    return plt.gcf()


# Runs in the reader's browser: show the frame of the controls' current values (index = mixed radix).
_SCRIPT = """(function () {
  const root = document.getElementById("%(id)s");
  const data = JSON.parse(root.querySelector("script.fre-explorer-data").textContent);
  const controls = Array.from(root.querySelectorAll("[data-control]"));
  const image = root.querySelector("img.fre-explorer-frame");
  function update() {
    let index = 0;
    controls.forEach((control, i) => {
      const k = Number(control.value);
      index = index * data.sizes[i] + k;
      const readout = root.querySelector('output[data-readout="' + i + '"]');
      if (readout) readout.textContent = data.labels[i][k];
    });
    image.src = data.frames[index];
    image.alt = data.alts[index];
  }
  controls.forEach(control => control.addEventListener("input", update));
  update();
})();"""


class Explorer:
    """A drawing function and its controls; see the module docstring. Use `explorer(...)` to make one."""

    def __init__(self, draw: Callable[..., Any], controls: Mapping[str, Slider | Dropdown], fmt: str = "jpeg",
                 dpi: float | None = None):
        if not controls:
            raise ValueError("explorer: give at least one control, e.g. score=Slider('score', [0.3, 0.5], 0.5)")
        for name, control in controls.items():
            if not isinstance(control, (Slider, Dropdown)):
                raise TypeError(f"explorer: control {name!r} is a {type(control).__name__}, not a Slider or Dropdown")
            if control.value not in control.options():
                raise ValueError(f"explorer: control {name!r}: the start value {control.value!r} is not one of "
                                 f"its grid values {control.options()}")
            if isinstance(control, Slider) and len(control.options()) < 2:
                raise ValueError(f"explorer: slider {name!r} needs at least two grid values")
            if isinstance(control, Slider) and control.limits is not None and not (
                    control.limits[0] <= min(control.values) and max(control.values) <= control.limits[1]):
                raise ValueError(f"explorer: slider {name!r}: its grid {list(control.values)} leaves its "
                                 f"limits {control.limits}")
        self.draw, self.controls, self.fmt, self.dpi = draw, dict(controls), fmt, dpi

    # --- live: ipywidgets ------------------------------------------------------------------------
    def widget(self):
        """The live explorer: `ipywidgets.interactive` over the controls' widgets."""
        import ipywidgets as widgets

        def show(**values):
            self.draw(**values)
            plt.show()

        return widgets.interactive(show, **{name: c.widget() for name, c in self.controls.items()})

    # --- static: precomputed frames --------------------------------------------------------------
    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the controls' grid values, the last control varying fastest."""
        names = list(self.controls)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.controls[n].options() for n in names))]

    def frame(self, values: Mapping[str, Any]) -> bytes:
        """The figure `draw(**values)` makes, as image bytes (the figure is closed afterwards)."""
        fig = _figure_of(self.draw(**values))
        try:     # saved as drawn, no tight crop: every frame keeps the same size (use layout="constrained")
            return figure_image(fig, self.fmt, self.dpi)
        finally:
            plt.close(fig)

    def html(self) -> str:
        """The kernel-free explorer: HTML controls, every frame embedded, a few lines of JavaScript."""
        uid = f"fre-explorer-{uuid.uuid4().hex[:12]}"
        mime = "image/png" if self.fmt == "png" else "image/jpeg"
        grid = self.grid()
        frames = [f"data:{mime};base64," + base64.b64encode(self.frame(v)).decode("ascii") for v in grid]
        controls = list(self.controls.values())
        alts = ["; ".join(f"{c.description} {c.label(v[n])}" for n, c in self.controls.items()) for v in grid]
        data = {"sizes": [len(c.options()) for c in controls],
                "labels": [[c.label(v) for v in c.options()] for c in controls], "frames": frames, "alts": alts}
        inputs = []
        for i, c in enumerate(controls):
            start = c.options().index(c.value)
            label = html.escape(c.description)
            if isinstance(c, Slider):
                inputs.append(f'<label class="fre-explorer-control">{label} <input type="range" min="0" '
                              f'max="{len(c.options()) - 1}" step="1" value="{start}" data-control="{i}" '
                              f'aria-label="{label}"> <output data-readout="{i}">{html.escape(c.label(c.value))}'
                              f'</output></label>')
            else:
                options = "".join(f'<option value="{k}"{" selected" if k == start else ""}>{html.escape(c.label(o))}'
                                  f'</option>' for k, o in enumerate(c.options()))
                inputs.append(f'<label class="fre-explorer-control">{label} <select data-control="{i}" '
                              f'aria-label="{label}">{options}</select></label>')
        payload = json.dumps(data).replace("</", "<\\/")
        return (f'<div class="fre-explorer" id="{uid}">'
                f'<div class="fre-explorer-controls" style="display:flex;flex-wrap:wrap;gap:0.4em 1.5em;'
                f'margin-bottom:0.4em">{"".join(inputs)}</div>'
                f'<img class="fre-explorer-frame" style="max-width:100%" src="{frames[0]}" alt="{html.escape(alts[0])}">'
                f'<p class="fre-explorer-note" style="font-size:0.85em;margin:0.2em 0 0">{len(frames)} frames '
                f'computed when the book was built; run the notebook to try any value in between.</p>'
                f'<script type="application/json" class="fre-explorer-data">{payload}</script>'
                f'<script>{_SCRIPT % {"id": uid}}</script></div>')

    # --- display ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        parts = ", ".join(f"{c.description}: {len(c.options())} values" for c in self.controls.values())
        return f"<Explorer ({parts})>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        """Static HTML while the book is built (`STATIC_ENV` set), else the live widget."""
        if os.environ.get(STATIC_ENV, "") == "1":
            return {"text/html": self.html(), "text/plain": repr(self)}
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)


def explorer(draw: Callable[..., Any], fmt: str = "jpeg", dpi: float | None = None, **controls: Slider | Dropdown) -> Explorer:
    """An explorer of `draw(**values)` over `controls` (each a `Slider` or `Dropdown`, named by the
    keyword argument that `draw` takes). `draw` returns the Figure (or an Axes of it) it drew, or
    leaves it as pyplot's current figure. Displayed, it is live in a kernel and precomputed in the book."""
    return Explorer(draw, controls, fmt=fmt, dpi=dpi)
