"""Issue 25, class 10: every public function that takes boxes checks that they are (N, 4) (or (..., 4)).

`nms_readable` read (N, 5) boxes, say (x1, y1, x2, y2, score), as their first four columns, and
the evaluation and drawing functions reshaped any box tensor to (-1, 4), so that four (N, 5)
boxes became five wrong ones. Each call below gets boxes of a wrong shape and must say so,
naming the argument.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from fasterrcnn_edu import boxes as B
from fasterrcnn_edu import nms as N
from fasterrcnn_edu.error_analysis import classify_image
from fasterrcnn_edu.evaluation import evaluate_coco, evaluate_voc, recall_vs_iou
from fasterrcnn_edu.labeling import inside_image, label_anchors, match_anchors, pad_ground_truth
from fasterrcnn_edu.proposals import generate_proposals, proposal_steps
from fasterrcnn_edu.roi_heads import rois_with_batch_index, sample_rois
from fasterrcnn_edu.transforms import hflip_boxes
from fasterrcnn_edu import viz

FIVE = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9], [1.0, 1.0, 11.0, 11.0, 0.8],
                     [20.0, 20.0, 30.0, 30.0, 0.7], [21.0, 21.0, 31.0, 31.0, 0.6]])     # (4, 5): 20 numbers
GOOD = FIVE[:, :4]
SCORES = FIVE[:, 4]
LABELS = torch.tensor([1, 1, 2, 2])


def _detections(boxes):
    return [{"boxes": boxes, "scores": SCORES, "labels": LABELS}]


def _targets(boxes):
    return [{"boxes": boxes, "labels": LABELS, "difficult": torch.zeros(4, dtype=torch.bool)}]


CALLS = {
    "nms_readable": lambda b: N.nms_readable(b, SCORES, 0.5),
    "nms_steps": lambda b: list(N.nms_steps(b, SCORES, 0.5)),
    "nms": lambda b: N.nms(b, SCORES, 0.5),
    "nms_top": lambda b: N.nms_top(b, SCORES, 0.5, 1),
    "batched_nms": lambda b: N.batched_nms(b, SCORES, LABELS, 0.5),
    "batched_nms_readable": lambda b: N.batched_nms_readable(b, SCORES, LABELS, 0.5),
    "box_area": lambda b: B.box_area(b),
    "box_iou": lambda b: B.box_iou(b, GOOD),
    "box_iou (second)": lambda b: B.box_iou(GOOD, b),
    "encode": lambda b: B.encode(GOOD, b),
    "decode": lambda b: B.decode(b, torch.zeros(4, 4)),
    "clip_boxes": lambda b: B.clip_boxes(b, (15, 15)),
    "small_box_mask": lambda b: B.small_box_mask(b, 2.0),
    "remove_small_boxes": lambda b: B.remove_small_boxes(b, 2.0),
    "hflip_boxes": lambda b: hflip_boxes(b, 40),
    "evaluate_voc (detections)": lambda b: evaluate_voc(_detections(b), _targets(GOOD), 3),
    "evaluate_voc (targets)": lambda b: evaluate_voc(_detections(GOOD), _targets(b), 3),
    "evaluate_coco": lambda b: evaluate_coco(_detections(b), _targets(GOOD), ["a", "b"]),
    "recall_vs_iou": lambda b: recall_vs_iou([b], [GOOD], 10),
    "classify_image": lambda b: classify_image(b, SCORES, LABELS, GOOD, LABELS),
    "label_anchors": lambda b: label_anchors(b, GOOD[None], torch.ones(1, 4, dtype=torch.bool)),
    "match_anchors": lambda b: match_anchors(GOOD, b[None], torch.ones(1, 4, dtype=torch.bool)),
    "inside_image": lambda b: inside_image(b, torch.tensor([[40, 40]])),
    "pad_ground_truth": lambda b: pad_ground_truth([GOOD, b]),
    "generate_proposals": lambda b: generate_proposals(b, torch.zeros(1, 4), torch.zeros(1, 4, 4),
                                                       torch.tensor([[40, 40]]), 10, 10),
    "proposal_steps": lambda b: list(proposal_steps(b, torch.zeros(4), torch.zeros(4, 4), (40, 40), 10, 10)),
    "sample_rois": lambda b: sample_rois([b], GOOD[None], LABELS[None], torch.ones(1, 4, dtype=torch.bool)),
    "rois_with_batch_index": lambda b: rois_with_batch_index([b]),
    "draw_boxes": lambda b: viz.draw_boxes(viz.plt.figure().gca(), b),
    "plot_detections": lambda b: viz.plot_detections(torch.rand(3, 40, 40), _detections(b)[0]),
    "plot_nms_steps": lambda b: viz.plot_nms_steps(b, SCORES, torch.tensor([0])),
    "plot_proposals": lambda b: viz.plot_proposals(torch.rand(3, 40, 40), b),
    "plot_anchors": lambda b: viz.plot_anchors(b, (40, 40)),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_boxes_of_five_columns_are_refused_by_name(name):
    call = CALLS[name]
    call(GOOD)                            # the same call with (N, 4) boxes works
    with pytest.raises(ValueError, match=r"must be a tensor of shape \((N|\.\.\.|B, N), 4\), got a tensor of shape"):
        call(FIVE)
    viz.plt.close("all")


@pytest.mark.parametrize("name", ["nms_readable", "nms", "batched_nms"])
def test_nms_scores_must_be_one_per_box(name):
    call = {"nms_readable": lambda s: N.nms_readable(GOOD, s, 0.5), "nms": lambda s: N.nms(GOOD, s, 0.5),
            "batched_nms": lambda s: N.batched_nms(GOOD, s, LABELS, 0.5)}[name]
    with pytest.raises(ValueError, match=rf"{name}: scores must be a tensor of shape \(4,\), one per box, got shape \(3,\)"):
        call(SCORES[:3])


def test_no_boxes_in_any_empty_form_is_still_no_boxes():
    assert B.as_boxes([]).shape == (0, 4) and B.as_boxes(torch.zeros(0)).shape == (0, 4)
    assert B.as_boxes([1, 2, 3, 4]).shape == (1, 4)
    result = evaluate_voc([{"boxes": [], "scores": [], "labels": []}], _targets(GOOD), 3)
    assert result.map == 0.0
