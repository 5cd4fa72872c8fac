"""Anchor labels and balanced sampling (paper §3.1.2, §3.3) on hand-built cases."""
from __future__ import annotations

import torch

from fasterrcnn_edu.labeling import (IGNORED, NEGATIVE, POSITIVE, gather_matched, inside_image, label_anchors,
                                     pad_ground_truth, sample_balanced)


def _label(anchors, gt_per_image, image_sizes=None, **kwargs):
    anchors = torch.tensor(anchors, dtype=torch.float32)
    gt, valid = pad_ground_truth([torch.tensor(g, dtype=torch.float32).reshape(-1, 4) for g in gt_per_image])
    sizes = None if image_sizes is None else torch.tensor(image_sizes)
    return label_anchors(anchors, gt, valid, sizes, **kwargs)


def test_best_anchor_is_positive_even_at_low_iou():
    result = _label([[0, 0, 10, 25],        # IoU 100/250 = 0.4: the best for the ground truth
                     [0, 0, 10, 30],        # IoU 1/3: in [0.3, 0.7] -> ignored
                     [50, 50, 90, 90]],     # IoU 0 -> negative
                    [[[0, 0, 10, 10]]], image_sizes=[[100, 100]])
    assert result.labels.dtype == torch.int8
    assert result.labels.tolist() == [[POSITIVE, IGNORED, NEGATIVE]]
    torch.testing.assert_close(result.max_iou, torch.tensor([[0.4, 1 / 3, 0.0]]))


def test_tied_best_anchors_are_all_positive():
    result = _label([[10, 20, 20, 45],      # IoU 0.4
                     [10, 5, 20, 30],       # IoU 0.4 too (same intersection and union)
                     [10, 20, 20, 46]],     # IoU 100/260 < 0.4: not best, and in [0.3, 0.7]
                    [[[10, 20, 20, 30]]], image_sizes=[[100, 100]])
    assert result.labels.tolist() == [[POSITIVE, POSITIVE, IGNORED]]


def test_iou_thresholds():
    gt = [[[0, 0, 10, 10], [60, 60, 80, 80]]]
    anchors = [[0, 0, 10, 10],      # IoU 1 with gt 0
               [0, 0, 10, 13],      # IoU 0.769 > 0.7: positive although not the best
               [0, 0, 10, 15],      # IoU 0.667: ignored
               [0, 0, 10, 33],      # IoU 0.303: ignored
               [0, 0, 10, 34],      # IoU 0.294 < 0.3: negative
               [30, 30, 40, 40],    # touches nothing: negative
               [60, 60, 80, 78],    # IoU 0.9 with gt 1 (its best)
               [60, 60, 80, 75]]    # IoU 0.75 with gt 1
    result = _label(anchors, gt, image_sizes=[[100, 100]])
    assert result.labels.tolist() == [[POSITIVE, POSITIVE, IGNORED, IGNORED, NEGATIVE, NEGATIVE, POSITIVE, POSITIVE]]
    assert result.matched_gt[0, [0, 1, 6, 7]].tolist() == [0, 0, 1, 1]
    # The thresholds are parameters.
    loose = _label(anchors, gt, image_sizes=[[100, 100]], fg_iou=0.6, bg_iou=0.2)
    assert loose.labels.tolist() == [[POSITIVE, POSITIVE, POSITIVE, IGNORED, IGNORED, NEGATIVE, POSITIVE, POSITIVE]]


def test_cross_boundary_anchors_are_ignored():
    anchors = [[-1, 0, 10, 10],        # IoU 100/110 = 0.91 but crosses the left border
               [0, 0, 10, 25],         # IoU 0.4: the best *inside* anchor -> positive by rule (i)
               [40, 40, 60, 61],       # crosses the bottom border of the 60-pixel-high image
               [30, 30, 40, 40]]
    gt = [[[0, 0, 10, 10]]]
    inside = _label(anchors, gt, image_sizes=[[60, 100]])
    assert inside.labels.tolist() == [[IGNORED, POSITIVE, IGNORED, NEGATIVE]]
    assert inside.max_iou[0, 0].item() == -1.0 and inside.max_iou[0, 2].item() == -1.0
    # Without image sizes (e.g. at test time or rpn_ignore_cross_boundary=False) they take part:
    # the crossing anchor is then the best one and the 0.4 anchor is merely ignored.
    everywhere = _label(anchors, gt)
    assert everywhere.labels.tolist() == [[POSITIVE, IGNORED, NEGATIVE, NEGATIVE]]
    assert inside_image(torch.tensor(anchors, dtype=torch.float32), torch.tensor([[60, 100], [100, 100]])).tolist() == [
        [False, True, False, True], [False, True, True, True]]


def test_image_without_ground_truth_and_batch():
    anchors = [[0, 0, 10, 10], [0, 0, 10, 25], [80, 80, 120, 120], [30, 30, 40, 40]]
    result = _label(anchors, [[[0, 0, 10, 10]], []], image_sizes=[[100, 100], [130, 130]])
    # Image 0 as usual; image 1 has no object: every inside anchor is negative, none positive.
    assert result.labels.tolist() == [[POSITIVE, IGNORED, IGNORED, NEGATIVE], [NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]]
    empty = _label(anchors, [[]], image_sizes=[[100, 100]])
    assert empty.labels.tolist() == [[NEGATIVE, NEGATIVE, IGNORED, NEGATIVE]]
    assert (empty.labels == POSITIVE).sum() == 0


def test_gt_no_inside_anchor_touches_makes_no_positive():
    # Rule (i) needs a positive IoU: an object that no inside anchor overlaps gets no positive.
    # The only overlapping anchor crosses the bottom border.
    result = _label([[0, 0, 10, 10], [45, 45, 65, 105]], [[[50, 50, 60, 60]]], image_sizes=[[100, 100]])
    assert result.labels.tolist() == [[NEGATIVE, IGNORED]]
    assert _label([[0, 0, 10, 10], [45, 45, 65, 105]], [[[50, 50, 60, 60]]]).labels.tolist() == [[NEGATIVE, POSITIVE]]


def test_pad_ground_truth_and_gather():
    padded, valid = pad_ground_truth([torch.ones(2, 4), torch.zeros(0, 4), 3 * torch.ones(1, 4)])
    assert padded.shape == (3, 2, 4) and valid.tolist() == [[True, True], [False, False], [True, False]]
    assert pad_ground_truth([torch.zeros(0, 4)])[0].shape == (1, 1, 4)
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    gathered = gather_matched(boxes, torch.tensor([[2, 0], [1, 1]]))
    assert torch.equal(gathered, torch.stack([boxes[0, [2, 0]], boxes[1, [1, 1]]]))


def _masks(num_pos: list[int], num_neg: list[int], length: int = 2000):
    """Per row: num_pos positives, then num_neg negatives, the rest ignored, in a shuffled order."""
    positive = torch.zeros(len(num_pos), length, dtype=torch.bool)
    negative = torch.zeros_like(positive)
    for row, (p, n) in enumerate(zip(num_pos, num_neg)):
        order = torch.randperm(length)
        positive[row, order[:p]] = True
        negative[row, order[p:p + n]] = True
    return positive, negative


def test_sample_balanced_counts():
    torch.manual_seed(0)
    positive, negative = _masks([300, 10, 0, 200], [1000, 1000, 1000, 50])
    pos, neg = sample_balanced(positive, negative, 256, 0.5, torch.Generator().manual_seed(0))
    assert pos.sum(1).tolist() == [128, 10, 0, 128]      # at most half positives
    assert neg.sum(1).tolist() == [128, 246, 256, 50]    # padded with negatives up to 256 if there are enough
    # Only labelled anchors are sampled, never ignored ones, and never the same anchor twice.
    assert not (pos & ~positive).any() and not (neg & ~negative).any() and not (pos & neg).any()
    # Fast R-CNN's setting: 128 RoIs, 25 % foreground.
    pos, neg = sample_balanced(positive, negative, 128, 0.25, torch.Generator().manual_seed(0))
    assert pos.sum(1).tolist() == [32, 10, 0, 32] and neg.sum(1).tolist() == [96, 118, 128, 50]


def test_sample_balanced_seeded():
    torch.manual_seed(1)
    positive, negative = _masks([300, 20], [1500, 1500])

    def draw(seed):
        return sample_balanced(positive, negative, 256, 0.5, torch.Generator().manual_seed(seed))

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    # Without a generator the global RNG decides: reproducible under torch.manual_seed.
    torch.manual_seed(3)
    a = sample_balanced(positive, negative, 256, 0.5)
    torch.manual_seed(3)
    b = sample_balanced(positive, negative, 256, 0.5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sample_balanced_is_uniform_over_candidates():
    # Each of the 300 positives should be picked with probability 128/300 across many draws.
    torch.manual_seed(2)
    positive, negative = _masks([300], [0])
    positive = positive.expand(400, -1)
    pos, _ = sample_balanced(positive, torch.zeros_like(positive), 256, 0.5, torch.Generator().manual_seed(0))
    frequency = pos.float().mean(0)[positive[0]]
    assert abs(frequency.mean().item() - 128 / 300) < 1e-6
    assert frequency.min().item() > 0.3 and frequency.max().item() < 0.56
