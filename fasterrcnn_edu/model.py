"""Faster R-CNN: one network in which the RPN and the Fast R-CNN detector share conv features (paper §3).

    image → backbone (shared conv layers) → feature map ─┬→ RPN → proposals ─┐
                                                         └──────────────────→ RoI pooling → Fast R-CNN head → detections

The interface is torchvision's (`torchvision.models.detection.FasterRCNN`), so one can replace the
other: images are a list of (3, H, W) float tensors in [0, 1] of any size; in training,
`model(images, targets)` returns a dict of the four losses; in eval, `model(images)` returns one dict
per image with `boxes` (x1, y1, x2, y2 in the input image's pixels), `labels` and `scores`.
`rpn_losses` and `detector_losses` expose the two halves separately for the 4-step training
(`fasterrcnn_edu.training.StageLoss` wraps them for DistributedDataParallel).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fasterrcnn_edu.backbones import build_backbone
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.roi_heads import FastRCNNPredictor, RoIHeads
from fasterrcnn_edu.rpn import RegionProposalNetwork
from fasterrcnn_edu.transforms import ImageBatch, ImageTransform


class FasterRCNN(nn.Module):
    def __init__(self, cfg: Config | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else Config.book()
        self.backbone, box_head = build_backbone(cfg.backbone, cfg.roi_output_size, cfg.head_hidden,
                                                 cfg.backbone_weights, cfg.frozen_layers)
        self.rpn = RegionProposalNetwork(cfg, self.backbone.out_channels, self.backbone.stride)
        self.roi_heads = RoIHeads(box_head, FastRCNNPredictor(box_head.out_features, cfg.num_classes), cfg,
                                  spatial_scale=1.0 / self.backbone.stride)
        self.transform = ImageTransform(cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std,
                                        cfg.size_divisible)

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Use `generator` for the random anchor and RoI mini-batches (reproducible training)."""
        self.rpn.generator = generator
        self.roi_heads.generator = generator

    def features(self, tensors: Tensor) -> Tensor:
        """The shared conv feature map (B, C, H/16, W/16) of a batch (B, 3, H, W)."""
        if self.training and self.cfg.channels_last:
            # Speed only: mkldnn (CPU) and cuDNN run the backward convolutions faster on NHWC
            # tensors (~10 % of a training step). Eval stays NCHW: no gain measured there.
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        return self.backbone(tensors)

    # -- the two halves ------------------------------------------------------------------------
    def propose(self, batch: ImageBatch, features: Tensor, pre_nms_top_n: int | None = None,
                post_nms_top_n: int | None = None) -> list[Tensor]:
        """RPN proposals (B tensors (P_b, 4), resized-image pixels). The top-N default to the
        config's values for the current mode (train/test); pass them to use others."""
        proposals, _ = self.rpn(features, batch, pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n)
        return proposals

    @torch.no_grad()
    def proposals_for_images(self, images: list[Tensor], pre_nms_top_n: int | None = None,
                             post_nms_top_n: int | None = None) -> list[Tensor]:
        """The RPN's proposals for `images` ((3, H, W) in [0, 1]), sorted by objectness, in each
        input image's own pixels: B tensors (P_b, 4)."""
        batch, _ = self.transform(images)
        boxes = self.propose(batch, self.features(batch.tensors), pre_nms_top_n, post_nms_top_n)
        return self._in_input_pixels(boxes, batch)

    def _in_input_pixels(self, boxes: list[Tensor], batch: ImageBatch) -> list[Tensor]:
        """B tensors (P_b, 4) of resized-image boxes, mapped back to each input image's own pixels."""
        return [d["boxes"] for d in self.transform.postprocess([{"boxes": b} for b in boxes], batch)]

    @torch.no_grad()
    def detect_and_propose(self, images: list[Tensor], pre_nms_top_n: int, post_nms_top_n: int
                           ) -> tuple[list[dict], list[Tensor]]:
        """Eval mode: the detections of `forward` and, from the same feature map, the RPN's proposals
        with other top-N counts (for recall vs IoU), both in each input image's own pixels.
        Evaluation needs both; one backbone pass serves the two."""
        batch, _ = self.transform(images)
        features = self.features(batch.tensors)
        detections, _ = self.roi_heads(features, self.propose(batch, features), batch.image_sizes)
        proposals = self.propose(batch, features, pre_nms_top_n, post_nms_top_n)
        return self.transform.postprocess(detections, batch), self._in_input_pixels(proposals, batch)

    def rpn_losses(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Train the RPN alone (4-step training, steps 1 and 3): its two loss terms."""
        batch, targets = self.transform(images, targets)
        features = self.features(batch.tensors)
        _, losses = self.rpn(features, batch, targets, propose=False)
        return losses

    def detector_losses(self, images: list[Tensor], targets: list[dict],
                        proposer: "FasterRCNN | None" = None) -> dict[str, Tensor]:
        """Train the Fast R-CNN half on fixed proposals (steps 2 and 4): its two loss terms.

        Proposals are the targets' stored "proposals" ((P, 4) in input-image pixels, as the
        released code's precomputed proposals) if present; otherwise they come from `proposer`'s
        RPN (another network with its own backbone) or from this model's own RPN, without gradient.
        """
        batch, targets = self.transform(images, targets)
        features = self.features(batch.tensors)
        if all("proposals" in t for t in targets):
            proposals = [t["proposals"] for t in targets]          # rescaled by the transform
        else:
            source = proposer if proposer is not None else self
            with torch.no_grad():
                source_features = features if source is self else source.features(batch.tensors)
                proposals = source.propose(batch, source_features)
        _, losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        return losses

    # -- torchvision's interface -----------------------------------------------------------------
    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        """Training: dict of the four losses (RPN and detector summed = approximate joint training).
        Eval: one dict of detections per image."""
        if self.training and targets is None:
            raise ValueError("in training mode the model needs targets (list of dicts with 'boxes' and 'labels')")
        batch, targets = self.transform(images, targets)
        features = self.features(batch.tensors)
        proposals, rpn_losses = self.rpn(features, batch, targets if self.training else None)
        detections, det_losses = self.roi_heads(features, proposals, batch.image_sizes,
                                                targets if self.training else None)
        if self.training:
            return {**rpn_losses, **det_losses}
        return self.transform.postprocess(detections, batch)


class UnsharedFasterRCNN(nn.Module):
    """Steps 1–2 of the 4-step scheme only: an RPN network and a detector network with separate backbones.

    The book compares it with shared features: same detector interface, twice the conv computation.
    """

    def __init__(self, rpn_net: FasterRCNN, detector_net: FasterRCNN):
        super().__init__()
        self.rpn_net = rpn_net
        self.detector_net = detector_net
        self.cfg = detector_net.cfg

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training:
            raise RuntimeError("UnsharedFasterRCNN is trained stage by stage (fasterrcnn_edu.training); "
                               "use it in eval mode")
        batch, _ = self.detector_net.transform(images)
        proposals = self.rpn_net.propose(batch, self.rpn_net.backbone(batch.tensors))
        features = self.detector_net.backbone(batch.tensors)
        detections, _ = self.detector_net.roi_heads(features, proposals, batch.image_sizes)
        return self.detector_net.transform.postprocess(detections, batch)
