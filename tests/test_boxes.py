"""Box arithmetic (boxes.py) against torchvision's reference implementations."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from fasterrcnn_edu import boxes as B

PAPER_STD = (0.1, 0.1, 0.2, 0.2)     # our box_coder_std ≡ torchvision's BoxCoder weights (10, 10, 5, 5)


@pytest.mark.parametrize("seed", range(20))
def test_box_iou_matches_torchvision(seed, random_boxes):
    torch.manual_seed(seed)
    n, m = int(torch.randint(0, 40, ())), int(torch.randint(1, 40, ()))
    boxes1, boxes2 = random_boxes(n, max_side=60), random_boxes(m, max_side=60)
    ours = B.box_iou(boxes1, boxes2)
    assert ours.shape == (n, m)
    torch.testing.assert_close(ours, torchvision.ops.box_iou(boxes1, boxes2), rtol=0, atol=0)


def test_box_iou_hand_values_and_batched(random_boxes):
    torch.manual_seed(0)
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0, 0, 10, 5.0]])
    torch.testing.assert_close(B.box_iou(a, b), torch.tensor([[50 / 150, 1.0, 0.0, 0.5]]))
    assert B.box_area(b).tolist() == [100.0, 100.0, 100.0, 50.0]
    # Leading batch dims: (B, N, 4) x (B, M, 4) -> (B, N, M), each image on its own.
    boxes1, boxes2 = random_boxes(3 * 7).reshape(3, 7, 4), random_boxes(3 * 5).reshape(3, 5, 4)
    batched = B.box_iou(boxes1, boxes2)
    assert batched.shape == (3, 7, 5)
    for i in range(3):
        torch.testing.assert_close(batched[i], torchvision.ops.box_iou(boxes1[i], boxes2[i]), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("std, weights", [((1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)), (PAPER_STD, (10.0, 10.0, 5.0, 5.0))])
def test_encode_decode_match_torchvision_boxcoder(seed, std, weights, random_boxes):
    torch.manual_seed(seed)
    n = 200
    anchors = random_boxes(n, size=500, min_side=4, max_side=300)
    gt = random_boxes(n, size=500, min_side=2, max_side=300)
    coder = BoxCoder(weights)
    # torchvision: encode_single(reference_boxes=ground truth, proposals=anchors)
    torch.testing.assert_close(B.encode(anchors, gt, std), coder.encode_single(gt, anchors), rtol=1e-5, atol=1e-5)
    deltas = torch.randn(n, 4) * 2.0
    deltas[:5, 2:] = 50.0                  # past the exp() clamp: both must cap identically
    expected = coder.decode_single(deltas, anchors)
    torch.testing.assert_close(B.decode(anchors, deltas, std), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("std", [(1.0, 1.0, 1.0, 1.0), PAPER_STD])
def test_decode_inverts_encode(std, random_boxes):
    torch.manual_seed(1)
    anchors = random_boxes(500, size=800, min_side=8, max_side=400)
    gt = random_boxes(500, size=800, min_side=3, max_side=400)
    deltas = B.encode(anchors, gt, std)
    torch.testing.assert_close(B.decode(anchors, deltas, std), gt, rtol=0, atol=1e-3)
    # encode(x, x) is zero: a box is its own reference.
    torch.testing.assert_close(B.encode(gt, gt, std), torch.zeros(500, 4), rtol=0, atol=1e-6)
    # Batched leading dims broadcast: (1, A, 4) references against (B, A, 4) deltas.
    batched = B.decode(anchors[None], torch.stack([deltas, deltas]), std)
    assert batched.shape == (2, 500, 4)
    torch.testing.assert_close(batched[1], gt, rtol=0, atol=1e-3)


def test_decode_hand_values():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])        # centre (5, 10), w 10, h 20
    deltas = torch.tensor([[0.5, -0.25, math.log(2.0), 0.0]])
    torch.testing.assert_close(B.decode(anchor, deltas), torch.tensor([[0.0, -5.0, 20.0, 15.0]]))
    # With the paper std the same box needs deltas 10x / 5x larger.
    torch.testing.assert_close(B.decode(anchor, deltas / torch.tensor(PAPER_STD), PAPER_STD),
                               torch.tensor([[0.0, -5.0, 20.0, 15.0]]))
    torch.testing.assert_close(B.encode(anchor, torch.tensor([[0.0, -5.0, 20.0, 15.0]])), deltas)


def test_decode_overflow_guard():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [100.0, 100.0, 132.0, 164.0]])
    deltas = torch.tensor([[0.0, 0.0, 1e4, 1e4], [1.0, -1.0, 200.0, 88.0]])
    boxes = B.decode(anchors, deltas)
    assert torch.isfinite(boxes).all()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # exp(tw) is capped at 1000 / 16: a 16-pixel anchor can grow to 1000 pixels, not more.
    torch.testing.assert_close(widths, torch.tensor([1000.0, 2000.0]))
    torch.testing.assert_close(heights, torch.tensor([1000.0, 4000.0]))
    # Huge tw, th in half precision (bf16 max ~3e38) still give finite fp32 boxes of the capped size.
    boxes_bf16 = B.decode(anchors.bfloat16(), torch.tensor([[0.0, 0.0, 3e38, 3e38]] * 2).bfloat16())
    assert boxes_bf16.dtype == torch.float32 and torch.isfinite(boxes_bf16).all()
    torch.testing.assert_close(boxes_bf16[:, 2] - boxes_bf16[:, 0], torch.tensor([1000.0, 2000.0]))
    # Very negative deltas collapse the box to its centre instead of producing NaN.
    tiny = B.decode(anchors, torch.tensor([[0.0, 0.0, -1e4, -1e4]] * 2))
    assert torch.isfinite(tiny).all()
    torch.testing.assert_close(tiny[:, 2] - tiny[:, 0], torch.zeros(2))


def test_fp32_result_under_bf16_input(random_boxes):
    torch.manual_seed(2)
    anchors = random_boxes(100, size=900, min_side=16, max_side=500)
    gt = random_boxes(100, size=900, min_side=16, max_side=500)
    deltas = torch.randn(100, 4)
    a16, g16, d16 = anchors.bfloat16(), gt.bfloat16(), deltas.bfloat16()
    decoded = B.decode(a16, d16, PAPER_STD)
    encoded = B.encode(a16, g16, PAPER_STD)
    assert decoded.dtype == torch.float32 and encoded.dtype == torch.float32
    # The arithmetic itself is fp32: identical to running on the (exactly representable) upcast inputs.
    torch.testing.assert_close(decoded, B.decode(a16.float(), d16.float(), PAPER_STD), rtol=0, atol=0)
    torch.testing.assert_close(encoded, B.encode(a16.float(), g16.float(), PAPER_STD), rtol=0, atol=0)
    # Under autocast too.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert B.decode(a16, d16).dtype == torch.float32


@pytest.mark.parametrize("seed", range(10))
def test_clip_boxes_matches_torchvision(seed, random_boxes):
    torch.manual_seed(seed)
    boxes = random_boxes(100, size=200, max_side=120) - 40.0          # many cross every border
    height, width = int(torch.randint(20, 200, ())), int(torch.randint(20, 200, ()))
    expected = torchvision.ops.clip_boxes_to_image(boxes, (height, width))
    torch.testing.assert_close(B.clip_boxes(boxes, (height, width)), expected, rtol=0, atol=0)
    torch.testing.assert_close(B.clip_boxes(boxes, torch.tensor([height, width])), expected, rtol=0, atol=0)


def test_clip_boxes_batched_per_image_sizes(random_boxes):
    torch.manual_seed(3)
    boxes = random_boxes(2 * 50, size=200, max_side=150).reshape(2, 50, 4) - 30.0
    sizes = torch.tensor([[100, 160], [60, 40]])
    clipped = B.clip_boxes(boxes, sizes)
    for i, (h, w) in enumerate(sizes.tolist()):
        torch.testing.assert_close(clipped[i], torchvision.ops.clip_boxes_to_image(boxes[i], (h, w)), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(10))
def test_remove_small_boxes_matches_torchvision(seed, random_boxes):
    torch.manual_seed(seed)
    boxes = random_boxes(200, min_side=0.0, max_side=20.0)
    boxes[:10, 2] = boxes[:10, 0] + 5.0                    # exactly min_size wide: kept (>=)
    for min_size in (0.0, 1.0, 5.0, 12.5):
        expected = torchvision.ops.remove_small_boxes(boxes, min_size)
        assert torch.equal(B.remove_small_boxes(boxes, min_size), expected)
        assert torch.equal(torch.nonzero(B.small_box_mask(boxes, min_size)).flatten(), expected)
    # Per-image minimum sizes broadcast: (B, N, 4) against (B, 1).
    mask = B.small_box_mask(boxes.reshape(2, 100, 4), torch.tensor([[5.0], [12.5]]))
    assert torch.equal(torch.nonzero(mask[1]).flatten(), torchvision.ops.remove_small_boxes(boxes[100:], 12.5))


def test_box_iou_gradient_matches_the_out_of_place_formula():
    """box_iou reuses its buffers in place; the gradient must be unaffected."""
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(6, 2, generator=g) * 10
    boxes = torch.cat([corner, corner + 1 + torch.rand(6, 2, generator=g) * 5], 1).requires_grad_()
    corner = torch.rand(5, 2, generator=g) * 10
    others = torch.cat([corner, corner + 1 + torch.rand(5, 2, generator=g) * 5], 1)

    def reference(a, b):
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
        return inter / (area(a)[:, None] + area(b)[None, :] - inter)

    ours, = torch.autograd.grad(B.box_iou(boxes, others).sum(), boxes)
    expected, = torch.autograd.grad(reference(boxes, others).sum(), boxes)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, expected)
