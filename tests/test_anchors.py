"""Anchors (paper §3.1.1): the released code's numbers, exact areas and ratios, and the grid order
that must agree with the RPN head's output layout."""
from __future__ import annotations

import pytest
import torch

from fasterrcnn_edu.anchors import AnchorGenerator, base_anchors, feature_map_size, grid_anchors, num_anchors
from fasterrcnn_edu.rpn import RPNHead

# py-faster-rcnn lib/rpn/generate_anchors.py, generate_anchors() with its defaults.
RELEASED_ANCHORS = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]


def test_legacy_anchors_equal_released_code():
    anchors = base_anchors(legacy=True)
    assert anchors.dtype == torch.float32 and anchors.shape == (9, 4)
    assert anchors.tolist() == RELEASED_ANCHORS
    # Inclusive-pixel convention: every legacy anchor is centred on pixel 7.5.
    assert ((anchors[:, 0] + anchors[:, 2]) / 2).tolist() == [7.5] * 9
    assert ((anchors[:, 1] + anchors[:, 3]) / 2).tolist() == [7.5] * 9


@pytest.mark.parametrize("base_size, scales", [(16, (8, 16, 32)), (16, (2, 4, 8)), (10, (1, 3))])
def test_anchor_areas_ratios_and_centre(base_size, scales):
    ratios = (0.5, 1.0, 2.0)
    anchors = base_anchors(base_size, ratios, scales).double()
    assert anchors.shape == (len(ratios) * len(scales), 4)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    # Ratio-major order: row r * S + s has ratio ratios[r] and scale scales[s].
    expected_area = torch.tensor([(base_size * s) ** 2 for _ in ratios for s in scales], dtype=torch.float64)
    expected_ratio = torch.tensor([r for r in ratios for _ in scales], dtype=torch.float64)
    torch.testing.assert_close(widths * heights, expected_area, rtol=1e-6, atol=0)
    torch.testing.assert_close(heights / widths, expected_ratio, rtol=1e-6, atol=0)
    square = expected_ratio == 1.0
    assert torch.equal(widths[square] * heights[square], expected_area[square])      # exact for 1:1
    centre = torch.full((len(anchors),), base_size / 2.0, dtype=torch.float64)
    torch.testing.assert_close((anchors[:, 0] + anchors[:, 2]) / 2, centre, rtol=0, atol=1e-5)
    torch.testing.assert_close((anchors[:, 1] + anchors[:, 3]) / 2, centre, rtol=0, atol=1e-5)


def test_default_anchor_sizes():
    anchors = base_anchors()
    sides = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).sqrt()
    torch.testing.assert_close(sides, torch.tensor([128.0, 256.0, 512.0] * 3), rtol=1e-6, atol=0)
    assert anchors[4].tolist() == [-120.0, -120.0, 136.0, 136.0]     # 256² square centred at (8, 8)


@pytest.mark.parametrize("height, width, stride", [(3, 5, 16), (4, 1, 8), (1, 1, 16)])
def test_grid_anchor_order(height, width, stride):
    base = base_anchors(16, (0.5, 1.0, 2.0), (2, 4))
    k = base.shape[0]
    grid = grid_anchors(base, (height, width), stride)
    assert grid.shape == (height * width * k, 4)
    for y in range(height):
        for x in range(width):
            for a in range(k):
                shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=torch.float32)
                assert torch.equal(grid[(y * width + x) * k + a], base[a] + shift)


def test_feature_map_size_rounds_up():
    assert feature_map_size((600, 1000)) == (38, 63)
    assert feature_map_size((256, 320)) == (16, 20)
    assert feature_map_size((257, 320)) == (17, 20)                # a partial cell still has a position
    assert feature_map_size((256, 320), stride=32) == (8, 10)


def test_from_sizes_gives_anchors_of_those_sides():
    generator = AnchorGenerator.from_sizes((32, 64, 128), ratios=(1.0,), stride=16)
    sides = generator.base[:, 2] - generator.base[:, 0]
    assert torch.allclose(sides, torch.tensor([32.0, 64.0, 128.0]))
    # the book preset's anchors (base 16, scales 2, 4, 8) are sizes 32, 64, 128
    book = AnchorGenerator(16, (0.5, 1.0, 2.0), (2, 4, 8), 16)
    assert torch.allclose(AnchorGenerator.from_sizes((32, 64, 128)).base, book.base)


def test_num_anchors_paper_image():
    assert num_anchors((600, 1000)) == 21546          # "~20000" (paper §3.1.1): 38 * 63 * 9
    assert num_anchors((256, 320)) == 16 * 20 * 9
    generator = AnchorGenerator()
    assert generator((38, 63), torch.device("cpu")).shape == (21546, 4)


def test_anchor_generator_cache_and_legacy():
    generator = AnchorGenerator(scales=(2, 4, 8), stride=16)
    first = generator((4, 5), torch.device("cpu"))
    assert generator((4, 5), torch.device("cpu")) is first
    assert torch.equal(first, grid_anchors(base_anchors(scales=(2, 4, 8)), (4, 5), 16))
    assert generator.num_anchors_per_location == 9
    legacy = AnchorGenerator(legacy=True)
    assert legacy((1, 2), torch.device("cpu"))[9:].tolist() == [[x1 + 16, y1, x2 + 16, y2]
                                                                 for x1, y1, x2, y2 in RELEASED_ANCHORS]


@pytest.mark.parametrize("cls_loss", ["softmax", "sigmoid"])
def test_rpn_head_layout_matches_anchor_order(cls_loss):
    """Prediction row (y * W + x) * k + a of the RPN head must come from position (y, x) and anchor a's
    channels, the same row that `grid_anchors` gives anchor a at (y, x)."""
    torch.manual_seed(0)
    batch, height, width, k = 2, 3, 5, 9
    head = RPNHead(in_channels=1, mid_channels=1, num_anchors=k, cls_loss=cls_loss)
    with torch.no_grad():
        # hidden = relu(centre tap of the 3×3 conv) = the feature value itself (all positive).
        head.conv.weight.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0
        head.conv.bias.zero_()
        # Output channel c = 1000 * hidden + c: the value tells position and channel apart.
        for layer in (head.reg, head.cls):
            layer.weight.fill_(1000.0)
            layer.bias.copy_(torch.arange(layer.out_channels, dtype=torch.float32))
    # Feature value at (b, y, x): 1 + b * 100 + y * W + x, unique per image and position.
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    position = (ys * width + xs).float()
    features = torch.stack([1 + b * 100 + position for b in range(batch)])[:, None]   # (B, 1, H, W)
    objectness, deltas = head(features)
    scores_per_anchor = 2 if cls_loss == "softmax" else 1
    assert deltas.shape == (batch, height * width * k, 4)
    assert objectness.shape == ((batch, height * width * k, 2) if cls_loss == "softmax" else (batch, height * width * k))
    objectness = objectness.reshape(batch, height * width * k, scores_per_anchor)
    anchors = grid_anchors(base_anchors(), (height, width), 16)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                value = 1000.0 * (1 + b * 100 + y * width + x)
                for a in range(k):
                    row = (y * width + x) * k + a
                    assert deltas[b, row].tolist() == [value + a * 4 + j for j in range(4)]
                    assert objectness[b, row].tolist() == [value + a * scores_per_anchor + c
                                                           for c in range(scores_per_anchor)]
                    # ... and grid_anchors puts anchor a at (y, x) in that same row.
                    assert torch.equal(anchors[row], base_anchors()[a] + torch.tensor([x, y, x, y]) * 16.0)
