"""Box arithmetic: areas, pairwise IoU, the paper's box parameterization (Eq. 2), clipping.

Boxes are `(N, 4)` tensors of continuous pixel coordinates `x1, y1, x2, y2` (width = x2 - x1),
the convention of torchvision and Detectron2. The paper's released code added "+1" to widths;
`anchors.base_anchors(legacy=True)` shows where that matters. Box arithmetic runs in fp32 even
under mixed precision: a half-precision exp() or subtraction of large coordinates loses pixels.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# exp(dw) is capped so a wild regression output cannot overflow to inf (torchvision uses the same bound).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def check_boxes(boxes, name: str = "boxes", ndim: int | None = None, where: str = "") -> None:
    """Refuse with a ValueError anything that is not a tensor of boxes (or box deltas) `(..., 4)`.

    ndim: the exact number of dimensions wanted (2 for `(N, 4)`, 3 for `(B, N, 4)`); None: any
    number of at least 1. Only the shape is looked at, never the values (no GPU synchronisation).
    An `(N, 5)` tensor, say (x1, y1, x2, y2, score), would otherwise be read as its first four columns.
    """
    shape = tuple(getattr(boxes, "shape", ()))
    want = "(..., 4)" if ndim is None else {1: "(4,)", 2: "(N, 4)", 3: "(B, N, 4)"}.get(ndim, f"{ndim}-D (..., 4)")
    if not isinstance(boxes, Tensor) or not shape or shape[-1] != 4 or (ndim is not None and len(shape) != ndim):
        got = f"a tensor of shape {shape}" if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{where + ': ' if where else ''}{name} must be a tensor of shape {want}, got {got}")


def as_boxes(boxes, name: str = "boxes", where: str = "") -> Tensor:
    """`boxes` (a tensor, array or nested list) as an `(N, 4)` tensor, or a ValueError naming `name`.

    What callers hand in for "no boxes" ([] or a (0,) tensor) becomes (0, 4), and one box (4,)
    becomes (1, 4). Any other shape is refused: `reshape(-1, 4)` would read the rows of an
    (N, 5) tensor as 5 N / 4 other boxes whenever N is a multiple of 4.
    """
    if not isinstance(boxes, Tensor):
        boxes = torch.as_tensor(np.asarray(boxes))
    if boxes.dim() == 1 and boxes.numel() in (0, 4):
        return boxes.reshape(-1, 4)
    check_boxes(boxes, name, ndim=2, where=where)
    return boxes


def box_area(boxes: Tensor) -> Tensor:
    """Areas of `boxes: (..., 4)`; returns `(...)`."""
    check_boxes(boxes, where="box_area")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection-over-union.

    boxes1: (..., N, 4), boxes2: (..., M, 4) with the same leading (batch) dims -> (..., N, M).
    The arithmetic order, inter / ((area1 + area2) - inter), matches torchvision's NMS kernel so
    that our NMS and theirs break exact-threshold ties identically. A degenerate box (zero width
    or height) has IoU 0 with everything.
    """
    check_boxes(boxes1, "boxes1", where="box_iou")
    check_boxes(boxes2, "boxes2", where="box_iou")
    if boxes1.dim() < 2 or boxes2.dim() < 2:
        raise ValueError(f"box_iou: boxes1 and boxes2 must be (..., N, 4) and (..., M, 4), "
                         f"got shapes {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    area1 = box_area(boxes1)[..., :, None]
    area2 = box_area(boxes2)[..., None, :]
    # One (N, M) plane per coordinate keeps every pass over the big matrix contiguous.
    left = torch.maximum(boxes1[..., :, None, 0], boxes2[..., None, :, 0])
    top = torch.maximum(boxes1[..., :, None, 1], boxes2[..., None, :, 1])
    right = torch.minimum(boxes1[..., :, None, 2], boxes2[..., None, :, 2])
    bottom = torch.minimum(boxes1[..., :, None, 3], boxes2[..., None, :, 3])
    # In place: the (N, M) planes are the big tensors, so reuse them instead of allocating more
    # (autograd still works: no backward formula here needs a value that gets overwritten).
    inter = right.sub_(left).clamp_(min=0).mul_(bottom.sub_(top).clamp_(min=0))
    return inter.div_((area1 + area2).sub_(inter))


def _centers_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode(reference: Tensor, boxes: Tensor, std: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Paper Eq. 2: the regression targets that move `reference` boxes onto `boxes`.

    reference (anchors or proposals): (..., 4); boxes: (..., 4) -> deltas (..., 4) = (tx, ty, tw, th) / std, with
    tx = (x - xa) / wa, ty = (y - ya) / ha, tw = log(w / wa), th = log(h / ha).
    """
    check_boxes(reference, "reference", where="encode")
    check_boxes(boxes, where="encode")
    rx, ry, rw, rh = _centers_sizes(reference.float())
    gx, gy, gw, gh = _centers_sizes(boxes.float())
    deltas = torch.stack(((gx - rx) / rw, (gy - ry) / rh, torch.log(gw / rw), torch.log(gh / rh)), dim=-1)
    return deltas / deltas.new_tensor(std)


def decode(reference: Tensor, deltas: Tensor, std: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Inverse of `encode`: apply `deltas: (..., 4)` to `reference: (..., 4)` boxes -> boxes (..., 4).

    Runs in fp32 whatever the input precision; tw, th are clamped so exp() cannot overflow.
    """
    check_boxes(reference, "reference", where="decode")
    check_boxes(deltas, "deltas", where="decode")
    deltas = deltas.float() * deltas.new_tensor(std, dtype=torch.float32)
    rx, ry, rw, rh = _centers_sizes(reference.float())
    dx, dy = deltas[..., 0], deltas[..., 1]
    dw, dh = deltas[..., 2].clamp(max=MAX_LOG_SCALE), deltas[..., 3].clamp(max=MAX_LOG_SCALE)
    cx, cy = dx * rw + rx, dy * rh + ry
    w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Clip `boxes: (..., N, 4)` to the image `(height, width)`.

    `image_size` may be a tensor `(..., 2)` of per-image sizes matching the leading dims, so a batch
    of differently sized images is clipped in one call.
    """
    check_boxes(boxes, where="clip_boxes")
    size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device)
    height, width = size[..., 0, None], size[..., 1, None]
    x = boxes[..., 0::2].clamp(min=0)
    y = boxes[..., 1::2].clamp(min=0)
    x = torch.minimum(x, width[..., None])
    y = torch.minimum(y, height[..., None])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def small_box_mask(boxes: Tensor, min_size: float | Tensor) -> Tensor:
    """True where a box of `boxes: (..., 4)` is at least `min_size` wide and high (broadcasts)."""
    check_boxes(boxes, where="small_box_mask")
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return (widths >= min_size) & (heights >= min_size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes in `boxes: (N, 4)` whose sides are both ≥ `min_size` (torchvision's signature)."""
    check_boxes(boxes, ndim=2, where="remove_small_boxes")
    return torch.nonzero(small_box_mask(boxes, min_size)).flatten()
