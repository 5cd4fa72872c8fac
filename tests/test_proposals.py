"""Proposal generation (paper §3.3) against a straightforward per-image reference built from torchvision ops."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from fasterrcnn_edu.anchors import AnchorGenerator
from fasterrcnn_edu.proposals import generate_proposals, objectness_scores


def reference_proposals(anchors, objectness, deltas, image_size, pre_nms_top_n, post_nms_top_n, nms_thresh,
                        min_size):
    """One image, the textbook way: decode, clip, drop small, top-N, NMS, top-N."""
    if objectness.dim() == 2:
        scores = torch.softmax(objectness, dim=-1)[:, 1]
    else:
        scores = torch.sigmoid(objectness)
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
    boxes = torchvision.ops.clip_boxes_to_image(boxes, tuple(image_size))
    keep = torchvision.ops.remove_small_boxes(boxes, float(min_size))
    boxes, scores = boxes[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices[:pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    keep = torchvision.ops.nms(boxes, scores, nms_thresh)[:post_nms_top_n]
    return boxes[keep], scores[keep]


def _rpn_outputs(seed, batch=2, feature_size=(8, 10), sigmoid=False, delta_scale=0.5):
    torch.manual_seed(seed)
    anchors = AnchorGenerator(scales=(2, 4, 8))(feature_size, torch.device("cpu"))
    count = anchors.shape[0]
    objectness = torch.randn(batch, count) * 3 if sigmoid else torch.randn(batch, count, 2) * 3
    deltas = torch.randn(batch, count, 4) * delta_scale
    return anchors, objectness, deltas


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sigmoid", [False, True])
def test_generate_proposals_matches_reference(seed, sigmoid):
    anchors, objectness, deltas = _rpn_outputs(seed, sigmoid=sigmoid)
    image_sizes = torch.tensor([[128, 160], [100, 130]])         # image 1 is smaller than the padded batch
    min_size = torch.tensor([4.0, 8.0])                            # rpn_min_size 4 scaled by 1 and 2
    pre, post, thresh = [(300, 50, 0.7), (2000, 300, 0.7), (100, 1000, 0.5), (20, 10, 0.3)][seed % 4]
    boxes, scores = generate_proposals(anchors, objectness, deltas, image_sizes, pre, post, thresh, min_size)
    assert len(boxes) == len(scores) == 2
    for i in range(2):
        expected_boxes, expected_scores = reference_proposals(
            anchors, objectness[i], deltas[i], image_sizes[i].tolist(), pre, post, thresh, min_size[i])
        assert boxes[i].shape == expected_boxes.shape and len(boxes[i]) > 0
        torch.testing.assert_close(boxes[i], expected_boxes, rtol=0, atol=1e-4)
        torch.testing.assert_close(scores[i], expected_scores, rtol=0, atol=0)


def test_proposals_sorted_inside_and_large_enough():
    anchors, objectness, deltas = _rpn_outputs(0, delta_scale=1.5)
    image_sizes = torch.tensor([[128, 160], [90, 70]])
    min_size = torch.tensor([6.0, 12.0])
    boxes, scores = generate_proposals(anchors, objectness, deltas, image_sizes, 1000, 200, 0.7, min_size)
    for image_boxes, image_scores, (height, width), smallest in zip(boxes, scores, image_sizes.tolist(), min_size):
        assert 0 < len(image_boxes) <= 200
        assert (image_scores[1:] <= image_scores[:-1]).all()
        assert (image_scores >= 0).all() and (image_scores <= 1).all()
        assert (image_boxes[:, :2] >= 0).all()
        assert (image_boxes[:, 2] <= width).all() and (image_boxes[:, 3] <= height).all()
        assert ((image_boxes[:, 2:] - image_boxes[:, :2]) >= smallest).all()
        # Nothing left overlaps above the NMS threshold.
        iou = torchvision.ops.box_iou(image_boxes, image_boxes)
        assert not (iou.triu(1) > 0.7).any()


def test_pre_and_post_nms_top_n():
    anchors, objectness, deltas = _rpn_outputs(1, batch=1)
    sizes = torch.tensor([[128, 160]])
    scores_all = objectness_scores(objectness)[0]
    # No suppression (IoU never exceeds 1): the output is exactly the pre-NMS top-N, in order.
    boxes, scores = generate_proposals(anchors, objectness, deltas, sizes, 7, 100, 1.0, 0.0)
    assert len(boxes[0]) == 7
    torch.testing.assert_close(scores[0], scores_all.topk(7).values, rtol=0, atol=0)
    # post_nms_top_n cuts after NMS.
    boxes, scores = generate_proposals(anchors, objectness, deltas, sizes, 500, 3, 0.7, 0.0)
    assert len(boxes[0]) == 3
    # Every proposal comes from the pre-NMS top-N.
    boxes, scores = generate_proposals(anchors, objectness, deltas, sizes, 25, 100, 0.5, 0.0)
    assert set(scores[0].tolist()) <= set(scores_all.topk(25).values.tolist())
    assert len(boxes[0]) < 25


def test_min_size_scaled_per_image():
    # The same predictions for two images; the top anchor's box is 10×10 pixels after decoding.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 60.0, 60.0], [100.0, 0.0, 132.0, 32.0]])
    objectness = torch.tensor([[3.0, 2.0, 1.0]]).expand(2, -1)
    deltas = torch.zeros(2, 3, 4)
    sizes = torch.tensor([[200, 200], [200, 200]])
    # rpn_min_size 16 in original pixels: image 0 kept its size, image 1 was shrunk by 1/4.
    boxes, scores = generate_proposals(anchors, objectness, deltas, sizes, 10, 10, 0.7, torch.tensor([16.0, 4.0]))
    assert boxes[0].tolist() == [[20.0, 20.0, 60.0, 60.0], [100.0, 0.0, 132.0, 32.0]]
    assert boxes[1].tolist() == anchors.tolist()
    # A plain float applies to every image; boxes are clipped before measuring.
    clipped_sizes = torch.tensor([[200, 110], [200, 200]])
    boxes, _ = generate_proposals(anchors, objectness, deltas, clipped_sizes, 10, 10, 0.7, 16.0)
    assert boxes[0].tolist() == [[20.0, 20.0, 60.0, 60.0]]        # anchor 2 clipped to 10 pixels wide
    assert boxes[1].tolist() == [[20.0, 20.0, 60.0, 60.0], [100.0, 0.0, 132.0, 32.0]]


def test_objectness_scores_variants():
    logits = torch.tensor([[[0.0, 0.0], [1.0, 3.0]]])
    torch.testing.assert_close(objectness_scores(logits), torch.sigmoid(torch.tensor([[0.0, 2.0]])))
    torch.testing.assert_close(objectness_scores(torch.tensor([[0.0, 2.0]])), torch.sigmoid(torch.tensor([[0.0, 2.0]])))
    assert objectness_scores(logits.bfloat16()).dtype == torch.float32


def test_tied_scores_keep_anchor_order():
    # Saturated (equal) objectness: the pre-NMS top-N and the output follow anchor order, on any device.
    xs = torch.arange(60, dtype=torch.float32) * 20
    anchors = torch.stack([xs, torch.zeros(60), xs + 16, torch.full((60,), 16.0)], dim=1)   # disjoint boxes
    objectness = torch.full((1, 60, 2), 0.0)
    objectness[0, :, 1] = 30.0                     # softmax gives exactly 1.0 for every anchor
    boxes, scores = generate_proposals(anchors, objectness, torch.zeros(1, 60, 4), torch.tensor([[16, 1200]]),
                                       10, 10, 0.7, 0.0)
    assert (scores[0] == 1.0).all()
    assert boxes[0].tolist() == anchors[:10].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proposal_steps_end_where_generate_proposals_ends(seed):
    from fasterrcnn_edu.proposals import proposal_steps

    generator = torch.Generator().manual_seed(seed)
    anchors = AnchorGenerator(16, (0.5, 1.0, 2.0), (2, 4, 8), 16)((16, 20), "cpu")
    objectness = torch.randn(anchors.shape[0], 2, generator=generator)
    objectness[:50] = objectness[0]                            # ties: the stable sort must keep anchor order
    deltas = 0.3 * torch.randn(anchors.shape[0], 4, generator=generator)
    size = torch.tensor([256, 320])
    steps = list(proposal_steps(anchors, objectness, deltas, size, 1000, 300, 0.7, 4.0))
    assert [s.name for s in steps] == ["decoded", "clipped", "min size", "top-N before NMS", "NMS", "top-N after NMS"]
    counts = [len(s.index) for s in steps]
    assert counts[0] == counts[1] == anchors.shape[0] and counts == sorted(counts, reverse=True)
    boxes, scores = generate_proposals(anchors, objectness[None], deltas[None], size[None], 1000, 300, 0.7, 4.0)
    last = steps[-1]
    assert torch.equal(last.boxes, boxes[0])
    assert torch.equal(objectness_scores(objectness[None])[0][last.index], scores[0])
