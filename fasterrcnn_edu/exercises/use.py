"""`use(nms=my_nms, ...)`: the reader's pieces inside the real detector, in training and in inference.

The reader writes each piece for one image, with the signature its checker tests (`check(name, fn)`).
The detector calls its pieces on whole batches, with a few more arguments (ignore regions, the
boxes' normalisation, a top-N). Each adapter below turns a reader's function into the call
site's contract and nothing more: the decisions of the piece (which anchors are positive, which
boxes survive, what the loss is) are all the reader's. Where an adapter adds something, it is
something the chapter of that piece does not teach as part of it:

- `label_anchors`: anchors crossing the image boundary are ignored (§3.3), and negatives that
  touch an ignore region become ignored (`Config.difficult="ignore"`, ours), after the reader's labels;
  each anchor's matched box, for its regression target, is its highest-IoU box (by the IoU in use);
- `encode` / `decode`: the division by `Config.box_coder_std` of the detector's targets, and the
  cap on exp(t_w) that keeps a wild prediction finite, stay the package's;
- `sample_rois`: background RoIs near an ignore region are dropped, and the regression targets of
  the foreground RoIs are computed with the `encode` in use;
- `rpn_loss` under `rpn_reg_normalization="minibatch"` gets N_cls as its `num_locations`.

Giving `iou` without `nms` swaps the package's compiled NMS for its readable one, which calls
the IoU in use, so the reader's IoU decides the suppression too. The evaluation's matching of
detections to ground truth always uses the package's IoU: a metric must not change with the
detector it measures (`average_precision` can be swapped, the matching cannot).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor

from fasterrcnn_edu import pieces
from fasterrcnn_edu.boxes import MAX_LOG_SCALE, box_iou, encode as package_encode
from fasterrcnn_edu.labeling import IGNORED, NEGATIVE, POSITIVE, AnchorLabels, inside_image
from fasterrcnn_edu.nms import nms_readable
from fasterrcnn_edu.proposals import objectness_scores


def _iou_now() -> Callable:
    return pieces.piece("iou", box_iou)


def adapt_iou(fn: Callable) -> Callable:
    def iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:            # (..., N, 4), (..., M, 4) -> (..., N, M)
        if boxes1.dim() == 2:
            return torch.as_tensor(fn(boxes1, boxes2)).float()
        lead, n, m = boxes1.shape[:-2], boxes1.shape[-2], boxes2.shape[-2]
        pairs = zip(boxes1.reshape(-1, n, 4), boxes2.reshape(-1, m, 4))
        return torch.stack([torch.as_tensor(fn(a, b)).float() for a, b in pairs]).reshape(*lead, n, m)
    return iou


def adapt_base_anchors(fn: Callable) -> Callable:
    def base(base_size, ratios, scales, legacy: bool = False) -> Tensor:
        if legacy:
            raise ValueError("use(base_anchors=...): your base_anchors has no legacy '+1' mode, but the config has "
                             "legacy_anchors=True; set it to False")
        return torch.as_tensor(fn(base_size, ratios, scales)).float()
    return base


def adapt_grid_anchors(fn: Callable) -> Callable:
    return lambda base, feature_size, stride: torch.as_tensor(fn(base, tuple(feature_size), stride)).float()


def adapt_label_anchors(fn: Callable) -> Callable:
    def label(anchors, gt_boxes, gt_valid, image_sizes=None, fg_iou=0.7, bg_iou=0.3, gt_ignore=None) -> AnchorLabels:
        real = gt_valid if gt_ignore is None else gt_valid & ~gt_ignore                     # (B, G)
        labels = torch.stack([torch.as_tensor(fn(anchors, gt[keep], fg_iou, bg_iou)).long()
                              for gt, keep in zip(gt_boxes, real)])                          # (B, A)
        iou = _iou_now()(gt_boxes, anchors.expand(len(gt_boxes), -1, -1))                    # (B, G, A)
        max_iou, matched = iou.masked_fill(~real[:, :, None], -1.0).max(dim=1)
        if gt_ignore is not None:
            near_ignored = iou.masked_fill(~gt_ignore[:, :, None], -1.0).amax(dim=1) >= bg_iou
            labels = torch.where((labels == NEGATIVE) & near_ignored, IGNORED, labels)
        if image_sizes is not None:
            inside = inside_image(anchors, image_sizes)
            labels = torch.where(inside, labels, IGNORED)
            max_iou = torch.where(inside, max_iou, -1.0)
        return AnchorLabels(labels.to(torch.int8), matched, max_iou)
    return label


def _label_rows(positive: Tensor, negative: Tensor) -> Tensor:
    return torch.where(positive, POSITIVE, torch.where(negative, NEGATIVE, IGNORED))


def adapt_sample_anchors(fn: Callable) -> Callable:
    def sample(positive, negative, batch_size, positive_fraction, generator=None) -> tuple[Tensor, Tensor]:
        picked = [fn(row, batch_size, positive_fraction, generator) for row in _label_rows(positive, negative)]
        return (torch.stack([torch.as_tensor(p).bool() for p, _ in picked]),
                torch.stack([torch.as_tensor(n).bool() for _, n in picked]))
    return sample


def _flat_pairs(fn: Callable, first: Tensor, second: Tensor) -> Tensor:
    """fn on (N, 4) pairs of boxes broadcast to a common shape (..., 4) -> (..., 4)."""
    first, second = torch.broadcast_tensors(first.float(), second.float())
    return torch.as_tensor(fn(first.reshape(-1, 4), second.reshape(-1, 4))).float().reshape(first.shape)


def adapt_encode(fn: Callable) -> Callable:
    def encode(reference, boxes, std=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
        return _flat_pairs(fn, reference, boxes) / torch.tensor(std, device=reference.device)
    return encode


def adapt_decode(fn: Callable) -> Callable:
    def decode(reference, deltas, std=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
        deltas = deltas.float() * torch.tensor(std, device=deltas.device)
        deltas = torch.cat([deltas[..., :2], deltas[..., 2:].clamp(max=MAX_LOG_SCALE)], dim=-1)
        return _flat_pairs(fn, reference, deltas)
    return decode


def adapt_rpn_loss(fn: Callable) -> Callable:
    def loss(objectness, deltas, target_deltas, sampled_pos, sampled_neg, num_locations, lam=10.0,
             normalization="locations", beta=1.0) -> dict[str, Tensor]:
        if objectness.dim() != 3:
            raise ValueError("use(rpn_loss=...): your rpn_loss takes 2 logits per anchor, but the config has "
                             "rpn_cls_loss='sigmoid'; set it to 'softmax'")
        labels = _label_rows(sampled_pos, sampled_neg).flatten()
        n_reg = num_locations * objectness.shape[0] if normalization == "locations" else int((labels >= 0).sum())
        cls, reg = fn(objectness.float().flatten(0, 1), deltas.float().flatten(0, 1), target_deltas.flatten(0, 1),
                      labels, n_reg, lam, beta)
        return {"loss_objectness": cls, "loss_rpn_box_reg": reg}
    return loss


def adapt_nms(fn: Callable) -> Callable:
    def nms(boxes, scores, iou_threshold, max_kept=None) -> Tensor:
        return torch.as_tensor(fn(boxes, scores, iou_threshold)).long()[:max_kept]
    return nms


def adapt_proposals(fn: Callable) -> Callable:
    def propose(anchors, objectness, deltas, image_sizes, pre_nms_top_n, post_nms_top_n, nms_thresh=0.7,
                min_size=16.0) -> tuple[list[Tensor], list[Tensor]]:
        min_size = torch.as_tensor(min_size).reshape(-1).expand(len(deltas))
        scores = objectness_scores(objectness)                                   # (B, A) probabilities
        out = [fn(anchors, s, d, tuple(int(v) for v in size), pre_nms_top_n, post_nms_top_n, nms_thresh, float(m))
               for s, d, size, m in zip(scores, deltas, image_sizes, min_size)]
        return [torch.as_tensor(b).float() for b, _ in out], [torch.as_tensor(s).float() for _, s in out]
    return propose


def adapt_roi_pool(fn: Callable, one_roi: bool = False) -> Callable:
    def pool(features, rois, output_size, spatial_scale, mode="max") -> Tensor:
        if mode != "max":
            raise ValueError(f"use(roi_pool=...): your function does RoI max pooling, but the config has "
                             f"roi_pool={mode!r}; set it to 'max'")
        features, rois = features.float(), rois.float()
        if not one_roi:
            return fn(features, rois, output_size, spatial_scale)
        if len(rois) == 0:
            return features.new_zeros(0, features.shape[1], output_size, output_size)
        return torch.stack([fn(features[int(r[0])], r[1:], output_size, spatial_scale) for r in rois])
    return pool


def adapt_sample_rois(fn: Callable) -> Callable:
    def sample(proposals, gt_boxes, gt_labels, gt_valid, batch_size=128, positive_fraction=0.25, fg_iou=0.5,
               bg_iou_low=0.1, bg_iou_high=0.5, box_std=(0.1, 0.1, 0.2, 0.2), generator=None, gt_ignore=None):
        real = gt_valid if gt_ignore is None else gt_valid & ~gt_ignore
        iou_fn, encode_fn = _iou_now(), pieces.piece("encode", package_encode)
        picked = []
        for b, boxes in enumerate(proposals):                                   # a loop over images
            rois, labels = fn(boxes, gt_boxes[b][real[b]], gt_labels[b][real[b]], batch_size, positive_fraction,
                              fg_iou, bg_iou_low, bg_iou_high, generator)
            rois, labels = torch.as_tensor(rois).float().reshape(-1, 4), torch.as_tensor(labels).long().reshape(-1)
            if gt_ignore is not None and gt_ignore[b].any():
                near = iou_fn(rois, gt_boxes[b][gt_ignore[b]]).amax(dim=1) >= bg_iou_high
                labels = torch.where((labels == 0) & near, -1, labels)
            picked.append((rois, labels))
        slots = max(len(r) for r, _ in picked)
        rois = gt_boxes.new_zeros(len(proposals), slots, 4)
        labels = torch.full((len(proposals), slots), -1, dtype=torch.long, device=gt_boxes.device)
        for b, (r, l) in enumerate(picked):
            rois[b, :len(r)], labels[b, :len(l)] = r, l
        iou = iou_fn(rois, gt_boxes).masked_fill(~real[:, None, :], -1.0)     # (B, S, G)
        matched = gt_boxes.gather(1, iou.argmax(dim=2)[..., None].expand(-1, -1, 4))
        targets = encode_fn(rois, matched, box_std)
        return rois, labels, torch.where((labels > 0)[..., None], targets, torch.zeros_like(targets))
    return sample


def adapt_average_precision(fn: Callable) -> Callable:
    def ap(recall, precision, use_07_metric=True) -> float:
        return float(fn(torch.as_tensor(recall, dtype=torch.float64), torch.as_tensor(precision, dtype=torch.float64),
                        use_07_metric))
    return ap


# The name the reader passes -> (the piece it replaces, its adapter).
ADAPTERS: dict[str, tuple[str, Callable[[Callable], Callable]]] = {
    "iou": ("iou", adapt_iou), "base_anchors": ("base_anchors", adapt_base_anchors),
    "grid_anchors": ("grid_anchors", adapt_grid_anchors), "label_anchors": ("label_anchors", adapt_label_anchors),
    "sample_anchors": ("sample_anchors", adapt_sample_anchors), "encode": ("encode", adapt_encode),
    "decode": ("decode", adapt_decode), "rpn_loss": ("rpn_loss", adapt_rpn_loss), "nms": ("nms", adapt_nms),
    "proposals": ("proposals", adapt_proposals), "roi_pool": ("roi_pool", adapt_roi_pool),
    "roi_max_pool": ("roi_pool", lambda fn: adapt_roi_pool(fn, one_roi=True)),
    "sample_rois": ("sample_rois", adapt_sample_rois),
    "average_precision": ("average_precision", adapt_average_precision),
}


@contextmanager
def use(**functions: Callable) -> Iterator[None]:
    """Inside the block the detector calls the reader's functions in place of its own pieces.

    with use(nms=my_nms, iou=my_iou):
        train(...)             # and evaluate_model(...), model(images), ...

    Names and signatures are those of `check` (`roi_max_pool`, one RoI at a time, or `roi_pool`, a
    batch, both replace the detector's RoI pooling). On leaving the block, also through an
    exception, the package's own pieces are back.
    """
    unknown = sorted(set(functions) - set(ADAPTERS))
    if unknown:
        raise ValueError(f"use(): unknown piece(s) {unknown}; choose from {sorted(ADAPTERS)}")
    if "roi_pool" in functions and "roi_max_pool" in functions:
        raise ValueError("use(): give roi_pool or roi_max_pool, not both (they replace the same piece)")
    adapted = {}
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"use({name}=...): expected a function, got {type(fn).__name__}")
        target, adapter = ADAPTERS[name]
        adapted[target] = adapter(fn)
    if "iou" in functions and "nms" not in functions:
        adapted["nms"] = adapt_nms(nms_readable)      # the readable NMS reads the IoU in use
    with pieces.replace(**adapted):
        yield
