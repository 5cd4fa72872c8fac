"""The small public helpers the book's cells call instead of re-implementing package logic:
`labeling.match_anchors` (the positive rules one by one) and `RoIHeads.class_boxes`."""
import torch
from torch import nn

from fasterrcnn_edu.anchors import base_anchors, grid_anchors
from fasterrcnn_edu.boxes import box_iou, decode
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.labeling import POSITIVE, label_anchors, match_anchors, pad_ground_truth
from fasterrcnn_edu.roi_heads import FastRCNNPredictor, RoIHeads


def _random_ground_truth(generator, images=6):
    boxes = []
    for i in range(images):
        n = i % 4                                            # 0..3 objects, one image without any
        top_left = torch.rand(n, 2, generator=generator) * torch.tensor([280.0, 220.0]) - 10
        sides = torch.rand(n, 2, generator=generator) * 120 + 4
        boxes.append(torch.cat([top_left, top_left + sides], dim=1))
    return boxes


def test_match_anchors_gives_exactly_the_positives_of_label_anchors():
    anchors = grid_anchors(base_anchors(16, (0.5, 1, 2), (2, 4, 8)), (16, 20), 16)
    generator = torch.Generator().manual_seed(0)
    for sizes in (None, torch.tensor([[256, 320]] * 6)):
        gt, valid = pad_ground_truth(_random_ground_truth(generator))
        matches = match_anchors(anchors, gt, valid, sizes)
        labels = label_anchors(anchors, gt, valid, sizes).labels
        assert torch.equal((matches.best | matches.above).any(dim=1), labels == POSITIVE)
        assert not matches.best[~valid].any() and (matches.best_iou[~valid] == -1).all()


def test_match_anchors_rule_1_counts_ties_and_ignores_outside_anchors():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [-5, 0, 5, 10], [0, 0, 40, 40]])
    gt = torch.tensor([[[0.0, 0, 30, 10], [100, 100, 110, 110]]])       # the second touches no anchor
    valid = torch.ones(1, 2, dtype=torch.bool)
    matches = match_anchors(anchors, gt, valid, torch.tensor([[50, 50]]))
    assert matches.best[0, 0].tolist() == [True, True, False, False]    # a tie; anchor 2 is outside
    assert matches.iou[0, 0, 2] == -1 and not matches.best[0, 1].any()
    torch.testing.assert_close(matches.best_iou[0], torch.tensor([1 / 3, 0.0]))
    assert not matches.above.any()


def test_class_boxes_are_the_boxes_postprocess_starts_from():
    cfg = Config.book(num_classes=3)
    heads = RoIHeads(nn.Identity(), FastRCNNPredictor(4, 3), cfg, spatial_scale=1 / 16)
    proposals = [torch.tensor([[10.0, 10, 50, 50], [20, 30, 90, 60]]), torch.tensor([[0.0, 0, 30, 40]])]
    logits, deltas = torch.randn(3, 3), torch.randn(3, 2, 4) * 0.1
    probs, boxes = heads.class_boxes(logits, deltas, proposals)
    assert probs.shape == (3, 3) and boxes.shape == (3, 2, 4)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))
    torch.testing.assert_close(boxes, decode(torch.cat(proposals)[:, None], deltas, cfg.box_coder_std))
    # with a zero delta a class box is its proposal
    _, same = heads.class_boxes(logits, torch.zeros_like(deltas), proposals)
    torch.testing.assert_close(same, torch.cat(proposals)[:, None].expand(-1, 2, -1))
    assert box_iou(same[:, 0], torch.cat(proposals)).diagonal().allclose(torch.ones(3))
