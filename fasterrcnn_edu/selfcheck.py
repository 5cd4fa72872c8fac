"""Answer checks: an exercise's numeric or multiple-choice answer, checked inside the page.

A chapter's exercise list is followed by one cell (input hidden) that ends with
``answer_checks(Numeric(...), Choice(...))``. Its output is plain HTML with a few lines of
JavaScript: a box (or a set of options) per exercise and a *Check* button that says whether the
reader's answer is right. It works in the static book (no kernel, no network) and in a notebook.
The solutions stay in their dropdowns; a check only says right or not yet.

The right answer is an argument, so a chapter passes the value the package computes (for example
``num_anchors((600, 800))``), never a number typed by hand.
"""
from __future__ import annotations

import html
import math
import uuid
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Numeric", "Choice", "AnswerChecks", "answer_checks"]


@dataclass(frozen=True)
class Numeric:
    """A numeric answer: right when within `tolerance` of `answer` (absolute; 0 for integers)."""

    label: str
    answer: float
    tolerance: float = 0.0

    def __post_init__(self):
        if not math.isfinite(float(self.answer)):
            raise ValueError(f"answer check {self.label!r}: the answer {self.answer!r} is not a finite number")
        if self.tolerance < 0:
            raise ValueError(f"answer check {self.label!r}: tolerance must be >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class Choice:
    """A multiple-choice answer: `options` shown as radio buttons, `answer` the right one."""

    label: str
    options: Sequence[str]
    answer: str

    def __post_init__(self):
        if self.answer not in self.options:
            raise ValueError(f"answer check {self.label!r}: the answer {self.answer!r} is not one of "
                             f"the options {list(self.options)}")


# Runs in the reader's browser. Numbers may be typed with spaces, thousands commas or a decimal comma.
_SCRIPT = """(function () {
  const root = document.getElementById("%(id)s");
  root.querySelectorAll(".fre-check").forEach(check => {
    const button = check.querySelector("button"), verdict = check.querySelector(".fre-check-verdict");
    button.addEventListener("click", () => {
      let right;
      if (check.dataset.kind === "numeric") {
        let text = check.querySelector("input").value.trim().replace(/\\s/g, "");
        text = /^-?\\d{1,3}(,\\d{3})+(\\.\\d+)?$/.test(text) ? text.replace(/,/g, "") : text.replace(",", ".");
        const value = Number(text);
        right = text !== "" && Number.isFinite(value) &&
                Math.abs(value - Number(check.dataset.answer)) <= Number(check.dataset.tolerance) + 1e-12;
      } else {
        const picked = check.querySelector("input:checked");
        right = picked !== null && picked.value === check.dataset.answer;
      }
      verdict.textContent = right ? "Right." : "Not yet: try again, or open the solution below.";
      verdict.className = "fre-check-verdict " + (right ? "fre-check-right" : "fre-check-wrong");
      verdict.style.color = right ? "#1a7f37" : "#b35900";
    });
  });
})();"""


def _check_html(check: Numeric | Choice, index: int) -> str:
    label = html.escape(check.label)
    button = '<button type="button" style="margin-left:0.5em">Check</button>'
    verdict = '<span class="fre-check-verdict" role="status" style="margin-left:0.6em"></span>'
    if isinstance(check, Numeric):
        return (f'<div class="fre-check" data-kind="numeric" data-answer="{float(check.answer)!r}" '
                f'data-tolerance="{float(check.tolerance)!r}" style="margin:0.3em 0">'
                f'<label>{label} <input type="text" inputmode="decimal" size="10" aria-label="{label}"></label>'
                f'{button}{verdict}</div>')
    name = f"fre-check-{index}-{uuid.uuid4().hex[:8]}"        # one name per check: its options exclude each other
    options = "".join(f'<label style="margin-right:1em"><input type="radio" name="{name}" '
                      f'value="{k}"> {html.escape(str(o))}</label>' for k, o in enumerate(check.options))
    return (f'<div class="fre-check" data-kind="choice" data-answer="{list(check.options).index(check.answer)}" '
            f'style="margin:0.3em 0"><span>{label}</span><br>{options}{button}{verdict}</div>')


class AnswerChecks:
    """The answer checks of one exercise list; displays as HTML. Use `answer_checks(...)` to make one."""

    def __init__(self, checks: Sequence[Numeric | Choice]):
        if not checks:
            raise ValueError("answer_checks: give at least one Numeric(...) or Choice(...)")
        for check in checks:
            if not isinstance(check, (Numeric, Choice)):
                raise TypeError(f"answer_checks: {check!r} is not a Numeric or Choice")
        self.checks = list(checks)

    def __repr__(self) -> str:
        return f"<AnswerChecks: {', '.join(c.label for c in self.checks)}>"

    def _repr_html_(self) -> str:
        uid = f"fre-checks-{uuid.uuid4().hex[:12]}"
        body = "".join(_check_html(c, i) for i, c in enumerate(self.checks))
        return (f'<div class="fre-checks" id="{uid}"><p style="margin-bottom:0.2em"><strong>Check your answers</strong> '
                f'(the solutions below explain them)</p>{body}<script>{_SCRIPT % {"id": uid}}</script></div>')


def answer_checks(*checks: Numeric | Choice) -> AnswerChecks:
    """An answer box per exercise, checked in the page; see the module docstring."""
    return AnswerChecks(checks)
