"""The exercise checkers (fasterrcnn_edu.exercises): right answers pass, typical wrong ones are caught and explained."""
from __future__ import annotations

import pytest
import torch

from fasterrcnn_edu import exercises
from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.labeling import label_anchors
from fasterrcnn_edu.nms import nms, nms_readable
from fasterrcnn_edu.roi_heads import pool_rois, roi_pool_readable


# --- right answers -----------------------------------------------------------------------------
def package_labels(anchors, gt_boxes, fg_iou, bg_iou):
    if len(gt_boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.long)
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    return label_anchors(anchors, gt_boxes[None], valid, fg_iou=fg_iou, bg_iou=bg_iou).labels[0]


def torchvision_roi_pool(features, roi, output_size, spatial_scale):
    rois = torch.cat([torch.zeros(1), roi])[None]
    return pool_rois(features[None], rois, output_size, spatial_scale)[0]


@pytest.mark.parametrize("name, fn", [
    ("iou", box_iou),
    ("label_anchors", package_labels),
    ("nms", nms_readable),
    ("nms", lambda b, s, t: nms(b, s, t)),                     # torchvision's kernel agrees too
    ("roi_max_pool", torchvision_roi_pool),
])
def test_package_functions_pass(name, fn, capsys):
    result = exercises.check(name, fn)
    assert result.ok and bool(result), result
    assert result.passed == result.total == len(exercises.cases(name))
    assert capsys.readouterr().out.strip() == f"{name}: all {result.total} cases pass"


# --- the book's solutions: tests/test_book_exercises.py runs the hidden solution cells of chapters 1-8 and checks
# them, tests/test_exercise_checkers.py the capstone's (read from the chapter by tests/book_solutions.py) ---


# --- wrong answers ------------------------------------------------------------------------------
def iou_without_clamp(a, b):
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).prod(-1)                                 # negative sides multiply to a positive area
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def iou_transposed(a, b):
    return box_iou(b, a)


def labels_without_rule_1(anchors, gt_boxes, fg_iou, bg_iou):
    if len(gt_boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.long)
    best = box_iou(anchors, gt_boxes).max(dim=1).values
    labels = torch.full((len(anchors),), -1)
    labels[best < bg_iou] = 0
    labels[best > fg_iou] = 1
    return labels


def labels_with_argmax(anchors, gt_boxes, fg_iou, bg_iou):
    """Rule 1 with argmax: only the first of tied best anchors becomes positive."""
    labels = labels_without_rule_1(anchors, gt_boxes, fg_iou, bg_iou)
    if len(gt_boxes):
        iou = box_iou(anchors, gt_boxes)
        labels[iou.argmax(dim=0)[iou.max(dim=0).values > 0]] = 1
    return labels


def nms_greater_equal(boxes, scores, threshold):
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[~(box_iou(boxes[best][None], boxes[order])[0] >= threshold)]
    return torch.tensor(keep, dtype=torch.long)


def nms_unstable_ties(boxes, scores, threshold):
    """Ties broken towards the higher index."""
    flipped = nms_readable(boxes.flip(0), scores.flip(0), threshold)
    return len(boxes) - 1 - flipped


def roi_pool_round_half_even(features, roi, output_size, spatial_scale):
    """Snaps the RoI with torch.round (halves to even) instead of C's round (halves away from zero)."""
    snapped = torch.round(roi * spatial_scale)
    # shift the RoI so that the package's rounding gives the same snapped cells at scale 1
    return roi_pool_readable(features[None], torch.cat([torch.zeros(1), snapped])[None], output_size, 1.0)[0]


def roi_pool_exclusive_size(features, roi, output_size, spatial_scale):
    """Treats the snapped RoI as end - start cells wide (one cell short on each axis)."""
    snapped = torch.sign(roi * spatial_scale) * torch.floor((roi * spatial_scale).abs() + 0.5)
    snapped[2:] -= 1
    snapped[2:] = torch.maximum(snapped[2:], snapped[:2])
    return roi_pool_readable(features[None], torch.cat([torch.zeros(1), snapped])[None], output_size, 1.0)[0]


@pytest.mark.parametrize("name, fn, words", [
    ("iou", iou_without_clamp, "clamp"),
    ("iou", iou_transposed, "shape"),
    ("label_anchors", labels_without_rule_1, "rule 1"),
    ("label_anchors", labels_with_argmax, "every"),
    ("nms", nms_greater_equal, "greater than"),
    ("nms", nms_unstable_ties, "stable"),
    ("roi_max_pool", roi_pool_round_half_even, "half away from zero"),
    ("roi_max_pool", roi_pool_exclusive_size, "inclusive"),
])
def test_wrong_implementations_are_caught(name, fn, words):
    result = exercises.check(name, fn, verbose=False)
    assert not result.ok and not result
    assert result.passed < result.total
    assert "differs" in repr(result) and words in repr(result), repr(result)


def test_stub_and_crash_are_explained():
    def stub(*args):
        raise NotImplementedError

    result = exercises.check("nms", stub, verbose=False)
    assert not result and "not written yet" in repr(result)

    result = exercises.check("iou", lambda a, b: a @ b, verbose=False)      # (N, 4) @ (M, 4) fails
    assert not result and "raised RuntimeError" in repr(result)


def test_unknown_exercise():
    with pytest.raises(ValueError, match="unknown exercise"):
        exercises.check("anchors", lambda: None)
