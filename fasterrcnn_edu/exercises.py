"""Checkers for the book's "write it yourself" exercises.

`check(name, fn)` runs the reader's function `fn` on a fixed list of cases (hand-made edge cases
and seeded random ones) and compares it with the package's own implementation:

- ``"iou"``: ``fn(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)``, against `fasterrcnn_edu.boxes.box_iou`;
- ``"label_anchors"``: ``fn(anchors (A, 4), gt_boxes (G, 4), fg_iou, bg_iou) -> (A,)`` labels
  1 / 0 / -1, against `fasterrcnn_edu.labeling.label_anchors` (one image, no border rule);
- ``"nms"``: ``fn(boxes (N, 4), scores (N,), iou_threshold) -> (K,)`` kept indices, best first,
  against `fasterrcnn_edu.nms.nms_readable`;
- ``"roi_max_pool"``: ``fn(features (C, H, W), roi (4,), output_size, spatial_scale) -> (C, P, P)``,
  against `fasterrcnn_edu.roi_heads.roi_pool_readable`.

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates, as everywhere in the package. The
result says, in plain words, what the first case that differs was, what was expected and what
the reader's function returned, with a hint for the usual mistake. A function that raises
`NotImplementedError` (the book's stubs) gets a reminder of what to write instead of an error,
so the book builds with the stubs in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.labeling import IGNORED, NEGATIVE, POSITIVE, label_anchors
from fasterrcnn_edu.nms import nms_readable
from fasterrcnn_edu.roi_heads import roi_pool_bins, roi_pool_readable

__all__ = ["CheckResult", "Case", "check", "cases"]


@dataclass
class Case:
    """One input of an exercise: a short description, the arguments, and a hint shown if it fails."""

    description: str
    args: tuple
    hint: str = ""


@dataclass
class CheckResult:
    """What `check` found. True (in an `if`) when every case passes."""

    name: str
    passed: int
    total: int
    message: str

    @property
    def ok(self) -> bool:
        return self.passed == self.total

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _boxes(generator: torch.Generator, n: int, size: float = 100.0, max_side: float = 60.0) -> Tensor:
    top_left = torch.rand(n, 2, generator=generator) * size
    sides = 1.0 + torch.rand(n, 2, generator=generator) * (max_side - 1.0)
    return torch.cat([top_left, top_left + sides], dim=1).round(decimals=1)


def _t(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _iou_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [
        Case("two 10×10 boxes offset by 5 pixels (the chapter's example, IoU 1/3)",
             (_t([[0, 0, 10, 10]]), _t([[5, 0, 15, 10]]))),
        Case("a box with itself (IoU 1)", (_t([[2, 3, 12, 20]]), _t([[2, 3, 12, 20]]))),
        Case("one box inside another", (_t([[0, 0, 20, 20]]), _t([[5, 5, 10, 10]]))),
        Case("boxes that only touch along an edge (IoU 0)", (_t([[0, 0, 10, 10]]), _t([[10, 0, 20, 10]])),
             "the intersection of touching boxes has width 0."),
        Case("boxes apart in x and in y (IoU 0)", (_t([[0, 0, 10, 10]]), _t([[20, 30, 30, 40]])),
             "clamp the intersection's width and height at 0 (`.clamp(min=0)`) before multiplying: two negative "
             "sides multiply to a positive 'area'."),
        Case("boxes apart in x only (IoU 0)", (_t([[0, 0, 10, 10]]), _t([[20, 0, 30, 10]])),
             "clamp the intersection's width and height at 0 (`.clamp(min=0)`)."),
        Case("a degenerate box (zero width) against a normal box (IoU 0)", (_t([[5, 0, 5, 10]]), _t([[0, 0, 10, 10]]))),
        Case("non-square boxes: the result is (N, M), not (M, N)", (_boxes(g, 3), _boxes(g, 5)),
             "row i, column j must be the IoU of boxes1[i] and boxes2[j]."),
        Case("no boxes on one side: an empty (0, 4) input gives a (0, M) result", (torch.zeros(0, 4), _boxes(g, 3))),
        Case("20 × 30 random boxes", (_boxes(g, 20), _boxes(g, 30))),
    ]


def _label_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    grid = _t([[x, y, x + 32, y + 32] for y in range(0, 96, 16) for x in range(0, 96, 16)])     # 36 anchors
    return [
        Case("one object that matches an anchor exactly", (grid, _t([[16, 16, 48, 48]]), 0.7, 0.3)),
        Case("a thin object no anchor overlaps by 0.7: its best anchor is still positive (rule 1)",
             (grid, _t([[40, 10, 46, 80]]), 0.7, 0.3),
             "rule 1: every anchor whose IoU with a ground-truth box equals that box's highest IoU is positive, "
             "whatever that IoU (ties included)."),
        Case("two anchors tie for an object's best IoU: both are positive",
             (_t([[0, 0, 20, 20], [20, 0, 40, 20], [60, 60, 80, 80]]), _t([[10, 0, 30, 20]]), 0.7, 0.3),
             "rule 1 takes *every* anchor whose IoU equals the object's best, not just the first (`argmax`)."),
        Case("the thresholds are strict: an anchor at IoU exactly 0.5 with fg_iou=0.5 is not positive by rule 2",
             (_t([[0, 0, 10, 10], [0, 0, 10, 20]]), _t([[0, 0, 10, 10]]), 0.5, 0.3),
             "positive means IoU > fg_iou, negative IoU < bg_iou; an IoU equal to a threshold is neither."),
        Case("an object that no anchor touches (best IoU 0) gives no positive",
             (grid[:4], _t([[200, 200, 230, 230]]), 0.7, 0.3),
             "rule 1 applies only to anchors that overlap the object (best IoU > 0)."),
        Case("an image without objects: every anchor is negative", (grid, torch.zeros(0, 4), 0.7, 0.3),
             "with no ground truth every anchor's best IoU is 0 < bg_iou."),
        Case("anchors between the thresholds are ignored (-1)", (grid, _t([[8, 8, 56, 56]]), 0.7, 0.3)),
        Case("three random objects over 36 anchors", (grid, _boxes(g, 3, size=70, max_side=40), 0.7, 0.3)),
        Case("five random objects, thresholds 0.5 / 0.4", (grid, _boxes(g, 5, size=70, max_side=40), 0.5, 0.4)),
    ]


def _nms_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    random_boxes = _boxes(g, 60, size=80, max_side=40)
    random_scores = torch.rand(60, generator=g)
    return [
        Case("two overlapping boxes and one apart", (_t([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]),
                                                     torch.tensor([0.9, 0.8, 0.7]), 0.5)),
        Case("the result is sorted by score, best first", (_t([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
                                                           torch.tensor([0.2, 0.9, 0.5]), 0.5),
             "return the kept indices in order of decreasing score."),
        Case("an IoU exactly equal to the threshold does not suppress (IoU 0.5, threshold 0.5)",
             (_t([[0, 0, 10, 10], [0, 0, 10, 20]]), torch.tensor([0.9, 0.8]), 0.5),
             "suppress a box only if its IoU with a kept box is *greater than* the threshold (`>`, not `>=`)."),
        Case("equal scores: the lower index wins", (_t([[0, 0, 10, 10], [0, 0, 10, 10]]), torch.tensor([0.5, 0.5]), 0.5),
             "sort with a stable sort (`torch.sort(scores, descending=True, stable=True)`) so ties keep index order."),
        Case("a chain: A suppresses B, so B cannot suppress C",
             (_t([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]), torch.tensor([0.9, 0.8, 0.7]), 0.3),
             "a suppressed box is removed at once: it never suppresses anything itself."),
        Case("no boxes at all: an empty int64 tensor", (torch.zeros(0, 4), torch.zeros(0), 0.5)),
        Case("one box", (_t([[0, 0, 10, 10]]), torch.tensor([0.3]), 0.5)),
        Case("60 random boxes at threshold 0.7 (the RPN's)", (random_boxes, random_scores, 0.7)),
        Case("60 random boxes at threshold 0.3 (the detector's)", (random_boxes, random_scores, 0.3)),
    ]


def _roi_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    chapter_map = torch.randperm(64, generator=torch.Generator().manual_seed(0)).reshape(1, 8, 8).float()
    features = torch.randn(3, 12, 16, generator=g)
    rounding = ("snap the RoI to the feature grid by rounding x·spatial_scale *half away from zero* (C's round: "
                "2.5 → 3); `torch.round` rounds halves to even (2.5 → 2).")
    inclusive = ("the snapped RoI's size is inclusive: end − start + 1 cells; bin p covers cells "
                 "floor(p·size/P) … ceil((p+1)·size/P) − 1, offset by the start and clipped to the map.")
    return [
        Case("the chapter's 8×8 example: columns 1–5 and rows 2–7 pooled to 2×2 (60, 61, 62, 57)",
             (chapter_map, torch.tensor([1.0, 2.0, 5.0, 7.0]), 2, 1.0), inclusive),
        Case("a RoI over the whole map, 7×7 output", (features, torch.tensor([0.0, 0.0, 15.0, 11.0]), 7, 1.0), inclusive),
        Case("image coordinates: spatial scale 1/16", (features, torch.tensor([16.0, 32.0, 160.0, 150.0]), 3, 1 / 16),
             "multiply the RoI by spatial_scale before snapping it to the grid."),
        Case("coordinates on half cells (x · scale = 2.5 must round to 3)",
             (features, torch.tensor([40.0, 40.0, 120.0, 104.0]), 2, 1 / 16), rounding),
        Case("a RoI smaller than the output grid: bins repeat cells", (features, torch.tensor([3.0, 4.0, 5.0, 5.0]), 4, 1.0),
             inclusive),
        Case("a RoI partly outside the map: bins are clipped, empty bins give 0",
             (features, torch.tensor([12.0, 8.0, 30.0, 20.0]), 4, 1.0),
             "clip every bin to the map; a bin with no cell left gives 0."),
        Case("a random RoI, 7×7 output", (features, torch.tensor([18.3, 7.9, 201.4, 170.2]), 7, 1 / 16), inclusive),
    ]


def _iou_reference(boxes1, boxes2):
    return box_iou(boxes1, boxes2)


def _label_reference(anchors, gt_boxes, fg_iou, bg_iou):
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    gt = gt_boxes[None]
    if len(gt_boxes) == 0:
        gt, valid = torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool)
    return label_anchors(anchors, gt, valid, fg_iou=fg_iou, bg_iou=bg_iou).labels[0].long()


def _nms_reference(boxes, scores, iou_threshold):
    return nms_readable(boxes, scores, iou_threshold)


def _roi_reference(features, roi, output_size, spatial_scale):
    rois = torch.cat([torch.zeros(1), roi]).reshape(1, 5)
    return roi_pool_readable(features[None], rois, output_size, spatial_scale)[0]


# ---------------------------------------------------------------------------------------------
# Explaining a difference
# ---------------------------------------------------------------------------------------------
def _fmt(x: Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" for v in x.tolist()) + "]"


def _compare_iou(case: Case, expected: Tensor, got: Tensor) -> str | None:
    if got.shape != expected.shape:
        return f"expected a result of shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    bad = ~torch.isclose(got.float(), expected, atol=1e-5, equal_nan=True)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        a, b = case.args[0][i], case.args[1][j]
        return (f"for box {_fmt(a)} (row {i}) and box {_fmt(b)} (column {j}) the IoU is {expected[i, j]:.4f}, "
                f"your function gives {got[i, j].item():.4f}")
    return None


_LABEL_NAMES = {POSITIVE: "positive (1)", NEGATIVE: "negative (0)", IGNORED: "ignored (-1)"}


def _compare_labels(case: Case, expected: Tensor, got: Tensor) -> str | None:
    if got.shape != expected.shape:
        return f"expected {len(expected)} labels, one per anchor, got shape {tuple(got.shape)}"
    bad = got.long() != expected
    if bad.any():
        a = int(bad.nonzero()[0])
        anchors, gt = case.args[0], case.args[1]
        best = box_iou(anchors[a:a + 1], gt).max().item() if len(gt) else 0.0
        name = lambda v: _LABEL_NAMES.get(int(v), f"{int(v)} (not one of 1, 0, -1)")  # noqa: E731
        return (f"anchor {a} {_fmt(anchors[a])} (best IoU {best:.3f} with the ground truth) should be "
                f"{name(expected[a])}, your function says {name(got[a])}")
    return None


def _compare_nms(case: Case, expected: Tensor, got: Tensor) -> str | None:
    got_list, exp_list = [int(v) for v in got.flatten().tolist()], expected.tolist()
    if got_list == exp_list:
        return None
    boxes, scores, threshold = case.args
    missing = [i for i in exp_list if i not in got_list]
    extra = [i for i in got_list if i not in exp_list]
    text = f"expected to keep {exp_list}, your function keeps {got_list}"
    if missing:
        i = missing[0]
        text += f"; box {i} (score {scores[i]:.2f}) should be kept"
        before = [k for k in exp_list[:exp_list.index(i)]]
        if before:
            overlap = box_iou(boxes[i:i + 1], boxes[before]).max().item()
            text += f": its largest IoU with the boxes kept before it is {overlap:.3f}, not above {threshold}"
    elif extra:
        i = extra[0]
        kept_better = [k for k in exp_list if scores[k] >= scores[i] and k != i]
        overlap = box_iou(boxes[i:i + 1], boxes[kept_better]).max().item() if kept_better else 0.0
        text += f"; box {i} (score {scores[i]:.2f}) should be suppressed: IoU {overlap:.3f} > {threshold} with a better kept box"
    else:
        text += "; the same boxes, in a different order"
    return text


def _compare_roi(case: Case, expected: Tensor, got: Tensor) -> str | None:
    if got.shape != expected.shape:
        return f"expected a result of shape {tuple(expected.shape)} (C, P, P), got {tuple(got.shape)}"
    bad = ~torch.isclose(got.float(), expected, atol=1e-5)
    if bad.any():
        c, i, j = (int(v) for v in bad.nonzero()[0])
        features, roi, size, scale = case.args
        y0, y1, x0, x1 = roi_pool_bins(roi[None], size, scale, features.shape[1], features.shape[2])
        cells = (f"rows {int(y0[0, i])}…{int(y1[0, i]) - 1}, columns {int(x0[0, j])}…{int(x1[0, j]) - 1}"
                 if y1[0, i] > y0[0, i] and x1[0, j] > x0[0, j] else "no cell (an empty bin)")
        return (f"bin (row {i}, column {j}) of channel {c} should be {expected[c, i, j]:g} (the bin covers "
                f"feature {cells}), your function gives {got[c, i, j].item():g}")
    return None


@dataclass
class _Exercise:
    cases: Callable[[], list[Case]]
    reference: Callable
    compare: Callable[[Case, Tensor, Tensor], str | None]
    signature: str


EXERCISES: dict[str, _Exercise] = {
    "iou": _Exercise(_iou_cases, _iou_reference, _compare_iou, "iou(boxes1, boxes2) -> (N, M) IoU matrix"),
    "label_anchors": _Exercise(_label_cases, _label_reference, _compare_labels,
                               "label_anchors(anchors, gt_boxes, fg_iou, bg_iou) -> (A,) labels 1 / 0 / -1"),
    "nms": _Exercise(_nms_cases, _nms_reference, _compare_nms,
                     "nms(boxes, scores, iou_threshold) -> kept indices, best first"),
    "roi_max_pool": _Exercise(_roi_cases, _roi_reference, _compare_roi,
                              "roi_max_pool(features, roi, output_size, spatial_scale) -> (C, P, P)"),
}


def cases(name: str) -> list[Case]:
    """The inputs `check(name, ...)` uses, to try one by hand."""
    return _exercise(name).cases()


def _exercise(name: str) -> _Exercise:
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {sorted(EXERCISES)}")
    return EXERCISES[name]


def check(name: str, fn: Callable, verbose: bool = True) -> CheckResult:
    """Test the reader's `fn` against the package on every case of exercise `name`; stop at the first difference.

    Prints the result (unless `verbose=False`) and returns it: "all N cases pass", or which case
    differs, what was expected, what `fn` returned and a hint.
    """
    exercise = _exercise(name)
    all_cases = exercise.cases()
    total = len(all_cases)
    result = None
    for index, case in enumerate(all_cases):
        expected = exercise.reference(*[a.clone() if torch.is_tensor(a) else a for a in case.args])
        try:
            got = fn(*[a.clone() if torch.is_tensor(a) else a for a in case.args])
        except NotImplementedError:
            result = CheckResult(name, 0, total, f"{name}: not written yet. Replace `raise NotImplementedError` by "
                                                 f"your code ({exercise.signature}), then run this cell again.")
            break
        except Exception as error:  # the reader's code may fail in any way: say where and how
            result = CheckResult(name, index, total, f"{name}: case {index + 1} of {total} ({case.description}) "
                                                     f"raised {type(error).__name__}: {error}")
            break
        if not torch.is_tensor(got):
            try:
                got = torch.as_tensor(got)
            except Exception:
                result = CheckResult(name, index, total, f"{name}: case {index + 1} of {total} ({case.description}): "
                                                         f"expected a tensor, got {type(got).__name__}")
                break
        difference = exercise.compare(case, expected, got)
        if difference is not None:
            hint = f"\n  hint: {case.hint}" if case.hint else ""
            result = CheckResult(name, index, total, f"{name}: case {index + 1} of {total} differs "
                                                     f"({case.description}):\n  {difference}{hint}")
            break
    if result is None:
        result = CheckResult(name, total, total, f"{name}: all {total} cases pass")
    if verbose:
        print(result)
    return result
