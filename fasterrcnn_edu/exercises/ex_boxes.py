"""Exercises on boxes and anchors: IoU, base and grid anchors, anchor labeling, the 256-anchor mini-batch."""
from __future__ import annotations

import torch
from torch import Tensor

from fasterrcnn_edu.anchors import base_anchors, grid_anchors
from fasterrcnn_edu.boxes import box_area, box_iou
from fasterrcnn_edu.exercises.core import Case, Exercise, as_tensor, boxes, fmt, random_boxes, tensor_difference
from fasterrcnn_edu.labeling import IGNORED, NEGATIVE, POSITIVE, label_anchors, sample_balanced


# ---------------------------------------------------------------------------------------------
# IoU
# ---------------------------------------------------------------------------------------------
def iou_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    clamp = ("clamp the intersection's width and height at 0 (`.clamp(min=0)`) before multiplying: two negative "
             "sides multiply to a positive 'area'.")
    return [
        Case("two 10×10 boxes offset by 5 pixels (the chapter's example, IoU 1/3)",
             (boxes([[0, 0, 10, 10]]), boxes([[5, 0, 15, 10]]))),
        Case("a box with itself (IoU 1)", (boxes([[2, 3, 12, 20]]), boxes([[2, 3, 12, 20]]))),
        Case("one box inside another", (boxes([[0, 0, 20, 20]]), boxes([[5, 5, 10, 10]]))),
        Case("boxes that only touch along an edge (IoU 0)", (boxes([[0, 0, 10, 10]]), boxes([[10, 0, 20, 10]])),
             "the intersection of touching boxes has width 0."),
        Case("boxes apart in x and in y (IoU 0)", (boxes([[0, 0, 10, 10]]), boxes([[20, 30, 30, 40]])), clamp),
        Case("boxes apart in x only (IoU 0)", (boxes([[0, 0, 10, 10]]), boxes([[20, 0, 30, 10]])), clamp),
        Case("a degenerate box (zero width) against a normal box (IoU 0)",
             (boxes([[5, 0, 5, 10]]), boxes([[0, 0, 10, 10]]))),
        Case("non-square boxes: the result is (N, M), not (M, N)", (random_boxes(g, 3), random_boxes(g, 5)),
             "row i, column j must be the IoU of boxes1[i] and boxes2[j]."),
        Case("boxes crossing the image boundary (negative coordinates)",
             (boxes([[-20, -10, 10, 10], [-5, -5, 5, 5]]), boxes([[-10, -10, 0, 0], [0, 0, 20, 20]]))),
        Case("no boxes on one side: an empty (0, 4) input gives a (0, M) result",
             (torch.zeros(0, 4), random_boxes(g, 3))),
        Case("no boxes on either side: a (0, 0) result", (torch.zeros(0, 4), torch.zeros(0, 4))),
        Case("20 × 30 random boxes", (random_boxes(g, 20), random_boxes(g, 30))),
    ]


def iou_reference(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return box_iou(boxes1, boxes2)


def compare_iou(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "an (N, M) tensor of IoUs",
                                            " (N, M): one row per box of boxes1", atol=1e-5)
    if problem or where is None:
        return problem
    i, j = where
    a, b = case.args[0][i], case.args[1][j]
    inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod().item()
    union = box_area(a).item() + box_area(b).item() - inter
    value = got[i, j].item()
    text = (f"for box {fmt(a)} (row {i}) and box {fmt(b)} (column {j}) the intersection is {inter:g} and the union "
            f"{union:g}, so the IoU is {expected[i, j].item():.4f}; your function gives {value:.4f}")
    if inter > 0 and abs(value - inter) < 1e-3 * max(1.0, inter):
        text += ". That is the intersection alone: divide it by the union, area1 + area2 − intersection"
    elif inter > 0 and abs(value - inter / box_area(a).item()) < 1e-4:
        text += ". That is the intersection over the first box's area: divide by the union instead"
    return text


# ---------------------------------------------------------------------------------------------
# Base anchors and their grid
# ---------------------------------------------------------------------------------------------
def base_anchor_cases() -> list[Case]:
    return [
        Case("the paper's 9 anchors: base 16, ratios (0.5, 1, 2), scales (8, 16, 32)", (16, (0.5, 1.0, 2.0), (8, 16, 32))),
        Case("the book preset's 9 anchors: scales (2, 4, 8)", (16, (0.5, 1.0, 2.0), (2, 4, 8))),
        Case("one ratio, three scales (the reference model's anchors)", (16, (1.0,), (4, 8, 16))),
        Case("extreme ratios 0.25 and 4: four times as wide, four times as tall", (16, (0.25, 4.0), (2,))),
        Case("a 32-pixel stride cell", (32, (0.5, 2.0), (1, 3))),
    ]


def base_anchor_reference(base_size, ratios, scales) -> Tensor:
    return base_anchors(base_size, ratios, scales)


def _describe(box: Tensor) -> str:
    w, h = (box[2] - box[0]).item(), (box[3] - box[1]).item()
    return f"{fmt(box)}: {w:.4g} wide, {h:.4g} tall, centre ({(box[0] + box[2]).item() / 2:.4g}, {(box[1] + box[3]).item() / 2:.4g})"


def compare_base_anchors(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "a (k, 4) tensor of anchors",
                                            " (k, 4), k = len(ratios) × len(scales)")
    if problem or where is None:
        return problem
    a = where[0]
    base_size, ratios, scales = case.args
    text = (f"anchor {a} (ratio {ratios[a // len(scales)]:g}, scale {scales[a % len(scales)]:g}) should be "
            f"{_describe(expected[a])}; yours is {_describe(got[a])}")
    g, e = got[a], expected[a]
    if torch.allclose(g[[1, 0, 3, 2]], e, atol=1e-3):
        text += (". Width and height are swapped: the ratio is height / width, so a ratio-2 anchor is twice as tall "
                 "as wide (h = side·√ratio, w = side/√ratio)")
    elif torch.allclose(g[2:] - g[:2], e[2:] - e[:2], atol=1e-3):
        text += f". The size is right but not the centre: centre every anchor on the first stride cell, ({base_size / 2:g}, {base_size / 2:g})"
    elif any(torch.allclose(g, row, atol=1e-3) for row in expected):
        text += ". That anchor belongs elsewhere in the list: order them ratio-major (all scales of the first ratio, then the next ratio)"
    return text


def grid_cases() -> list[Case]:
    one = boxes([[-8, -8, 24, 24]])
    nine = base_anchors(16, (0.5, 1.0, 2.0), (2, 4, 8))
    return [
        Case("one anchor on a 2 × 3 map, stride 16", (one, (2, 3), 16)),
        Case("the book's 9 anchors on a 3 × 4 map", (nine, (3, 4), 16),
             "row (y·W + x)·k + a holds anchor a at position (y, x): positions row-major, the k anchors of one "
             "position next to each other."),
        Case("a tall 4 × 1 map: x and y must not be swapped", (nine[:2], (4, 1), 16),
             "position (y, x) shifts the anchor by x·stride horizontally (x1, x2) and y·stride vertically (y1, y2)."),
        Case("a 1 × 1 map: the base anchors themselves", (nine, (1, 1), 16)),
        Case("stride 32", (nine[:3], (2, 2), 32)),
        Case("an empty map (0 rows): no anchors, shape (0, 4)", (nine, (0, 5), 16)),
    ]


def grid_reference(base, feature_size, stride) -> Tensor:
    return grid_anchors(base, feature_size, stride)


def compare_grid(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "an (H·W·k, 4) tensor of anchors", " (H·W·k, 4)")
    if problem or where is None:
        return problem
    row = where[0]
    base, (height, width), stride = case.args
    k = len(base)
    a, position = row % k, row // k
    y, x = divmod(position, width)
    text = (f"row {row} should be anchor {a} at feature position (y={y}, x={x}), shifted by ({x * stride:g}, "
            f"{y * stride:g}) pixels: {fmt(expected[row])}; yours is {fmt(got[row])}")
    shift = got[row] - base[a]
    if x != y and torch.allclose(shift, torch.tensor([y, x, y, x], dtype=shift.dtype) * stride, atol=1e-3):
        return text + ". x and y are swapped: x (the column) moves x1 and x2, y (the row) moves y1 and y2"
    anchor_major = expected.reshape(-1, k, 4).transpose(0, 1).reshape(-1, 4)
    if torch.allclose(got, anchor_major, atol=1e-3):
        return text + (". Your rows run over the positions for anchor 0 first: keep the k anchors of one position "
                       "together (row (y·W + x)·k + a)")
    return text


# ---------------------------------------------------------------------------------------------
# Anchor labels (§3.1.2) and the 256-anchor mini-batch
# ---------------------------------------------------------------------------------------------
def label_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    grid = boxes([[x, y, x + 32, y + 32] for y in range(0, 96, 16) for x in range(0, 96, 16)])     # 36 anchors
    return [
        Case("one object that matches an anchor exactly", (grid, boxes([[16, 16, 48, 48]]), 0.7, 0.3)),
        Case("a thin object no anchor overlaps by 0.7: its best anchor is still positive (rule 1)",
             (grid, boxes([[40, 10, 46, 80]]), 0.7, 0.3),
             "rule 1: every anchor whose IoU with a ground-truth box equals that box's highest IoU is positive, "
             "whatever that IoU (ties included)."),
        Case("two anchors tie for an object's best IoU: both are positive",
             (boxes([[0, 0, 20, 20], [20, 0, 40, 20], [60, 60, 80, 80]]), boxes([[10, 0, 30, 20]]), 0.7, 0.3),
             "rule 1 takes *every* anchor whose IoU equals the object's best, not just the first (`argmax`)."),
        Case("the thresholds are strict: an anchor at IoU exactly 0.5 with fg_iou=0.5 is not positive by rule 2",
             (boxes([[0, 0, 10, 10], [0, 0, 10, 20]]), boxes([[0, 0, 10, 10]]), 0.5, 0.3),
             "positive means IoU > fg_iou, negative IoU < bg_iou; an IoU equal to a threshold is neither."),
        Case("an object that no anchor touches (best IoU 0) gives no positive",
             (grid[:4], boxes([[200, 200, 230, 230]]), 0.7, 0.3),
             "rule 1 applies only to anchors that overlap the object (best IoU > 0)."),
        Case("a degenerate object (zero height) overlaps nothing: no positive", (grid, boxes([[10, 10, 40, 10]]), 0.7, 0.3),
             "rule 1 applies only to anchors that overlap the object (best IoU > 0)."),
        Case("an image without objects: every anchor is negative", (grid, torch.zeros(0, 4), 0.7, 0.3),
             "with no ground truth every anchor's best IoU is 0 < bg_iou."),
        Case("anchors between the thresholds are ignored (-1)", (grid, boxes([[8, 8, 56, 56]]), 0.7, 0.3)),
        Case("three random objects over 36 anchors", (grid, random_boxes(g, 3, size=70, max_side=40), 0.7, 0.3)),
        Case("five random objects, thresholds 0.5 / 0.4", (grid, random_boxes(g, 5, size=70, max_side=40), 0.5, 0.4)),
    ]


def label_reference(anchors: Tensor, gt_boxes: Tensor, fg_iou: float, bg_iou: float) -> Tensor:
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    gt = gt_boxes[None]
    if len(gt_boxes) == 0:
        gt, valid = torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool)
    return label_anchors(anchors, gt, valid, fg_iou=fg_iou, bg_iou=bg_iou).labels[0].long()


LABEL_NAMES = {POSITIVE: "positive (1)", NEGATIVE: "negative (0)", IGNORED: "ignored (-1)"}


def _label_name(value) -> str:
    return LABEL_NAMES.get(int(value), f"{int(value)} (not one of 1, 0, -1)")


def compare_labels(case: Case, expected: Tensor, got) -> str | None:
    got, problem = as_tensor(got, "an (A,) tensor of labels")
    if problem:
        return problem
    if got.shape != expected.shape:
        return f"expected {len(expected)} labels, one per anchor, got shape {tuple(got.shape)}"
    if got.is_floating_point() and not torch.isfinite(got).all():
        return "your labels contain NaN or infinity; every label is 1, 0 or -1"
    bad = got.long() != expected
    if not bad.any():
        return None
    a = int(bad.nonzero()[0])
    anchors, gt = case.args[0], case.args[1]
    best = box_iou(anchors[a:a + 1], gt).max().item() if len(gt) else 0.0
    return (f"anchor {a} {fmt(anchors[a])} (best IoU {best:.3f} with the ground truth) should be "
            f"{_label_name(expected[a])}, your function says {_label_name(got[a])}")


def sample_cases() -> list[Case]:
    def labels(positives: int, negatives: int, ignored: int = 0, seed: int = 0) -> Tensor:
        values = torch.tensor([POSITIVE] * positives + [NEGATIVE] * negatives + [IGNORED] * ignored)
        return values[torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))]

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)
    return [
        Case("plenty of both (300 positives, 2000 negatives): 128 + 128", (labels(300, 2000, 500), 256, 0.5, gen(0)),
             "take at most batch_size · positive_fraction positives, then fill the batch with negatives."),
        Case("few positives (10): all 10, and 246 negatives fill the batch", (labels(10, 2000, 100), 256, 0.5, gen(1)),
             "when there are fewer positives than half the batch, pad it with negatives up to batch_size."),
        Case("no positive: 256 negatives", (labels(0, 1000), 256, 0.5, gen(2))),
        Case("fewer labelled anchors than the batch (5 + 20): all of them", (labels(5, 20, 30), 256, 0.5, gen(3))),
        Case("ignored anchors (-1) are never sampled", (labels(40, 40, 2000), 64, 0.5, gen(4)),
             "sample positives among label 1 and negatives among label 0 only."),
        Case("the Fast R-CNN setting: 64 with 25 % foreground", (labels(100, 500), 64, 0.25, gen(5))),
        Case("no anchors at all", (torch.zeros(0, dtype=torch.long), 256, 0.5, gen(6))),
    ]


def sample_reference(labels: Tensor, batch_size: int, positive_fraction: float, generator) -> tuple[Tensor, Tensor]:
    pos, neg = sample_balanced((labels == POSITIVE)[None], (labels == NEGATIVE)[None], batch_size, positive_fraction,
                               generator)
    return pos[0], neg[0]


def _masks(got, n: int) -> tuple[tuple[Tensor, Tensor] | None, str | None]:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return None, "expected two boolean masks (sampled_positive, sampled_negative), one entry per anchor"
    out = []
    for name, mask in zip(("sampled_positive", "sampled_negative"), got):
        mask, problem = as_tensor(mask, f"a boolean mask {name}")
        if problem:
            return None, f"{name}: {problem}"
        if mask.shape != (n,) or mask.dtype != torch.bool:
            return None, f"{name} should be a ({n},) bool mask, got shape {tuple(mask.shape)} and dtype {mask.dtype}"
        out.append(mask)
    return (out[0], out[1]), None


def compare_sample(case: Case, expected: tuple[Tensor, Tensor], got) -> str | None:
    labels, batch_size, fraction, _ = case.args
    masks, problem = _masks(got, len(labels))
    if problem:
        return problem
    pos, neg = masks
    if (pos & (labels != POSITIVE)).any():
        a = int((pos & (labels != POSITIVE)).nonzero()[0])
        return f"anchor {a} is sampled as a positive but its label is {_label_name(labels[a])}"
    if (neg & (labels != NEGATIVE)).any():
        a = int((neg & (labels != NEGATIVE)).nonzero()[0])
        return f"anchor {a} is sampled as a negative but its label is {_label_name(labels[a])}"
    want_pos, want_neg = int(expected[0].sum()), int(expected[1].sum())
    if int(pos.sum()) != want_pos or int(neg.sum()) != want_neg:
        return (f"with {int((labels == POSITIVE).sum())} positive and {int((labels == NEGATIVE).sum())} negative "
                f"anchors, a batch of {batch_size} with positive fraction {fraction:g} has {want_pos} positives and "
                f"{want_neg} negatives; yours has {int(pos.sum())} and {int(neg.sum())}")
    return None


def probe_sampler(call) -> str | None:
    """The mini-batch must be random, and drawn from the generator given (so training is reproducible)."""
    labels = torch.tensor([POSITIVE] * 300 + [NEGATIVE] * 2000)
    runs = []
    for seed in (0, 0, 1):
        got = call((labels.clone(), 256, 0.5, torch.Generator().manual_seed(seed)))
        if isinstance(got, str):
            return got
        masks, problem = _masks(got, len(labels))
        if problem:
            return problem
        runs.append(masks)
    if not all(torch.equal(a, b) for a, b in zip(runs[0], runs[1])):
        return ("two calls with generators in the same state gave different mini-batches: draw the random numbers "
                "from the `generator` argument (`torch.randperm(n, generator=generator)`), so training is reproducible")
    if all(torch.equal(a, b) for a, b in zip(runs[0], runs[2])):
        return ("generators seeded 0 and 1 gave the same mini-batch: the anchors must be a random sample "
                "(e.g. the first 128 positives is not one)")
    return None


EXERCISES = {
    "iou": Exercise(iou_cases, iou_reference, compare_iou, "iou(boxes1, boxes2) -> (N, M) IoU matrix"),
    "base_anchors": Exercise(base_anchor_cases, base_anchor_reference, compare_base_anchors,
                             "base_anchors(base_size, ratios, scales) -> (k, 4) anchors, ratio-major"),
    "grid_anchors": Exercise(grid_cases, grid_reference, compare_grid,
                             "grid_anchors(base (k, 4), feature_size (H, W), stride) -> (H·W·k, 4)"),
    "label_anchors": Exercise(label_cases, label_reference, compare_labels,
                              "label_anchors(anchors, gt_boxes, fg_iou, bg_iou) -> (A,) labels 1 / 0 / -1"),
    "sample_anchors": Exercise(sample_cases, sample_reference, compare_sample,
                               "sample_anchors(labels (A,), batch_size, positive_fraction, generator) -> "
                               "(sampled_positive (A,) bool, sampled_negative (A,) bool)", probe_sampler),
}
