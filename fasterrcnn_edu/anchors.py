"""Translation-invariant anchors (paper §3.1.1).

At every position of the last shared feature map the RPN predicts k boxes relative to k
reference boxes, the *anchors*: 3 scales × 3 aspect ratios = 9 by default. Because the same
k anchors are used at every position, the proposals are translation invariant.

Order (it must match the RPN's output tensors, see `rpn.py`): the anchor at feature position
(y, x) with index a in `base_anchors()` has row `(y * W + x) * k + a` — positions row-major, and
the k anchors of one position contiguous.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fasterrcnn_edu.pieces import piece


def base_anchors(base_size: float = 16, ratios=(0.5, 1.0, 2.0), scales=(8, 16, 32),
                 legacy: bool = False) -> Tensor:
    """The k = len(ratios) * len(scales) reference boxes at the first feature position.

    Returns (k, 4) float32 x1, y1, x2, y2, ordered ratio-major (all scales of ratio 0.5 first),
    as the released code orders them. `ratio` is height / width; an anchor of scale s has the
    area of a (base_size * s)² square.

    `legacy=False`: continuous coordinates centred on the first stride cell (centre base_size / 2),
    exact areas. `legacy=True`: the released py-faster-rcnn `generate_anchors()` number for number
    — inclusive pixel coordinates ("+1" widths) with widths rounded to whole pixels, centre 7.5.
    """
    ratios = torch.as_tensor(ratios, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64)
    if legacy:
        return _legacy_base_anchors(base_size, ratios, scales)
    side = base_size * scales                              # (S,) sqrt of the area
    widths = (side[None, :] / torch.sqrt(ratios)[:, None]).reshape(-1)   # (R*S,)
    heights = (side[None, :] * torch.sqrt(ratios)[:, None]).reshape(-1)
    center = base_size / 2.0
    anchors = torch.stack((center - widths / 2, center - heights / 2,
                           center + widths / 2, center + heights / 2), dim=1)
    return anchors.float()


def _legacy_base_anchors(base_size: float, ratios: Tensor, scales: Tensor) -> Tensor:
    """py-faster-rcnn's generate_anchors: ratio enumeration on a 16×16 box, then scale enumeration.

    Widths are rounded with round-half-to-even like NumPy's `np.round`, which the released code used.
    """
    size = base_size * base_size
    center = (base_size - 1) / 2.0                          # centre of pixels 0..15 inclusive: 7.5
    ratio_widths = torch.round(torch.sqrt(size / ratios))   # (R,) e.g. 23, 16, 11
    ratio_heights = torch.round(ratio_widths * ratios)      # (R,) e.g. 12, 16, 22
    widths = (ratio_widths[:, None] * scales[None, :]).reshape(-1)
    heights = (ratio_heights[:, None] * scales[None, :]).reshape(-1)
    anchors = torch.stack((center - 0.5 * (widths - 1), center - 0.5 * (heights - 1),
                           center + 0.5 * (widths - 1), center + 0.5 * (heights - 1)), dim=1)
    return anchors.float()


def grid_anchors(base: Tensor, feature_size: tuple[int, int], stride: int | float) -> Tensor:
    """Shift the k base anchors to every position of an H×W feature map.

    base: (k, 4); returns (H * W * k, 4) with row (y * W + x) * k + a holding anchor a shifted by
    (x * stride, y * stride) — the order of the RPN's flattened outputs.
    """
    height, width = feature_size
    ys = torch.arange(height, dtype=torch.float32, device=base.device) * stride
    xs = torch.arange(width, dtype=torch.float32, device=base.device) * stride
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")           # (H, W) each, row-major
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)


def feature_map_size(image_size: tuple[int, int], stride: int = 16) -> tuple[int, int]:
    """The (height, width) of the feature map of an image of (height, width) pixels: ceil(size / stride),
    as the backbone's padded convolutions and poolings give (a 600×1000 image at stride 16: 38×63)."""
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


def num_anchors(image_size: tuple[int, int], stride: int = 16, k: int = 9) -> int:
    """How many anchors an image of (height, width) pixels has: ceil(H/stride) * ceil(W/stride) * k.

    For the paper's ~1000×600 image and stride 16 this is 63 * 38 * 9 = 21546 ("~20000", §3.1.1).
    """
    rows, columns = feature_map_size(image_size, stride)
    return rows * columns * k


class AnchorGenerator:
    """Base anchors plus a small cache of their grids, keyed by feature size and device."""

    def __init__(self, base_size: float = 16, ratios=(0.5, 1.0, 2.0), scales=(8, 16, 32),
                 stride: int = 16, legacy: bool = False):
        self.base = base_anchors(base_size, ratios, scales, legacy)
        self.settings = (base_size, tuple(ratios), tuple(scales), legacy)
        self.stride = stride
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def from_sizes(cls, sizes, ratios=(0.5, 1.0, 2.0), stride: int = 16) -> "AnchorGenerator":
        """Anchors given by their side in pixels (torchvision's way, e.g. sizes (128, 256, 512)) rather
        than by scale: the base box is one stride cell, so scale = size / stride."""
        return cls(base_size=stride, ratios=ratios, scales=[size / stride for size in sizes], stride=stride)

    @property
    def num_anchors_per_location(self) -> int:
        return self.base.shape[0]

    def __call__(self, feature_size: tuple[int, int], device: torch.device) -> Tensor:
        """All anchors of an H×W feature map: (H * W * k, 4) float32 on `device`."""
        base_fn, grid_fn = piece("base_anchors", base_anchors), piece("grid_anchors", grid_anchors)
        # The pieces in force are part of the key: a replaced piece never reads the package's cached grid.
        key = (int(feature_size[0]), int(feature_size[1]), str(device), base_fn, grid_fn)
        if key not in self._cache:
            base = self.base if base_fn is base_anchors else base_fn(*self.settings)
            self._cache[key] = grid_fn(base.to(device), key[:2], self.stride)
        return self._cache[key]
