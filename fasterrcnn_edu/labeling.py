"""Which anchors are objects? Labeling and mini-batch sampling for the RPN (paper §3.1.2).

An anchor is **positive** if (i) it is (one of) the anchor(s) with the highest IoU with some
ground-truth box, or (ii) its IoU with any ground-truth box is higher than 0.7. It is **negative**
if it is not positive and its IoU is lower than 0.3 with every ground-truth box. Everything else
is ignored. Anchors that cross the image boundary are ignored during training (paper §3.3).
Each image then contributes a random mini-batch of 256 anchors, up to half of them positive.

Everything is batched: ground truth is padded to (B, G, 4) with a validity mask, so one call
labels all images without a Python loop over images, anchors or boxes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fasterrcnn_edu.boxes import box_iou, check_boxes
from fasterrcnn_edu.pieces import piece

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@dataclass
class AnchorLabels:
    """labels: (B, A) int8 in {1, 0, -1}; matched_gt: (B, A) int64 index of the best ground truth;
    max_iou: (B, A) float32, that best IoU (0 if the image has no ground truth, -1 for anchors outside the image)."""

    labels: Tensor
    matched_gt: Tensor
    max_iou: Tensor


def pad_ground_truth(boxes: list[Tensor], device=None) -> tuple[Tensor, Tensor]:
    """Stack per-image ground truth of different lengths.

    boxes: list of B tensors (G_b, 4) -> padded (B, G, 4) with G = max(1, max G_b) and valid (B, G) bool.
    """
    for i, b in enumerate(boxes):
        check_boxes(b, f"boxes[{i}]", ndim=2, where="pad_ground_truth")
    device = device if device is not None else (boxes[0].device if boxes else "cpu")
    max_boxes = max([1] + [b.shape[0] for b in boxes])
    padded = torch.zeros(len(boxes), max_boxes, 4, device=device)
    valid = torch.zeros(len(boxes), max_boxes, dtype=torch.bool, device=device)
    for i, b in enumerate(boxes):          # a loop over images, not boxes
        padded[i, : b.shape[0]] = b
        valid[i, : b.shape[0]] = True
    return padded, valid


def pad_flags(flags: list[Tensor | None], valid: Tensor) -> Tensor | None:
    """Per-image boolean flags of the ground truth (e.g. "ignore"), padded like `pad_ground_truth`.

    flags: B tensors (G_b,) bool, or None for an image without flags; valid: (B, G) from
    `pad_ground_truth` -> (B, G) bool (False on padding), or None if no image has flags.
    """
    if all(f is None for f in flags):
        return None
    padded = torch.zeros_like(valid)
    for i, f in enumerate(flags):          # a loop over images, not boxes
        if f is not None:
            padded[i, : f.shape[0]] = f.to(padded.device).bool()
    return padded


def inside_image(anchors: Tensor, image_sizes: Tensor) -> Tensor:
    """anchors: (A, 4), image_sizes: (B, 2) as (height, width) -> (B, A) True where fully inside."""
    check_boxes(anchors, "anchors", ndim=2, where="inside_image")
    height, width = image_sizes[:, 0:1].to(anchors.dtype), image_sizes[:, 1:2].to(anchors.dtype)
    return ((anchors[None, :, 0] >= 0) & (anchors[None, :, 1] >= 0)
            & (anchors[None, :, 2] <= width) & (anchors[None, :, 3] <= height))


def _check_anchors_and_gt(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, where: str) -> None:
    """ValueError unless anchors is (A, 4), gt_boxes (B, G, 4) and gt_valid (B, G)."""
    check_boxes(anchors, "anchors", ndim=2, where=where)
    check_boxes(gt_boxes, "gt_boxes", ndim=3, where=where)
    if not isinstance(gt_valid, Tensor) or gt_valid.shape != gt_boxes.shape[:2]:
        raise ValueError(f"{where}: gt_valid must be a (B, G) = {tuple(gt_boxes.shape[:2])} tensor, got "
                         f"{tuple(gt_valid.shape) if isinstance(gt_valid, Tensor) else type(gt_valid).__name__}")


def label_anchors(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, image_sizes: Tensor | None = None,
                  fg_iou: float = 0.7, bg_iou: float = 0.3, gt_ignore: Tensor | None = None) -> AnchorLabels:
    """Label every anchor of every image positive, negative or ignored (paper §3.1.2).

    anchors: (A, 4); gt_boxes: (B, G, 4) padded; gt_valid: (B, G) bool;
    image_sizes: (B, 2) (height, width) — if given, anchors crossing the boundary are ignored (§3.3).
    gt_ignore: (B, G) bool, ignore regions (difficult / crowd objects, `Config.difficult="ignore"`,
    ours): they make no anchor positive, and an anchor whose IoU with one reaches `bg_iou` is
    ignored rather than negative.
    """
    _check_anchors_and_gt(anchors, gt_boxes, gt_valid, "label_anchors")
    batch = gt_boxes.shape[0]
    # Padding becomes the degenerate box (0, 0, 0, 0), whose IoU with any anchor is 0: cheaper
    # than masking the (B, G, A) IoU matrix for it afterwards.
    gt_boxes = gt_boxes * gt_valid[:, :, None]
    # Ground truth is the outer dimension: the reductions then run over long contiguous anchor rows.
    iou = piece("iou", box_iou)(gt_boxes, anchors.expand(batch, -1, -1))    # (B, G, A)
    inside = inside_image(anchors, image_sizes) if image_sizes is not None else None
    if inside is not None:
        # -1: an anchor we may not train on is nobody's match, not even a negative one (masked in
        # place: the IoU matrix is the biggest tensor here).
        iou.masked_fill_(~inside[:, None, :], -1.0)

    near_ignored = None
    if gt_ignore is not None:
        # Take the ignore regions out of the matching: their rows become "no overlap" (-1).
        near_ignored = iou.masked_fill(~gt_ignore[:, :, None], -1.0).amax(dim=1) >= bg_iou   # (B, A)
        iou.masked_fill_(gt_ignore[:, :, None], -1.0)
    max_iou, matched_gt = iou.max(dim=1)                                    # (B, A) best ground truth per anchor
    negative = max_iou < bg_iou
    if near_ignored is not None:
        negative &= ~near_ignored
    if inside is not None:
        negative &= inside
    # Rule (i): the best anchor(s) of each ground truth are positive even if their IoU is low,
    # so that every object gets at least one positive. Ties count; a box no anchor touches (best
    # IoU 0, padding included) does not: its "best" is set to 2, which no IoU equals.
    best_per_gt = iou.amax(dim=2, keepdim=True)                             # (B, G, 1)
    best_per_gt.masked_fill_(best_per_gt <= 0, 2.0)
    positive = (max_iou > fg_iou) | (iou == best_per_gt).any(dim=1)
    labels = torch.full_like(matched_gt, IGNORED, dtype=torch.int8)
    labels.masked_fill_(negative, NEGATIVE).masked_fill_(positive, POSITIVE)
    return AnchorLabels(labels, matched_gt, max_iou)


def _random_subset(mask: Tensor, noise: Tensor, count: Tensor, max_count: int) -> Tensor:
    """Keep `count[b]` random True elements of each row of `mask` (all of them if there are fewer).

    mask, noise: (B, N); count: (B,) with count ≤ max_count -> (B, N) bool. The elements with the
    smallest noise win; `topk` of `max_count` (≤ 256) is much cheaper than sorting all N anchors.
    """
    keys = torch.where(mask, noise, 2.0)
    k = min(max_count, mask.shape[1])
    picked = keys.topk(k, dim=1, largest=False).indices                       # (B, k), smallest first
    keep = mask.gather(1, picked) & (torch.arange(k, device=mask.device) < count[:, None])
    return torch.zeros_like(mask).scatter_(1, picked, keep)


def sample_balanced(positive: Tensor, negative: Tensor, batch_size: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random mini-batch per row: up to `batch_size * positive_fraction` positives, padded with negatives.

    positive, negative: (B, N) bool -> sampled_positive, sampled_negative: (B, N) bool.
    Shared by the RPN (256 anchors, 1:1) and the Fast R-CNN head (128 RoIs, 25 % foreground).
    Works on masks of fixed shape, so it never synchronises with the host.
    """
    gen_device = generator.device if generator is not None else positive.device
    noise = torch.rand(positive.shape, generator=generator, device=gen_device).to(positive.device)
    max_pos = int(batch_size * positive_fraction)
    num_pos = torch.clamp(positive.sum(dim=1), max=max_pos)
    num_neg = torch.clamp(batch_size - num_pos, min=0)
    return (_random_subset(positive, noise, num_pos, max_pos),
            _random_subset(negative, noise, num_neg, batch_size))


def gather_matched(gt_boxes: Tensor, matched_gt: Tensor) -> Tensor:
    """gt_boxes: (B, G, 4), matched_gt: (B, N) -> (B, N, 4) the matched ground-truth box of each element."""
    return gt_boxes.gather(1, matched_gt[..., None].expand(-1, -1, 4))


@dataclass
class AnchorMatches:
    """The two positive rules of §3.1.2, per ground-truth box (see `match_anchors`).

    iou: (B, G, A) IoU of ground truth g with anchor a: -1 for anchors outside the image (when the
    image sizes are given) and for padding rows; best_iou: (B, G) each ground truth's highest IoU
    (-1 for padding); best: (B, G, A) bool, rule (i): a is (one of) the highest-IoU anchor(s) of g;
    above: (B, G, A) bool, rule (ii): IoU above the positive threshold.
    """

    iou: Tensor
    best_iou: Tensor
    best: Tensor
    above: Tensor


def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, image_sizes: Tensor | None = None,
                  fg_iou: float = 0.7) -> AnchorMatches:
    """Which anchors each ground-truth box makes positive, rule by rule, as `label_anchors` decides.

    anchors: (A, 4); gt_boxes: (B, G, 4) padded; gt_valid: (B, G) bool; image_sizes: (B, 2) (height,
    width) — if given, anchors crossing the boundary match nothing (IoU -1), as in training (§3.3).
    Rule (i) counts ties and, like `label_anchors`, leaves out a box that no anchor touches (best IoU
    0). An anchor of `label_anchors` is positive by the rules iff `(best | above).any(dim=1)`.
    (Ignore regions, `gt_ignore` of `label_anchors`, are not taken into account here.)
    """
    _check_anchors_and_gt(anchors, gt_boxes, gt_valid, "match_anchors")
    batch = gt_boxes.shape[0]
    iou = box_iou(gt_boxes, anchors.expand(batch, -1, -1))                  # (B, G, A)
    iou.masked_fill_(~gt_valid[:, :, None], -1.0)
    if image_sizes is not None:
        iou.masked_fill_(~inside_image(anchors, image_sizes)[:, None, :], -1.0)
    best_iou = iou.amax(dim=2) if iou.shape[2] else torch.full(gt_valid.shape, -1.0, device=iou.device)
    best = (iou == best_iou[:, :, None]) & (best_iou[:, :, None] > 0)
    return AnchorMatches(iou, best_iou, best, iou > fg_iou)
