"""The Region Proposal Network (paper §3.1): a small fully convolutional net on the shared features.

An n×n (3×3) conv slides over the last shared feature map, maps each window to a 512-d (VGG)
feature, followed by ReLU and two sibling 1×1 convs: `cls` with 2k objectness scores and `reg`
with 4k box deltas, one pair per anchor. Output layout: channel `a * 2 + c` (cls) and
`a * 4 + j` (reg) belong to anchor a; flattening (B, H, W, k, ·) row-major gives the anchor order
of `anchors.grid_anchors`, so prediction i belongs to anchor i.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fasterrcnn_edu import initialisation
from fasterrcnn_edu.anchors import AnchorGenerator
from fasterrcnn_edu.boxes import encode
from fasterrcnn_edu.labeling import (NEGATIVE, POSITIVE, gather_matched, label_anchors, pad_flags, pad_ground_truth,
                                     sample_balanced)
from fasterrcnn_edu.losses import rpn_losses
from fasterrcnn_edu.pieces import piece
from fasterrcnn_edu.proposals import generate_proposals
from fasterrcnn_edu.transforms import ImageBatch


class RPNHead(nn.Module):
    """3×3 conv → ReLU → sibling 1×1 convs (2k scores, or k for the sigmoid variant; 4k deltas)."""

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int, cls_loss: str = "softmax"):
        super().__init__()
        self.num_anchors = num_anchors
        self.scores_per_anchor = 2 if cls_loss == "softmax" else 1
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls = nn.Conv2d(mid_channels, num_anchors * self.scores_per_anchor, 1)
        self.reg = nn.Conv2d(mid_channels, num_anchors * 4, 1)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh weights, paper §3.1.3: zero-mean Gaussian, std 0.01; zero biases. Drawn on the CPU from
        `generator` (a CPU generator; None: the global one) on every device (`initialisation.normal_`)."""
        for layer in (self.conv, self.cls, self.reg):
            initialisation.normal_(layer.weight, std=0.01, generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features: (B, C, H, W) -> objectness (B, H*W*k, 2) or (B, H*W*k), deltas (B, H*W*k, 4)."""
        hidden = torch.relu(self.conv(features))
        batch, _, height, width = features.shape
        k = self.num_anchors
        scores = self.cls(hidden).reshape(batch, k, self.scores_per_anchor, height, width)
        scores = scores.permute(0, 3, 4, 1, 2).reshape(batch, height * width * k, self.scores_per_anchor)
        deltas = self.reg(hidden).reshape(batch, k, 4, height, width)
        deltas = deltas.permute(0, 3, 4, 1, 2).reshape(batch, height * width * k, 4)
        return (scores if self.scores_per_anchor == 2 else scores[..., 0]), deltas


class RegionProposalNetwork(nn.Module):
    """RPN head + anchors + training targets/loss + proposal generation, for a batch of images."""

    def __init__(self, cfg, in_channels: int, stride: int):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(cfg.anchor_base_size, cfg.anchor_ratios, cfg.anchor_scales,
                                                stride, cfg.legacy_anchors)
        self.head = RPNHead(in_channels, cfg.rpn_channels, self.anchor_generator.num_anchors_per_location,
                            cfg.rpn_cls_loss)
        self.generator: torch.Generator | None = None   # seedable mini-batch sampling

    def forward(self, features: Tensor, batch: ImageBatch, targets: list[dict] | None = None,
                propose: bool = True, pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None
                ) -> tuple[list[Tensor] | None, dict[str, Tensor]]:
        """Returns proposals (B tensors (P_b, 4), or None if `propose=False`) and the losses if targets are given.

        pre_nms_top_n / post_nms_top_n: proposal counts; None means the config's for the current
        mode (12000/2000 train, 6000/300 test in the paper preset).
        """
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(features.shape[-2:], features.device)
        proposals = None
        if propose:
            cfg = self.cfg
            pre, post = ((cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train) if self.training
                         else (cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test))
            pre = pre if pre_nms_top_n is None else pre_nms_top_n
            post = post if post_nms_top_n is None else post_nms_top_n
            proposals, _ = piece("proposals", generate_proposals)(anchors, objectness.detach(), deltas.detach(), batch.image_sizes,
                                              pre, post, cfg.rpn_nms_thresh, cfg.rpn_min_size * batch.scales)
        losses = {}
        if targets is not None:
            losses = self.losses(anchors, objectness, deltas, batch, targets, features.shape[-2] * features.shape[-1])
        return proposals, losses

    def losses(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, batch: ImageBatch,
               targets: list[dict], num_locations: int) -> dict[str, Tensor]:
        cfg = self.cfg
        gt_boxes, gt_valid = pad_ground_truth([t["boxes"] for t in targets], anchors.device)
        gt_ignore = pad_flags([t.get("ignore") for t in targets], gt_valid)
        sizes = batch.image_sizes if cfg.rpn_ignore_cross_boundary else None
        labels = piece("label_anchors", label_anchors)(anchors, gt_boxes, gt_valid, sizes, cfg.rpn_fg_iou, cfg.rpn_bg_iou, gt_ignore)
        sampled_pos, sampled_neg = piece("sample_anchors", sample_balanced)(
            labels.labels == POSITIVE, labels.labels == NEGATIVE, cfg.rpn_batch_size, cfg.rpn_positive_fraction,
            self.generator)
        target_deltas = piece("encode", encode)(anchors[None], gather_matched(gt_boxes, labels.matched_gt))
        # Only positives have a box to regress to; elsewhere the "match" may be padding.
        target_deltas = torch.where(sampled_pos[..., None], target_deltas, torch.zeros_like(target_deltas))
        return piece("rpn_loss", rpn_losses)(objectness, deltas, target_deltas, sampled_pos, sampled_neg, num_locations,
                          cfg.rpn_lambda, cfg.rpn_reg_normalization, cfg.rpn_smooth_l1_beta)
