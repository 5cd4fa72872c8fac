"""RoI pooling and the Fast R-CNN detection head (Fast R-CNN, Girshick 2015; paper §3.2).

Each proposal (RoI) is cut out of the shared feature map and max-pooled to a fixed 7×7 grid
(SPPnet's pyramid with a single level). Fully connected layers then give K+1 class scores and
4K class-specific box deltas. Training samples 128 RoIs per image, 25 % foreground (IoU ≥ 0.5),
the rest background with IoU in [0.1, 0.5); the ground-truth boxes join the proposals.
At test time each class gets its own NMS at IoU 0.3, and at most 100 detections are kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fasterrcnn_edu import initialisation
from fasterrcnn_edu.boxes import box_iou, check_boxes, clip_boxes, decode, encode, small_box_mask
from fasterrcnn_edu.labeling import gather_matched, pad_flags, pad_ground_truth, sample_balanced
from fasterrcnn_edu.losses import fast_rcnn_losses
from fasterrcnn_edu.nms import batched_nms
from fasterrcnn_edu.pieces import piece


# ---------------------------------------------------------------------------------------------
# RoI max pooling
# ---------------------------------------------------------------------------------------------
def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round goes to even, which would move bins)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_pool_bins(rois: Tensor, output_size: int, spatial_scale: float, height: int, width: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bin boundaries of Fast R-CNN RoI max pooling, in feature-map cells.

    rois: (R, 4) x1, y1, x2, y2 in image pixels. Returns y_start, y_end, x_start, x_end: (R, P)
    int64, bin p covering rows [y_start, y_end). The RoI is snapped to the feature grid by rounding,
    given an inclusive size (end - start + 1, the Caffe convention torchvision keeps), split into
    P bins of real-valued size, each bin widened to whole cells (floor start, ceil end), then clipped.
    """
    start = _round_half_away(rois * spatial_scale)                                  # (R, 4)
    roi_w = (start[:, 2] - start[:, 0] + 1).clamp(min=1)
    roi_h = (start[:, 3] - start[:, 1] + 1).clamp(min=1)
    p = torch.arange(output_size, dtype=rois.dtype, device=rois.device)

    def edges(begin: Tensor, size: Tensor, limit: int) -> tuple[Tensor, Tensor]:
        bin_size = size[:, None] / output_size
        lo = torch.floor(p * bin_size) + begin[:, None]
        hi = torch.ceil((p + 1) * bin_size) + begin[:, None]
        return lo.clamp(0, limit).long(), hi.clamp(0, limit).long()

    y_start, y_end = edges(start[:, 1], roi_h, height)
    x_start, x_end = edges(start[:, 0], roi_w, width)
    return y_start, y_end, x_start, x_end


def roi_pool_readable(features: Tensor, rois: Tensor, output_size: int = 7, spatial_scale: float = 1 / 16
                      ) -> Tensor:
    """RoI max pooling in pure PyTorch, to read and to test against torchvision.

    features: (B, C, H, W); rois: (R, 5) rows (batch index, x1, y1, x2, y2) in image pixels
    -> (R, C, P, P). Max over a rectangle is separable: take the max over each bin's columns,
    then over its rows. Empty bins give 0. Memory grows as R·C·H·P·W: meant for small inputs.
    """
    _, _, height, width = features.shape
    y0, y1, x0, x1 = roi_pool_bins(rois[:, 1:].float(), output_size, spatial_scale, height, width)
    cols = torch.arange(width, device=features.device)
    rows = torch.arange(height, device=features.device)
    in_col = (cols >= x0[..., None]) & (cols < x1[..., None])                        # (R, P, W)
    in_row = (rows >= y0[..., None]) & (rows < y1[..., None])                        # (R, P, H)
    roi_features = features[rois[:, 0].long()]                                       # (R, C, H, W)
    lowest = torch.finfo(features.dtype).min
    # (R, C, H, 1, W) masked by (R, 1, 1, P, W): max over x gives (R, C, H, P).
    by_col = torch.where(in_col[:, None, None], roi_features[:, :, :, None, :], lowest).amax(dim=-1)
    # (R, C, 1, H, P) masked by (R, 1, P, H, 1): max over y gives (R, C, P, P).
    pooled = torch.where(in_row[:, None, :, :, None], by_col[:, :, None], lowest).amax(dim=3)
    empty = (y1 <= y0)[:, :, None] | (x1 <= x0)[:, None, :]                           # (R, P, P)
    return pooled.masked_fill(empty[:, None], 0.0)


def pool_rois(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, mode: str = "max") -> Tensor:
    """The fast path: torchvision's RoI max pooling (`mode="max"`) or RoIAlign (`mode="align"`).

    features: (B, C, H, W); rois: (R, 5) (batch index, x1, y1, x2, y2) -> (R, C, P, P).
    """
    # Under mixed precision the RoIs stay fp32 (box arithmetic), so the pooling runs in fp32 too.
    features, rois = features.float(), rois.float()
    if mode == "max":
        return torchvision.ops.roi_pool(features, rois, output_size, spatial_scale)
    if mode == "align":
        return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio=2, aligned=True)
    raise ValueError(f"roi pooling mode must be 'max' or 'align', got {mode!r}")


def rois_with_batch_index(boxes: list[Tensor]) -> Tensor:
    """Per-image boxes [(R_b, 4)] -> (ΣR_b, 5) rows (batch index, x1, y1, x2, y2)."""
    for i, b in enumerate(boxes):
        check_boxes(b, f"boxes[{i}]", ndim=2, where="rois_with_batch_index")
    index = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)


# ---------------------------------------------------------------------------------------------
# RoI sampling for training (Fast R-CNN §2.3)
# ---------------------------------------------------------------------------------------------
def sample_rois(proposals: list[Tensor], gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor,
                batch_size: int = 128, positive_fraction: float = 0.25, fg_iou: float = 0.5,
                bg_iou_low: float = 0.1, bg_iou_high: float = 0.5, box_std=(0.1, 0.1, 0.2, 0.2),
                generator: torch.Generator | None = None, gt_ignore: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Pick the RoIs of one training mini-batch per image.

    proposals: B tensors (P_b, 4); gt_boxes: (B, G, 4) padded; gt_labels: (B, G) int64; gt_valid: (B, G).
    Returns rois (B, S, 4), labels (B, S) int64 (class, 0 = background, -1 = unused slot) and
    target_deltas (B, S, 4) for the true class, with S = min(batch_size, candidates): fixed shapes.
    An image without ground truth gets background RoIs at any IoU (there is nothing to overlap).
    gt_ignore: (B, G) bool ignore regions (ours, `Config.difficult="ignore"`): never foreground nor
    added as candidates, and an RoI whose IoU with one reaches `bg_iou_high` is not background.
    """
    for i, p in enumerate(proposals):
        check_boxes(p, f"proposals[{i}]", ndim=2, where="sample_rois")
    check_boxes(gt_boxes, "gt_boxes", ndim=3, where="sample_rois")
    batch = len(proposals)
    real = gt_valid if gt_ignore is None else gt_valid & ~gt_ignore             # (B, G) objects to learn
    candidates = [torch.cat([p, g[v]]) for p, g, v in zip(proposals, gt_boxes, real)]
    length = max(c.shape[0] for c in candidates)
    boxes = gt_boxes.new_zeros(batch, length, 4)
    valid = torch.zeros(batch, length, dtype=torch.bool, device=gt_boxes.device)
    for i, c in enumerate(candidates):                                      # a loop over images
        boxes[i, : len(c)] = c
        valid[i, : len(c)] = True

    iou = piece("iou", box_iou)(boxes, gt_boxes)                              # (B, N, G)
    near_ignored = None
    if gt_ignore is not None:
        near_ignored = iou.masked_fill(~gt_ignore[:, None, :], -1.0).amax(dim=2) >= bg_iou_high
    iou = iou.masked_fill(~real[:, None, :], -1.0)
    max_iou, matched = iou.max(dim=2)
    has_gt = real.any(dim=1, keepdim=True)
    foreground = valid & (max_iou >= fg_iou)
    background = valid & (max_iou < bg_iou_high) & ((max_iou >= bg_iou_low) | ~has_gt)
    if near_ignored is not None:
        background &= ~near_ignored
    sampled_fg, sampled_bg = sample_balanced(foreground, background, batch_size, positive_fraction, generator)

    # Gather the sampled candidates into S fixed slots per image (stable: in candidate order).
    slots = min(batch_size, length)
    chosen = (sampled_fg | sampled_bg)
    slot_index = torch.sort(chosen.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :slots]
    rois = boxes.gather(1, slot_index[..., None].expand(-1, -1, 4))
    slot_used = chosen.gather(1, slot_index)
    slot_fg = sampled_fg.gather(1, slot_index)
    matched = matched.gather(1, slot_index)
    labels = torch.where(slot_fg, gt_labels.gather(1, matched), torch.zeros_like(matched))
    labels = torch.where(slot_used, labels, torch.full_like(labels, -1))
    target_deltas = piece("encode", encode)(rois, gather_matched(gt_boxes, matched), box_std)
    target_deltas = torch.where(slot_fg[..., None], target_deltas, torch.zeros_like(target_deltas))
    return rois, labels, target_deltas


# ---------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------
class FastRCNNPredictor(nn.Module):
    """Sibling outputs: K+1 class scores and 4K class-specific box deltas (Fast R-CNN §2)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes                      # K + 1, background included
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 * (num_classes - 1))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh weights, as Fast R-CNN initialises them: zero-mean Gaussians of std 0.01 (scores)
        and 0.001 (deltas), zero biases. Drawn on the CPU from `generator` (a CPU generator; None: the
        global one) on every device (`initialisation.normal_`)."""
        initialisation.normal_(self.cls_score.weight, std=0.01, generator=generator)
        initialisation.normal_(self.bbox_pred.weight, std=0.001, generator=generator)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (R, in_features) -> class logits (R, K+1), deltas (R, K, 4)."""
        # K explicitly, not -1: with zero RoIs (an image without proposals) -1 would be ambiguous.
        return self.cls_score(x), self.bbox_pred(x).reshape(x.shape[0], self.num_classes - 1, 4)


class RoIHeads(nn.Module):
    """Pooling + box head (fc layers) + predictor, with training-time sampling and test-time NMS."""

    def __init__(self, box_head: nn.Module, predictor: FastRCNNPredictor, cfg, spatial_scale: float):
        super().__init__()
        self.box_head = box_head
        self.predictor = predictor
        self.cfg = cfg
        self.spatial_scale = spatial_scale
        self.generator: torch.Generator | None = None   # seedable RoI sampling

    def classify(self, features: Tensor, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Pool every box of every image and run the head: -> logits (ΣR_b, K+1), deltas (ΣR_b, K, 4)."""
        rois = rois_with_batch_index(boxes)
        pooled = piece("roi_pool", pool_rois)(features, rois, self.cfg.roi_output_size, self.spatial_scale, self.cfg.roi_pool)
        return self.predictor(self.box_head(pooled))

    def forward(self, features: Tensor, proposals: list[Tensor], image_sizes: Tensor,
                targets: list[dict] | None = None):
        """Training (targets given): returns ({}, losses). Eval: returns (detections per image, {})."""
        if targets is not None:
            return {}, self.losses(features, proposals, targets)
        logits, deltas = self.classify(features, proposals)
        return self.postprocess(logits, deltas, proposals, image_sizes), {}

    def losses(self, features: Tensor, proposals: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        cfg = self.cfg
        gt_boxes, gt_valid = pad_ground_truth([t["boxes"] for t in targets], features.device)
        gt_labels = torch.zeros(gt_valid.shape, dtype=torch.int64, device=features.device)
        gt_labels[gt_valid] = torch.cat([t["labels"] for t in targets]).to(features.device)
        gt_ignore = pad_flags([t.get("ignore") for t in targets], gt_valid)
        rois, labels, target_deltas = piece("sample_rois", sample_rois)(
            [p.detach() for p in proposals], gt_boxes, gt_labels, gt_valid, cfg.roi_batch_size,
            cfg.roi_positive_fraction, cfg.roi_fg_iou, cfg.roi_bg_iou_low, cfg.roi_bg_iou_high,
            cfg.box_coder_std, self.generator, gt_ignore)
        logits, deltas = self.classify(features, list(rois))
        return fast_rcnn_losses(logits, deltas, labels.flatten(), target_deltas.flatten(0, 1),
                                cfg.det_lambda, cfg.det_smooth_l1_beta)

    def postprocess(self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_sizes: Tensor
                    ) -> list[dict[str, Tensor]]:
        """Class-specific boxes → score threshold → per-class NMS (0.3) → top 100, per image."""
        cfg = self.cfg
        probs, boxes = self.class_boxes(logits, deltas, proposals)                   # (R, K+1), (R, K, 4)
        probs = probs[:, 1:]                                                        # (R, K): no background
        num_classes = probs.shape[1]
        results = []
        for image_probs, image_boxes, size in zip(probs.split([len(p) for p in proposals]),
                                                  boxes.split([len(p) for p in proposals]), image_sizes):
            image_boxes = clip_boxes(image_boxes, size).reshape(-1, 4)
            labels = torch.arange(1, num_classes + 1, device=probs.device).repeat(image_probs.shape[0])
            scores = image_probs.reshape(-1)
            keep = (scores > cfg.score_thresh) & small_box_mask(image_boxes, 1e-2)
            image_boxes, scores, labels = image_boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(image_boxes, scores, labels, cfg.det_nms_thresh)[: cfg.detections_per_img]
            results.append({"boxes": image_boxes[keep], "labels": labels[keep], "scores": scores[keep]})
        return results

    def class_boxes(self, logits: Tensor, deltas: Tensor, proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The head's answer before any test-time step: softmax probabilities (ΣR_b, K+1), background in
        column 0, and one box per foreground class (ΣR_b, K, 4), each proposal decoded with that class's
        deltas (Eq. 2, divided by `box_coder_std`), in resized-image pixels, not clipped yet.

        logits, deltas: from `classify(features, proposals)`. `postprocess` starts from these boxes.
        """
        probs = F.softmax(logits.float(), dim=-1)
        return probs, piece("decode", decode)(torch.cat(proposals)[:, None, :], deltas, self.cfg.box_coder_std)
