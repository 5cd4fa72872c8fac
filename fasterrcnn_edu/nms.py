"""Non-maximum suppression (paper §3.3): keep the best-scoring box, drop boxes that overlap it, repeat.

Two implementations that keep exactly the same boxes in the same order:

- `nms_readable`: a few lines of pure PyTorch (one vectorised IoU row per kept box) that the
  book steps through with `nms_steps`;
- `nms`: the fast path, torchvision's compiled kernel.

Both sort scores with a *stable* descending sort (ties: lower index first) and suppress a box
when IoU > threshold, computing IoU with the same arithmetic, so ties resolve identically.
`batched_nms` runs NMS independently per category (per class, or per image).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torchvision
from torch import Tensor

from fasterrcnn_edu.boxes import box_iou


def nms_steps(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Iterator[tuple[int, Tensor]]:
    """Greedy NMS one decision at a time: yields (kept index, indices it suppresses).

    boxes: (N, 4), scores: (N,). Indices refer to the input order.
    """
    remaining = torch.sort(scores, descending=True, stable=True).indices
    while remaining.numel() > 0:
        best, rest = remaining[0], remaining[1:]
        overlaps = box_iou(boxes[best][None], boxes[rest])[0]
        # Compare in float64, as torchvision's kernel compares its float IoU with a double threshold:
        # in float32, a threshold such as 0.3 would round to the IoU 0.3f and stop suppressing it.
        suppress = overlaps.double() > iou_threshold
        yield int(best), rest[suppress]
        remaining = rest[~suppress]     # "not >" also keeps NaN IoUs, as torchvision does


def nms_readable(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in pure PyTorch. boxes: (N, 4), scores: (N,) -> kept indices (K,) int64, best first."""
    kept = [best for best, _ in nms_steps(boxes.float(), scores.float(), iou_threshold)]
    return torch.tensor(kept, dtype=torch.int64, device=boxes.device)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """The fast path: torchvision's NMS kernel. Same contract as `nms_readable`."""
    return torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, categories: Tensor, iou_threshold: float,
                nms_fn: Callable[[Tensor, Tensor, float], Tensor] = nms) -> Tensor:
    """NMS within each category only. boxes: (N, 4), scores: (N,), categories: (N,) int -> kept (K,).

    The result is sorted by descending score with a stable sort. (torchvision's own `batched_nms`
    switches between two strategies by input size; offsetting boxes per category changes the float
    arithmetic of IoU, so we always run the plain per-category loop — a loop over classes, not boxes.)
    """
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for category in torch.unique(categories):
        members = torch.nonzero(categories == category).flatten()
        keep_mask[members[nms_fn(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep_mask).flatten()
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def batched_nms_readable(boxes: Tensor, scores: Tensor, categories: Tensor, iou_threshold: float) -> Tensor:
    """`batched_nms` with the readable NMS inside."""
    return batched_nms(boxes, scores, categories, iou_threshold, nms_fn=nms_readable)
