"""Non-maximum suppression (paper §3.3): keep the best-scoring box, drop boxes that overlap it, repeat.

Two implementations that keep exactly the same boxes in the same order:

- `nms_readable`: a few lines of pure PyTorch (one vectorised IoU row per kept box) that the
  book steps through with `nms_steps`;
- `nms`: the fast path, torchvision's compiled kernel, and `nms_top`, which stops once the
  top-N boxes a caller will keep are decided (the RPN keeps 300 of 6000).

Both sort scores with a *stable* descending sort (ties: lower index first) and suppress a box
when IoU > threshold (the float32 IoU against the threshold as a double), computing IoU with the
same arithmetic, so on the CPU ties resolve identically. On CUDA they need not: torchvision's CUDA
kernel sorts without the stable flag (equal scores in any order) and compares its float32 IoU with
the threshold rounded to float32, so a box whose IoU is exactly float32(threshold) — above the
threshold itself for 0.3, 0.7 — survives there and is suppressed here (tests/test_devices.py).
`batched_nms` runs NMS independently per category (per class, or per image).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torchvision
from torch import Tensor

from fasterrcnn_edu.boxes import box_iou, check_boxes
from fasterrcnn_edu.pieces import piece


def check_nms_inputs(boxes: Tensor, scores: Tensor, where: str, categories: Tensor | None = None) -> None:
    """ValueError unless boxes is (N, 4) and scores (and categories) are (N,): the contract of every NMS here."""
    check_boxes(boxes, ndim=2, where=where)
    for name, values in (("scores", scores), ("categories", categories)):
        if values is not None and (not isinstance(values, Tensor) or values.shape != boxes.shape[:1]):
            got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"{where}: {name} must be a tensor of shape ({len(boxes)},), one per box, got {got}")


def float32_threshold(threshold: float) -> float:
    """The float32 number t32 with `iou > t32` ⟺ `iou > threshold` for every float32 `iou`.

    torchvision's CPU kernel compares its float32 IoU with the threshold as a double. Comparing a
    float32 tensor with a Python number rounds the number to float32 (0.3 -> 0.3f, which is a bit
    above 0.3), and an IoU of exactly 0.3f would then survive. Using the float32 just below the
    rounded number when rounding went up gives the double comparison's answer in float32 — on any
    device, MPS included, which has no float64.
    """
    rounded = torch.tensor(threshold, dtype=torch.float32)
    if rounded.item() > threshold:
        rounded = torch.nextafter(rounded, torch.tensor(-math.inf))
    return rounded.item()


def nms_steps(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Iterator[tuple[int, Tensor]]:
    """Greedy NMS one decision at a time: yields (kept index, indices it suppresses).

    boxes: (N, 4), scores: (N,). Indices refer to the input order.
    """
    check_nms_inputs(boxes, scores, "nms_steps")
    remaining = torch.sort(scores, descending=True, stable=True).indices
    while remaining.numel() > 0:
        best, rest = remaining[0], remaining[1:]
        overlaps = piece("iou", box_iou)(boxes[best][None], boxes[rest])[0]
        suppress = overlaps > float32_threshold(iou_threshold)
        yield int(best), rest[suppress]
        remaining = rest[~suppress]     # "not >" also keeps NaN IoUs, as torchvision does


def nms_readable(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in pure PyTorch. boxes: (N, 4), scores: (N,) -> kept indices (K,) int64, best first."""
    check_nms_inputs(boxes, scores, "nms_readable")
    kept = [best for best, _ in nms_steps(boxes.float(), scores.float(), iou_threshold)]
    return torch.tensor(kept, dtype=torch.int64, device=boxes.device)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_kept: int | None = None) -> Tensor:
    """The fast path: torchvision's NMS kernel. Same contract as `nms_readable`.

    max_kept: the caller keeps only the first `max_kept` boxes (the RPN's top-N after NMS), so
    stop once that many are kept — `nms_top` — instead of deciding about all N boxes.
    """
    check_nms_inputs(boxes, scores, "nms")
    if max_kept is not None and max_kept < len(boxes):
        return nms_top(boxes, scores, iou_threshold, max_kept)
    return torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold)


def nms_top(boxes: Tensor, scores: Tensor, iou_threshold: float, max_kept: int, min_block: int = 256) -> Tensor:
    """The first `max_kept` boxes greedy NMS keeps, without deciding about the rest. -> (≤ max_kept,) int64.

    Greedy NMS costs O(N × kept) and the RPN keeps only the top 300 (test) or 2000 (train) of
    6000-12000 boxes, so most of the kernel's work decides about boxes that are thrown away.
    Here the score-sorted boxes go in blocks: a block's boxes that overlap an already kept box are
    dropped, the kernel runs on the rest of the block (its greedy order is the score order, so
    this is exactly greedy NMS), and we stop as soon as `max_kept` boxes are kept. Each block is
    twice the number still missing, so one block usually suffices. (On CUDA every block costs one
    host synchronisation, as every call of the kernel already does; not measured on a GPU yet.)
    """
    check_nms_inputs(boxes, scores, "nms_top")
    boxes, scores = boxes.float(), scores.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    kept = order[:0]
    start = 0
    while start < len(order) and len(kept) < max_kept:
        block = order[start:start + max(min_block, 2 * (max_kept - len(kept)))]
        start += len(block)
        if len(kept):
            # As in nms_steps (no float64: MPS has none); NaN IoU never suppresses.
            overlaps = box_iou(boxes[block], boxes[kept]) > float32_threshold(iou_threshold)
            block = block[~overlaps.any(dim=1)]
        kept = torch.cat([kept, block[torchvision.ops.nms(boxes[block], scores[block], iou_threshold)]])
    return kept[:max_kept]


def batched_nms(boxes: Tensor, scores: Tensor, categories: Tensor, iou_threshold: float,
                nms_fn: Callable[[Tensor, Tensor, float], Tensor] | None = None) -> Tensor:
    """NMS within each category only. boxes: (N, 4), scores: (N,), categories: (N,) int -> kept (K,).

    The result is sorted by descending score with a stable sort. (torchvision's own `batched_nms`
    switches between two strategies by input size; offsetting boxes per category changes the float
    arithmetic of IoU, so we always run the plain per-category loop — a loop over classes, not boxes.)
    """
    check_nms_inputs(boxes, scores, "batched_nms", categories)
    nms_fn = nms_fn if nms_fn is not None else piece("nms", nms)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for category in torch.unique(categories):
        members = torch.nonzero(categories == category).flatten()
        keep_mask[members[nms_fn(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep_mask).flatten()
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def batched_nms_readable(boxes: Tensor, scores: Tensor, categories: Tensor, iou_threshold: float) -> Tensor:
    """`batched_nms` with the readable NMS inside."""
    return batched_nms(boxes, scores, categories, iou_threshold, nms_fn=nms_readable)
