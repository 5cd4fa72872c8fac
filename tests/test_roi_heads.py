"""RoI pooling, RoI sampling (Fast R-CNN §2.3) and test-time detection post-processing."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fasterrcnn_edu.boxes import box_iou, decode
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.roi_heads import (FastRCNNPredictor, RoIHeads, pool_rois, roi_pool_bins, roi_pool_readable,
                                      rois_with_batch_index, sample_rois)

PAPER_STD = (0.1, 0.1, 0.2, 0.2)


def _random_rois(count: int, batch: int, width: float, height: float, generator: torch.Generator) -> torch.Tensor:
    """(count, 5) RoIs (batch index, x1, y1, x2, y2): a mix of ordinary, partly outside, tiny and half-pixel ones."""
    top_left = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - 20
    sides = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.8
    kind = torch.arange(count) % 4
    sides[kind == 1] = torch.rand(int((kind == 1).sum()), 2, generator=generator) * 12      # tiny: < 1 cell
    boxes = torch.cat([top_left, top_left + sides], dim=1)
    # Half-pixel coordinates on the feature grid (multiples of 8 at scale 1/16): rounding ties, negative ones too.
    boxes[kind == 2] = (boxes[kind == 2] / 8).round() * 8
    boxes[kind == 3] = boxes[kind == 3].round()
    index = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([index, boxes], dim=1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("output_size", [7, 2])
def test_roi_pool_readable_equals_torchvision(seed, output_size):
    g = torch.Generator().manual_seed(seed)
    spatial_scale = [1 / 16, 1 / 8, 1.0][seed % 3]
    batch, channels, height, width = 3, 4, [13, 7, 20][seed % 3], [17, 9, 11][seed % 3]
    features = torch.randn(batch, channels, height, width, generator=g)
    if seed % 2:
        features = features - 5.0                          # all negative: the max must not be clamped at 0
    rois = _random_rois(60, batch, width / spatial_scale, height / spatial_scale, g)
    ours = roi_pool_readable(features, rois, output_size, spatial_scale)
    expected = torchvision.ops.roi_pool(features, rois, output_size, spatial_scale)
    assert ours.shape == (60, channels, output_size, output_size)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(pool_rois(features, rois, output_size, spatial_scale, "max"), expected, rtol=0, atol=0)


def test_roi_pool_hand_cases():
    features = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)   # value = 4 * y + x
    rois = torch.tensor([[0, 0, 0, 3, 3],            # the whole map -> 2×2 quadrant maxima
                         [0, 0, 0, 0, 0],            # one cell
                         [0, 4, 4, 20, 20],          # at scale 1/8: 0.5 -> 1, 2.5 -> 3 (half away from zero)
                         [0, 100, 100, 120, 120]],   # entirely outside: empty bins give 0
                        dtype=torch.float32)
    pooled = roi_pool_readable(features, rois[:2], output_size=2, spatial_scale=1.0)
    assert pooled[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert pooled[1, 0].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    pooled = roi_pool_readable(features, rois[2:], output_size=2, spatial_scale=1 / 8)
    expected = torchvision.ops.roi_pool(features, rois[2:], 2, 1 / 8)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    assert pooled[1].abs().sum() == 0
    y0, y1, x0, x1 = roi_pool_bins(rois[2:3, 1:], 2, 1 / 8, 4, 4)
    assert (y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist()) == ([[1, 2]], [[3, 4]], [[1, 2]], [[3, 4]])


def test_pool_rois_align_and_errors():
    torch.manual_seed(0)
    features = torch.randn(2, 8, 10, 12)
    rois = rois_with_batch_index([torch.tensor([[0.0, 0, 64, 64], [16, 16, 100, 150]]), torch.tensor([[8.0, 8, 40, 90]])])
    assert rois.tolist()[2][0] == 1.0 and rois.shape == (3, 5)
    aligned = pool_rois(features, rois, 7, 1 / 16, mode="align")
    assert aligned.shape == (3, 8, 7, 7)
    torch.testing.assert_close(aligned, torchvision.ops.roi_align(features, rois, 7, 1 / 16, 2, aligned=True))
    with pytest.raises(ValueError, match="align"):
        pool_rois(features, rois, 7, 1 / 16, mode="average")


# ---------------------------------------------------------------------------------------------
# sample_rois
# ---------------------------------------------------------------------------------------------
def _gt_batch():
    gt = [torch.tensor([[20.0, 20, 80, 80], [100, 40, 180, 120]]), torch.zeros(0, 4)]
    gt_boxes = torch.zeros(2, 2, 4)
    gt_boxes[0] = gt[0]
    gt_valid = torch.tensor([[True, True], [False, False]])
    gt_labels = torch.tensor([[1, 2], [0, 0]])
    return gt_boxes, gt_labels, gt_valid


def _proposals_around(gt: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    """Proposals jittered around the ground truth (a full range of IoUs) plus random boxes."""
    centres = gt[torch.randint(0, len(gt), (count,), generator=g)]
    jitter = torch.randn(count, 4, generator=g) * 15
    boxes = centres + jitter
    return torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)], dim=1)


def test_sample_rois_fractions_and_iou_ranges():
    g = torch.Generator().manual_seed(0)
    gt_boxes, gt_labels, gt_valid = _gt_batch()
    proposals = [_proposals_around(gt_boxes[0], 400, g), _proposals_around(gt_boxes[0], 300, g)]
    rois, labels, targets = sample_rois(proposals, gt_boxes, gt_labels, gt_valid, 128, 0.25, 0.5, 0.1, 0.5,
                                        PAPER_STD, torch.Generator().manual_seed(1))
    assert rois.shape == (2, 128, 4) and labels.shape == (2, 128) and targets.shape == (2, 128, 4)
    assert labels.dtype == torch.int64
    # Image 0: plenty of candidates -> exactly 25 % foreground, 128 RoIs in all.
    fg, bg = labels[0] > 0, labels[0] == 0
    assert fg.sum() == 32 and bg.sum() == 96 and (labels[0] >= 0).all()
    iou = box_iou(rois[0], gt_boxes[0])
    max_iou, matched = iou.max(dim=1)
    assert (max_iou[fg] >= 0.5).all()
    assert torch.equal(labels[0][fg], gt_labels[0][matched[fg]])          # the class of the best ground truth
    assert ((max_iou[bg] >= 0.1) & (max_iou[bg] < 0.5)).all()
    # Targets move each foreground RoI onto its ground truth, with the paper std; zero elsewhere.
    torch.testing.assert_close(decode(rois[0][fg], targets[0][fg], PAPER_STD), gt_boxes[0][matched[fg]],
                               rtol=0, atol=1e-3)
    assert (targets[0][~fg] == 0).all()
    # Image 1 has no objects: background only (at any IoU), never foreground.
    assert ((labels[1] == 0) | (labels[1] == -1)).all() and (labels[1] == 0).sum() == 128
    assert (targets[1] == 0).all()


def test_sample_rois_includes_ground_truth_and_pads():
    gt_boxes, gt_labels, gt_valid = _gt_batch()
    # Proposals that overlap nothing useful: IoU < 0.1 (neither foreground nor background) ...
    far = torch.tensor([[300.0, 300, 340, 340], [400, 10, 420, 30], [200, 200, 230, 260]])
    # ... and one background proposal (IoU 0.25 with ground truth 0).
    background = torch.tensor([[20.0, 20, 50, 50]])
    proposals = [torch.cat([far, background]), far[:2]]
    rois, labels, targets = sample_rois(proposals, gt_boxes, gt_labels, gt_valid, 128, 0.25)
    # Candidates: 4 proposals + 2 ground truth in image 0 -> S = 6 slots, stable candidate order.
    assert rois.shape == (2, 6, 4)
    assert labels[0].tolist() == [0, 1, 2, -1, -1, -1]
    assert torch.equal(rois[0, :3], torch.cat([background, gt_boxes[0]]))
    # The ground-truth boxes themselves are the foreground RoIs: their targets are zero.
    assert targets[0, 1:3].abs().max() < 1e-6
    # Image 1 (no ground truth): its 2 proposals are background, the rest of the slots unused.
    assert labels[1].tolist() == [0, 0, -1, -1, -1, -1]


def test_sample_rois_foreground_cap_and_seed():
    gt_boxes, gt_labels, gt_valid = _gt_batch()
    g = torch.Generator().manual_seed(3)
    proposals = [gt_boxes[0][torch.randint(0, 2, (200,), generator=g)] + torch.rand(200, 4, generator=g), torch.zeros(0, 4)]
    # All candidates are foreground: at most 25 % of 64 are sampled, the remaining slots are unused.
    rois, labels, _ = sample_rois(proposals, gt_boxes, gt_labels, gt_valid, 64, 0.25,
                                  generator=torch.Generator().manual_seed(0))
    assert (labels[0] > 0).sum() == 16 and (labels[0] == -1).sum() == 48
    assert (labels[1] == -1).all()
    again, labels_again, _ = sample_rois(proposals, gt_boxes, gt_labels, gt_valid, 64, 0.25,
                                         generator=torch.Generator().manual_seed(0))
    other, _, _ = sample_rois(proposals, gt_boxes, gt_labels, gt_valid, 64, 0.25,
                              generator=torch.Generator().manual_seed(1))
    assert torch.equal(rois, again) and torch.equal(labels, labels_again) and not torch.equal(rois, other)


# ---------------------------------------------------------------------------------------------
# The head at test time
# ---------------------------------------------------------------------------------------------
def _heads(**overrides) -> RoIHeads:
    cfg = Config.book(num_classes=3, **overrides)
    return RoIHeads(nn.Identity(), FastRCNNPredictor(4, 3), cfg, spatial_scale=1 / 16)


def test_postprocess_nms_threshold_and_clipping():
    proposals = torch.tensor([[10.0, 10, 50, 50],     # p0: class 1
                              [12.0, 10, 52, 50],     # p1: IoU 0.90 with p0, class 1 -> suppressed
                              [30.0, 10, 70, 50],     # p2: IoU 1/3 > 0.3 with p0, class 1 -> suppressed
                              [40.0, 10, 80, 50],     # p3: IoU 0.14 with p0, class 1 -> kept
                              [10.0, 10, 50, 50],     # p4: the box of p0 but class 2 -> kept (per-class NMS)
                              [60.0, 60, 90, 90],     # p5: background -> nothing above the threshold
                              [140.0, 100, 200, 150], # p6: class 2, crosses the image border -> clipped
                              [60.0, 60, 100, 100]])  # p7: uniform scores 1/3: one detection per class
    logits = torch.tensor([[0.0, 10, 0], [0, 9, 0], [0, 8, 0], [0, 7, 0], [0, 0, 9.5], [10, 0, 0], [0, 0, 6],
                           [0, 0, 0]])
    deltas = torch.zeros(8, 2, 4)
    image_sizes = torch.tensor([[120, 160], [50, 50]])
    heads = _heads()
    results = heads.postprocess(logits, deltas, [proposals, torch.zeros(0, 4)], image_sizes)
    assert len(results) == 2
    det = results[0]
    assert det["labels"].dtype == torch.int64
    assert det["labels"].tolist() == [1, 2, 1, 2, 1, 2]
    expected_boxes = [[10, 10, 50, 50], [10, 10, 50, 50], [40, 10, 80, 50], [140, 100, 160, 120],
                      [60, 60, 100, 100], [60, 60, 100, 100]]
    assert det["boxes"].tolist() == expected_boxes
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(det["scores"], torch.stack([probs[0, 1], probs[4, 2], probs[3, 1], probs[6, 2],
                                                           probs[7, 1], probs[7, 2]]))
    assert results[1]["boxes"].shape == (0, 4) and results[1]["scores"].shape == (0,)
    # The score threshold and the per-image cap.
    det = _heads(score_thresh=0.4).postprocess(logits, deltas, [proposals], image_sizes[:1])[0]
    assert det["labels"].tolist() == [1, 2, 1, 2]
    det = _heads(detections_per_img=3).postprocess(logits, deltas, [proposals], image_sizes[:1])[0]
    assert det["boxes"].tolist() == expected_boxes[:3]
    # A looser NMS threshold (0.5) lets p2 (IoU 1/3 with p0) through, which then suppresses p3 (IoU 0.6).
    det = _heads(det_nms_thresh=0.5).postprocess(logits, deltas, [proposals], image_sizes[:1])[0]
    assert det["boxes"].tolist()[:3] == [[10, 10, 50, 50], [10, 10, 50, 50], [30, 10, 70, 50]]
    assert [40.0, 10, 80, 50] not in det["boxes"].tolist()


def test_postprocess_applies_class_specific_deltas():
    proposal = torch.tensor([[20.0, 20, 60, 60]])
    logits = torch.tensor([[0.0, 5.0, 5.0]])
    deltas = torch.zeros(1, 2, 4)
    deltas[0, 0, 0] = 1.0      # class 1: shift right by 0.1 * width = 4
    deltas[0, 1, 3] = 5.0      # class 2: height * exp(0.2 * 5)
    det = _heads().postprocess(logits, deltas, [proposal], torch.tensor([[200, 200]]))[0]
    by_label = dict(zip(det["labels"].tolist(), det["boxes"].tolist()))
    assert by_label[1] == pytest.approx([24.0, 20.0, 64.0, 60.0])
    height = 40 * torch.exp(torch.tensor(1.0)).item()        # 108.7: the top is clipped at 0
    assert by_label[2] == pytest.approx([20.0, 0.0, 60.0, 40 + height / 2], abs=1e-4)
