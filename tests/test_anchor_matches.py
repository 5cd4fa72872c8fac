"""Anchor matching: the small public helpers the book's cells call instead of re-implementing package
logic (`labeling.match_anchors`, the positive rules one by one, and `RoIHeads.class_boxes`), and
`label_anchors` against torchvision's RPN matcher."""
import torch
from torch import nn

from fasterrcnn_edu.anchors import base_anchors, grid_anchors
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


def test_postprocess_keeps_the_class_boxes_and_probabilities_it_is_given_when_nothing_is_filtered():
    """With no score threshold, no suppression (IoU > 1 never happens) and room for every box,
    `postprocess` returns exactly the clipped `class_boxes` of every (proposal, class) pair."""
    cfg = Config.book(num_classes=3, score_thresh=0.0, det_nms_thresh=1.0, detections_per_img=1000)
    heads = RoIHeads(nn.Identity(), FastRCNNPredictor(4, 3), cfg, spatial_scale=1 / 16)
    proposals = [torch.tensor([[10.0, 10, 50, 50], [20, 30, 90, 60]]), torch.tensor([[0.0, 0, 30, 40]])]
    logits, deltas = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(3, 2, 4)
    deltas[0, 1] = torch.tensor([20.0, 0.0, 0.0, 0.0])       # class 2 of proposal 0 moves right, past the image
    probs, boxes = heads.class_boxes(logits, deltas, proposals)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))
    detections = heads.postprocess(logits, deltas, proposals, torch.tensor([[100, 100], [100, 100]]))
    assert [len(d["boxes"]) for d in detections] == [4, 2]
    image_of = [0, 0, 1]
    for r in range(3):
        for k in range(2):
            det = detections[image_of[r]]
            match = (det["labels"] == k + 1) & (det["scores"] == probs[r, k + 1])
            assert match.sum() == 1
            torch.testing.assert_close(det["boxes"][match][0], boxes[r, k].clamp(0, 100))
    assert detections[0]["boxes"][:, 2].max() == 100.0          # the moved box was clipped at the edge


def test_label_anchors_agrees_with_torchvisions_rpn_matcher():
    """Parity with torchvision's RPN labelling (`det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)`,
    then 1 / 0 / -1 as `RegionProposalNetwork.assign_targets_to_anchors` does), where the two rules
    coincide: our boundary rule off (no `image_sizes`; torchvision has none), every ground-truth box
    touching some anchor (torchvision would make every anchor of IoU 0 a "best" match of a box that
    touches none), and no IoU of exactly 0.7, where our "higher than" (the paper) and torchvision's
    ">=" differ."""
    from torchvision.models.detection import _utils as det_utils

    from fasterrcnn_edu.boxes import box_iou
    from fasterrcnn_edu.labeling import IGNORED, NEGATIVE

    anchors = grid_anchors(base_anchors(16, (0.5, 1, 2), (2, 4, 8)), (16, 20), 16)
    matcher = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    generator = torch.Generator().manual_seed(1)
    compared = 0
    for _ in range(20):
        gt = _random_ground_truth(generator, images=4)
        padded, valid = pad_ground_truth(gt)
        ours = label_anchors(anchors, padded, valid)
        for image, boxes in enumerate(gt):
            if len(boxes) == 0:
                continue
            iou = box_iou(boxes, anchors)                                   # (G, A)
            assert (iou.amax(dim=1) > 0).all() and not (iou == 0.7).any()
            matches = matcher(iou)
            theirs = torch.full((len(anchors),), IGNORED, dtype=torch.int8)
            theirs[matches >= 0] = POSITIVE
            theirs[matches == det_utils.Matcher.BELOW_LOW_THRESHOLD] = NEGATIVE
            assert torch.equal(ours.labels[image], theirs)
            positive = theirs == POSITIVE
            assert torch.equal(ours.matched_gt[image][positive], matches[positive])
            compared += int(positive.sum())
    assert compared > 100
