"""Exercises on the detector's second half: NMS, the proposal layer, RoI pooling, RoI sampling, and AP."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fasterrcnn_edu.anchors import base_anchors, grid_anchors
from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.evaluation import voc_ap
from fasterrcnn_edu.exercises.core import (Case, Exercise, as_tensor, boxes, first_mismatch, fmt, indices, random_boxes,
                                           shape_difference, tensor_difference)
from fasterrcnn_edu.labeling import pad_ground_truth
from fasterrcnn_edu.nms import nms_readable
from fasterrcnn_edu.proposals import generate_proposals, objectness_scores, proposal_steps
from fasterrcnn_edu.roi_heads import roi_pool_bins, roi_pool_readable, sample_rois


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------
def nms_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    random = random_boxes(g, 60, size=80, max_side=40)
    scores = torch.rand(60, generator=g)
    return [
        Case("two overlapping boxes and one apart", (boxes([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]),
                                                     torch.tensor([0.9, 0.8, 0.7]), 0.5)),
        Case("the result is sorted by score, best first", (boxes([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
                                                           torch.tensor([0.2, 0.9, 0.5]), 0.5),
             "return the kept indices in order of decreasing score."),
        Case("an IoU exactly equal to the threshold does not suppress (IoU 0.5, threshold 0.5)",
             (boxes([[0, 0, 10, 10], [0, 0, 10, 20]]), torch.tensor([0.9, 0.8]), 0.5),
             "suppress a box only if its IoU with a kept box is *greater than* the threshold (`>`, not `>=`)."),
        Case("equal scores: the lower index wins", (boxes([[0, 0, 10, 10], [0, 0, 10, 10]]), torch.tensor([0.5, 0.5]), 0.5),
             "sort with a stable sort (`torch.sort(scores, descending=True, stable=True)`) so ties keep index order."),
        Case("a chain: A suppresses B, so B cannot suppress C",
             (boxes([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]), torch.tensor([0.9, 0.8, 0.7]), 0.3),
             "a suppressed box is removed at once: it never suppresses anything itself."),
        Case("a degenerate (zero-width) box overlaps nothing: it is kept",
             (boxes([[0, 0, 10, 10], [2, 2, 2, 12], [1, 1, 11, 11]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)),
        Case("boxes crossing the image boundary (negative coordinates)",
             (boxes([[-10, -10, 10, 10], [-8, -10, 12, 10], [30, 30, 40, 40]]), torch.tensor([0.6, 0.9, 0.3]), 0.7)),
        Case("no boxes at all: an empty int64 tensor", (torch.zeros(0, 4), torch.zeros(0), 0.5)),
        Case("one box", (boxes([[0, 0, 10, 10]]), torch.tensor([0.3]), 0.5)),
        Case("60 random boxes at threshold 0.7 (the RPN's)", (random, scores, 0.7)),
        Case("60 random boxes at threshold 0.3 (the detector's)", (random, scores, 0.3)),
    ]


def compare_nms(case: Case, expected: Tensor, got) -> str | None:
    got_list, problem = indices(got)
    if problem:
        return problem
    exp_list = expected.tolist()
    if got_list == exp_list:
        return None
    boxes_, scores, threshold = case.args
    text = f"expected to keep {exp_list}, your function keeps {got_list}"
    if any(not 0 <= i < len(boxes_) for i in got_list):
        return text + f"; every index must be in 0…{len(boxes_) - 1} (indices into the input boxes)"
    missing = [i for i in exp_list if i not in got_list]
    extra = [i for i in got_list if i not in exp_list]
    if missing:
        i = missing[0]
        text += f"; box {i} (score {scores[i]:.2f}) should be kept"
        before = exp_list[:exp_list.index(i)]
        if before:
            overlap = box_iou(boxes_[i:i + 1], boxes_[before]).max().item()
            text += f": its largest IoU with the boxes kept before it is {overlap:.3f}, not above {threshold}"
    elif extra:
        i = extra[0]
        kept_better = [k for k in exp_list if scores[k] >= scores[i] and k != i]
        overlap = box_iou(boxes_[i:i + 1], boxes_[kept_better]).max().item() if kept_better else 0.0
        text += (f"; box {i} (score {scores[i]:.2f}) should be suppressed: IoU {overlap:.3f} > {threshold} with a "
                 f"better kept box")
    else:
        text += "; the same boxes, in a different order"
    return text


# ---------------------------------------------------------------------------------------------
# The proposal layer
# ---------------------------------------------------------------------------------------------
def _proposal_case(description: str, seed: int, feature: tuple[int, int], image: tuple[int, int], pre: int, post: int,
                   min_size: float, delta_scale: float = 0.3, tie: bool = False, hint: str = "") -> Case:
    """Random RPN outputs on a small grid of anchors. The reader gets the objectness as probabilities,
    the package's layer the logits they come from (the same float32 values after its softmax)."""
    g = torch.Generator().manual_seed(seed)
    anchors = grid_anchors(base_anchors(16, (0.5, 1.0, 2.0), (2, 4)), feature, 16)
    logits = torch.randn(len(anchors), 2, generator=g) * 2
    if tie:
        logits[::2] = logits[0]                      # many equal scores: their order must stay the anchors' order
    deltas = torch.randn(len(anchors), 4, generator=g) * delta_scale
    scores = objectness_scores(logits[None])[0]
    return Case(description, (anchors, scores, deltas, image, pre, post, 0.7, min_size), hint,
                reference_args=(anchors, logits, deltas, image, pre, post, 0.7, min_size))


def proposal_cases() -> list[Case]:
    return [
        _proposal_case("a 4 × 5 map of 6 anchors: top 60 before NMS, 20 after", 0, (4, 5), (64, 80), 60, 20, 4.0,
                       hint="decode every anchor → clip to the image → drop boxes smaller than min_size → top "
                            "pre_nms_top_n by score → NMS at nms_thresh → top post_nms_top_n."),
        _proposal_case("boxes sticking out of the image are clipped", 1, (3, 3), (40, 40), 100, 100, 1.0, 0.8,
                       hint="clip every decoded box to the image: 0 ≤ x ≤ width, 0 ≤ y ≤ height (image_size is "
                            "(height, width))."),
        _proposal_case("a large min_size drops small boxes", 2, (4, 4), (64, 64), 100, 50, 30.0,
                       hint="drop a box whose width or height is below min_size, before the top-N."),
        _proposal_case("many equal scores: ties keep the anchors' order", 3, (4, 5), (64, 80), 40, 30, 4.0, tie=True,
                       hint="sort the scores with a stable sort, so equal scores keep the anchors' order."),
        _proposal_case("every box below min_size: no proposal", 4, (2, 2), (32, 32), 10, 10, 1000.0),
        Case("no anchors at all: no proposal", (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4), (32, 32), 10, 10,
                                                0.7, 1.0),
             reference_args=(torch.zeros(0, 4), torch.zeros(0, 2), torch.zeros(0, 4), (32, 32), 10, 10, 0.7, 1.0)),
    ]


def proposal_reference(anchors, logits, deltas, image_size, pre, post, nms_thresh, min_size):
    boxes_, kept = generate_proposals(anchors, logits[None], deltas[None], torch.tensor([list(image_size)]), pre, post,
                                      nms_thresh, min_size)
    return boxes_[0], kept[0]


def _step_counts(case: Case) -> str:
    steps = proposal_steps(*case.reference_args)
    return " → ".join(f"{step.name} {len(step.index)}" for step in steps)


def compare_proposals(case: Case, expected: tuple[Tensor, Tensor], got) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "expected two tensors, (boxes (P, 4), scores (P,)), best first"
    got_boxes, problem = as_tensor(got[0], "a (P, 4) tensor of boxes")
    if problem:
        return f"boxes: {problem}"
    got_scores, problem = as_tensor(got[1], "a (P,) tensor of scores")
    if problem:
        return f"scores: {problem}"
    exp_boxes, exp_scores = expected
    nms_thresh = case.args[6]
    if got_boxes.dim() == 2 and got_boxes.shape[-1] == 4 and len(got_boxes) > 1:
        overlap = box_iou(got_boxes.float(), got_boxes.float()).triu(diagonal=1)
        if (overlap > nms_thresh).any():
            i, j = (int(v) for v in (overlap > nms_thresh).nonzero()[0])
            return (f"your proposals {i} {fmt(got_boxes[i])} and {j} {fmt(got_boxes[j])} overlap with IoU "
                    f"{overlap[i, j].item():.3f} > nms_thresh {nms_thresh}: NMS should have removed the lower-scored one "
                    f"(the package's steps: {_step_counts(case)})")
    if len(got_boxes) != len(exp_boxes) or len(got_scores) != len(exp_boxes):
        return (f"expected {len(exp_boxes)} proposals, yours has {len(got_boxes)} boxes and {len(got_scores)} scores "
                f"(the package's steps: {_step_counts(case)})")
    difference = shape_difference(exp_boxes, got_boxes, " (P, 4)")
    if difference:
        return difference
    where = first_mismatch(exp_boxes, got_boxes, atol=1e-3)
    if where is not None:
        i = where[0]
        height, width = case.args[3]
        text = f"proposal {i} should be {fmt(exp_boxes[i])} (score {exp_scores[i]:.4f}); yours is {fmt(got_boxes[i])}"
        b = got_boxes[i]
        if (b[0::2] < -1e-4).any() or (b[1::2] < -1e-4).any() or (b[0::2] > width + 1e-4).any() or (b[1::2] > height + 1e-4).any():
            text += f". It sticks out of the {width} × {height} image: clip the boxes to it"
        return text
    where = first_mismatch(exp_scores, got_scores.reshape(exp_scores.shape), atol=1e-5)
    if where is not None:
        i = where[0]
        return f"proposal {i} has the right box but score {got_scores[i].item():.4f}; it should be {exp_scores[i]:.4f}"
    return None


# ---------------------------------------------------------------------------------------------
# RoI max pooling: one RoI (the chapter's exercise) and a batch (torchvision's signature)
# ---------------------------------------------------------------------------------------------
ROUNDING = ("snap the RoI to the feature grid by rounding x·spatial_scale *half away from zero* (C's round: "
            "2.5 → 3); `torch.round` rounds halves to even (2.5 → 2).")
INCLUSIVE = ("the snapped RoI's size is inclusive: end − start + 1 cells; bin p covers cells "
             "floor(p·size/P) … ceil((p+1)·size/P) − 1, offset by the start and clipped to the map.")


def roi_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    chapter_map = torch.randperm(64, generator=torch.Generator().manual_seed(0)).reshape(1, 8, 8).float()
    features = torch.randn(3, 12, 16, generator=g)
    return [
        Case("the chapter's 8×8 example: columns 1–5 and rows 2–7 pooled to 2×2 (60, 61, 62, 57)",
             (chapter_map, torch.tensor([1.0, 2.0, 5.0, 7.0]), 2, 1.0), INCLUSIVE),
        Case("a RoI over the whole map, 7×7 output", (features, torch.tensor([0.0, 0.0, 15.0, 11.0]), 7, 1.0), INCLUSIVE),
        Case("image coordinates: spatial scale 1/16", (features, torch.tensor([16.0, 32.0, 160.0, 150.0]), 3, 1 / 16),
             "multiply the RoI by spatial_scale before snapping it to the grid."),
        Case("coordinates on half cells (x · scale = 2.5 must round to 3)",
             (features, torch.tensor([40.0, 40.0, 120.0, 104.0]), 2, 1 / 16), ROUNDING),
        Case("a RoI smaller than the output grid: bins repeat cells", (features, torch.tensor([3.0, 4.0, 5.0, 5.0]), 4, 1.0),
             INCLUSIVE),
        Case("a degenerate RoI (zero width) still pools one column", (features, torch.tensor([6.0, 2.0, 6.0, 9.0]), 2, 1.0),
             INCLUSIVE),
        Case("a RoI partly outside the map: bins are clipped, empty bins give 0",
             (features, torch.tensor([12.0, 8.0, 30.0, 20.0]), 4, 1.0),
             "clip every bin to the map; a bin with no cell left gives 0."),
        Case("a random RoI, 7×7 output", (features, torch.tensor([18.3, 7.9, 201.4, 170.2]), 7, 1 / 16), INCLUSIVE),
    ]


def roi_reference(features, roi, output_size, spatial_scale) -> Tensor:
    rois = torch.cat([torch.zeros(1), roi]).reshape(1, 5)
    return roi_pool_readable(features[None], rois, output_size, spatial_scale)[0]


def _explain_bin(expected: Tensor, got: Tensor, features: Tensor, roi: Tensor, size: int, scale: float,
                 where: tuple[int, int, int], label: str = "") -> str:
    c, i, j = where
    y0, y1, x0, x1 = roi_pool_bins(roi[None].float(), size, scale, features.shape[-2], features.shape[-1])
    cells = (f"rows {int(y0[0, i])}…{int(y1[0, i]) - 1}, columns {int(x0[0, j])}…{int(x1[0, j]) - 1}"
             if y1[0, i] > y0[0, i] and x1[0, j] > x0[0, j] else "no cell (an empty bin)")
    return (f"{label}bin (row {i}, column {j}) of channel {c} should be {expected[c, i, j]:g} (the bin covers "
            f"feature {cells}), your function gives {got[c, i, j].item():g}")


def compare_roi(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "a (C, P, P) tensor", " (C, P, P)", atol=1e-5, rtol=0)
    if problem or where is None:
        return problem
    features, roi, size, scale = case.args
    return _explain_bin(expected, got, features, roi, size, scale, where)


def roi_batch_cases() -> list[Case]:
    single = roi_cases()
    g = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 12, 16, generator=g)
    rois = torch.tensor([[0, 0.0, 0.0, 15.0, 11.0], [1, 0.0, 0.0, 15.0, 11.0], [1, 3.0, 4.0, 5.0, 5.0],
                         [0, 12.0, 8.0, 30.0, 20.0], [1, 6.0, 2.0, 6.0, 9.0]])
    return [
        Case("two images, five RoIs: the first column of a row is its image's index", (features, rois, 3, 1.0),
             "rois[:, 0] says which image of the batch (features[b]) a RoI is pooled from."),
        Case("the chapter's RoIs as a batch of one image, 2×2", (single[0].args[0][None],
                                                                 torch.tensor([[0, 1.0, 2.0, 5.0, 7.0]]), 2, 1.0), INCLUSIVE),
        Case("image coordinates, spatial scale 1/16, half cells", (features, torch.tensor(
            [[0, 16.0, 32.0, 160.0, 150.0], [1, 40.0, 40.0, 120.0, 104.0]]), 2, 1 / 16), ROUNDING),
        Case("no RoI: an empty (0, C, P, P) result", (features, torch.zeros(0, 5), 7, 1 / 16)),
    ]


def roi_batch_reference(features, rois, output_size, spatial_scale) -> Tensor:
    return roi_pool_readable(features, rois, output_size, spatial_scale)


def compare_roi_batch(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "an (R, C, P, P) tensor",
                                            " (R, C, P, P): one pooled map per RoI", atol=1e-5, rtol=0)
    if problem or where is None:
        return problem
    features, rois, size, scale = case.args
    r = where[0]
    image = int(rois[r, 0])
    text = _explain_bin(expected[r], got[r], features[image], rois[r, 1:], size, scale, where[1:],
                        f"RoI {r} (image {image}, box {fmt(rois[r, 1:])}): ")
    other = 1 - image if features.shape[0] == 2 else None
    if other is not None and torch.allclose(got[r], roi_pool_readable(features[other:other + 1], torch.cat(
            [torch.zeros(1), rois[r, 1:]])[None], size, scale)[0], atol=1e-5):
        text += f". Your values come from image {other}: pool from features[rois[r, 0]]"
    return text


# ---------------------------------------------------------------------------------------------
# RoI sampling for the Fast R-CNN head
# ---------------------------------------------------------------------------------------------
def sample_roi_cases() -> list[Case]:
    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)
    g = torch.Generator().manual_seed(8)
    gt = boxes([[10, 10, 60, 50], [100, 40, 150, 120], [30, 90, 80, 140]])
    labels = torch.tensor([3, 1, 5])
    near = torch.cat([gt + torch.randn(3, 4, generator=g) * 6 for _ in range(30)])           # many foreground
    far = random_boxes(g, 200, size=160, max_side=70)
    return [
        Case("300 proposals around 3 objects: 16 foreground at most (25 % of 64), the rest background",
             (torch.cat([near, far]), gt, labels, 64, 0.25, 0.5, 0.1, 0.5, gen(0)),
             "foreground: IoU ≥ fg_iou with some object, labelled with that object's class; background: IoU in "
             "[bg_iou_low, bg_iou_high), label 0; at most batch_size · positive_fraction foreground."),
        Case("no proposal near an object: the ground-truth boxes themselves are the foreground",
             (far[:50] * 0.2 + 200, gt, labels, 64, 0.25, 0.5, 0.1, 0.5, gen(1)),
             "add the ground-truth boxes to the candidates (the released code does): each is foreground, IoU 1."),
        Case("proposals with IoU below bg_iou_low are neither foreground nor background",
             (torch.cat([near[:6], far]), gt, labels, 128, 0.25, 0.5, 0.1, 0.5, gen(2)),
             "background needs IoU ≥ bg_iou_low (0.1): boxes that barely touch an object are not used."),
        Case("an image without objects: every proposal is background", (far[:40], torch.zeros(0, 4),
                                                                         torch.zeros(0, dtype=torch.long),
                                                                         32, 0.25, 0.5, 0.1, 0.5, gen(3)),
             "with no ground truth there is nothing to overlap: any proposal may be background."),
        Case("no proposal and no object: an empty mini-batch", (torch.zeros(0, 4), torch.zeros(0, 4),
                                                                 torch.zeros(0, dtype=torch.long), 32, 0.25, 0.5, 0.1,
                                                                 0.5, gen(4))),
    ]


def sample_rois_reference(proposals, gt_boxes, gt_labels, batch_size, fraction, fg_iou, bg_low, bg_high, generator):
    padded, valid = pad_ground_truth([gt_boxes])
    labels = torch.zeros(valid.shape, dtype=torch.long)
    labels[valid] = gt_labels
    rois, roi_labels, _ = sample_rois([proposals], padded, labels, valid, batch_size, fraction, fg_iou, bg_low,
                                      bg_high, generator=generator)
    used = roi_labels[0] >= 0
    return rois[0][used], roi_labels[0][used]


def compare_sample_rois(case: Case, expected: tuple[Tensor, Tensor], got) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "expected two tensors, (rois (S, 4), labels (S,)): the sampled boxes and their classes (0 = background)"
    rois, problem = as_tensor(got[0], "an (S, 4) tensor of RoIs")
    if problem:
        return f"rois: {problem}"
    labels, problem = as_tensor(got[1], "an (S,) tensor of labels")
    if problem:
        return f"labels: {problem}"
    if rois.dim() != 2 or rois.shape[-1] != 4 or labels.shape != (len(rois),):
        return f"expected rois (S, 4) and labels (S,), got shapes {tuple(rois.shape)} and {tuple(labels.shape)}"
    proposals, gt, gt_labels, batch_size, fraction, fg_iou, bg_low, bg_high, _ = case.args
    candidates = torch.cat([proposals, gt])
    for r in range(len(rois)):
        same = (candidates == rois[r]).all(dim=1)
        if not same.any():
            return f"RoI {r} {fmt(rois[r])} is neither a proposal nor a ground-truth box"
        iou = box_iou(rois[r:r + 1], gt)[0] if len(gt) else torch.zeros(0)
        best = iou.max().item() if len(gt) else 0.0
        if len(gt) and best >= fg_iou:
            want, why = int(gt_labels[iou.argmax()]), f"foreground (IoU {best:.3f} ≥ {fg_iou}), class {int(gt_labels[iou.argmax()])}"
        elif not len(gt) or bg_low <= best < bg_high:
            want, why = 0, f"background (IoU {best:.3f} in [{bg_low}, {bg_high}))"
        else:
            return f"RoI {r} {fmt(rois[r])} has IoU {best:.3f} with the objects: it should not be sampled (below bg_iou_low {bg_low})"
        if int(labels[r]) != want:
            return f"RoI {r} {fmt(rois[r])} is {why}; your label is {int(labels[r])}"
    unique = torch.unique(rois, dim=0) if len(rois) else rois
    if len(unique) != len(rois):
        return "the same RoI is sampled twice: sample without replacement"
    want_fg, want_bg = int((expected[1] > 0).sum()), int((expected[1] == 0).sum())
    got_fg, got_bg = int((labels > 0).sum()), int((labels == 0).sum())
    if (got_fg, got_bg) != (want_fg, want_bg):
        return (f"the mini-batch should have {want_fg} foreground and {want_bg} background RoIs (batch {batch_size}, "
                f"foreground fraction {fraction:g}, ground truth added to the candidates); yours has {got_fg} and {got_bg}")
    return None


def probe_sample_rois(call) -> str | None:
    case = sample_roi_cases()[0]
    runs = []
    for seed in (0, 0, 1):
        args = case.args[:-1] + (torch.Generator().manual_seed(seed),)
        got = call(args)
        if isinstance(got, str):
            return got
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return "expected two tensors, (rois, labels)"
        runs.append(torch.as_tensor(got[0]))
    if not torch.equal(runs[0], runs[1]):
        return ("two calls with generators in the same state gave different RoIs: draw the random numbers from the "
                "`generator` argument, so training is reproducible")
    if runs[0].shape == runs[2].shape and torch.equal(runs[0], runs[2]):
        return "generators seeded 0 and 1 gave the same RoIs: the mini-batch must be a random sample"
    return None


# ---------------------------------------------------------------------------------------------
# Average precision (VOC07 11-point and VOC10+ area)
# ---------------------------------------------------------------------------------------------
def _curve(tp: list[int], npos: int) -> tuple[Tensor, Tensor]:
    hits = torch.tensor(tp, dtype=torch.float64).cumsum(0)
    ranks = torch.arange(1, len(tp) + 1, dtype=torch.float64)
    return hits / npos, hits / ranks


def ap_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    random_tp = (torch.rand(60, generator=g) < 0.6).long().tolist()
    cases = []
    for metric, name in ((True, "11-point (VOC07)"), (False, "area (VOC10+)")):
        hint = ("11-point AP: the mean over t = 0, 0.1, …, 1 of the highest precision at recall ≥ t (0 if none)."
                if metric else "area AP: make precision non-increasing from the right (the envelope, a running max), "
                               "then sum (r_i − r_{i-1}) · p_i where recall changes, from recall 0 to 1.")
        cases += [
            Case(f"{name}: every detection correct, all objects found: AP 1", (*_curve([1, 1, 1], 3), metric), hint),
            Case(f"{name}: a false positive ranked first", (*_curve([0, 1, 1, 0, 1], 3), metric), hint),
            Case(f"{name}: precision rises again (the envelope matters)", (*_curve([1, 0, 0, 1, 1, 0, 1], 7), metric), hint),
            Case(f"{name}: half the objects never found", (*_curve([1, 1, 0, 1], 6), metric), hint),
            Case(f"{name}: no detection at all: AP 0", (torch.zeros(0, dtype=torch.float64),
                                                        torch.zeros(0, dtype=torch.float64), metric)),
            Case(f"{name}: 60 random detections of 47 objects", (*_curve(random_tp, 47), metric), hint),
        ]
    return cases


def ap_reference(recall: Tensor, precision: Tensor, use_07_metric: bool) -> float:
    return voc_ap(recall.numpy(), precision.numpy(), use_07_metric)


def compare_ap(case: Case, expected: float, got) -> str | None:
    try:
        value = float(got)
    except (TypeError, ValueError, RuntimeError):
        return f"expected a number (the AP), got {type(got).__name__}"
    if np.isclose(value, expected, rtol=1e-6, atol=1e-9):
        return None
    recall, precision, metric = case.args
    text = (f"for recall {fmt(recall[:10])}{' …' if len(recall) > 10 else ''} and precision "
            f"{fmt(precision[:10])}{' …' if len(precision) > 10 else ''}, the {'11-point' if metric else 'area'} AP "
            f"is {expected:.6f}; yours is {value:.6f}")
    if metric and np.isclose(value * 10, expected * 11, rtol=1e-6):
        text += ". You divided by 10: there are 11 recall points, 0, 0.1, …, 1"
    elif not metric and len(recall):
        mrec = np.concatenate(([0.0], recall.numpy(), [1.0]))
        mpre = np.concatenate(([0.0], precision.numpy(), [0.0]))
        i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        if np.isclose(value, float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i])), rtol=1e-6):
            text += (". That is the area under the raw curve: take the precision envelope first, "
                     "p(r) = max of the precision at any recall ≥ r")
    return text


EXERCISES = {
    "nms": Exercise(nms_cases, nms_readable, compare_nms, "nms(boxes, scores, iou_threshold) -> kept indices, best first"),
    "proposals": Exercise(proposal_cases, proposal_reference, compare_proposals,
                          "proposals(anchors (A, 4), scores (A,), deltas (A, 4), image_size (H, W), pre_nms_top_n, "
                          "post_nms_top_n, nms_thresh, min_size) -> (boxes (P, 4), scores (P,)), best first"),
    "roi_max_pool": Exercise(roi_cases, roi_reference, compare_roi,
                             "roi_max_pool(features, roi, output_size, spatial_scale) -> (C, P, P)"),
    "roi_pool": Exercise(roi_batch_cases, roi_batch_reference, compare_roi_batch,
                         "roi_pool(features (B, C, H, W), rois (R, 5), output_size, spatial_scale) -> (R, C, P, P)"),
    "sample_rois": Exercise(sample_roi_cases, sample_rois_reference, compare_sample_rois,
                            "sample_rois(proposals (P, 4), gt_boxes (G, 4), gt_labels (G,), batch_size, "
                            "positive_fraction, fg_iou, bg_iou_low, bg_iou_high, generator) -> (rois (S, 4), labels (S,))",
                            probe_sample_rois),
    "average_precision": Exercise(ap_cases, ap_reference, compare_ap,
                                  "average_precision(recall (D,), precision (D,), use_07_metric) -> AP (a float)"),
}
