"""The book's solutions of every piece, as written in book/10_build_your_own.ipynb (kept in step by
tests/test_capstone.py, which checks that the notebook holds the same code), for the tests."""
import math

import torch


def my_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])        # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])        # (M,)
    # the intersection's width and height, (N, M) each: 0 when the boxes are apart
    w = (torch.minimum(boxes1[:, None, 2], boxes2[None, :, 2]) - torch.maximum(boxes1[:, None, 0], boxes2[None, :, 0]))
    h = (torch.minimum(boxes1[:, None, 3], boxes2[None, :, 3]) - torch.maximum(boxes1[:, None, 1], boxes2[None, :, 1]))
    inter = w.clamp(min=0) * h.clamp(min=0)
    return inter / (area1[:, None] + area2[None, :] - inter)


def my_base_anchors(base_size, ratios, scales):
    ratios = torch.tensor(ratios, dtype=torch.float64)[:, None]                  # (R, 1)
    sides = base_size * torch.tensor(scales, dtype=torch.float64)[None, :]       # (1, S): sqrt of the area
    w, h = (sides / ratios.sqrt()).flatten(), (sides * ratios.sqrt()).flatten()  # ratio-major, ratio = h / w
    c = base_size / 2                                                            # centre of the first cell
    return torch.stack([c - w / 2, c - h / 2, c + w / 2, c + h / 2], dim=1).float()


def my_grid_anchors(base, feature_size, stride):
    height, width = feature_size
    ys, xs = torch.meshgrid(torch.arange(height) * stride, torch.arange(width) * stride, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4).float()    # (H·W, 1, 4), row-major
    return (shifts + base[None]).reshape(-1, 4)                                  # the k anchors of a position together


def my_label_anchors(anchors, gt_boxes, fg_iou=0.7, bg_iou=0.3):
    if len(gt_boxes) == 0:                                # no object: all negative
        return torch.zeros(len(anchors), dtype=torch.int64)
    iou = my_iou(anchors, gt_boxes)                       # (A, G)
    best_per_anchor = iou.max(dim=1).values               # u_i
    best_per_gt = iou.max(dim=0).values                   # each object's best IoU
    labels = torch.full((len(anchors),), -1)              # ignored unless a rule says otherwise
    labels[best_per_anchor < bg_iou] = 0
    labels[best_per_anchor > fg_iou] = 1                  # rule 2
    rule_1 = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=1)   # ties included
    labels[rule_1] = 1
    return labels


def my_sample_anchors(labels, batch_size=256, positive_fraction=0.5, generator=None):
    def pick(mask, count):
        chosen = torch.zeros_like(mask)
        candidates = torch.nonzero(mask).flatten()
        order = torch.randperm(len(candidates), generator=generator, device=generator.device if generator else None)
        chosen[candidates[order[:count].to(candidates.device)]] = True
        return chosen
    positive = pick(labels == 1, int(batch_size * positive_fraction))
    negative = pick(labels == 0, batch_size - int(positive.sum()))
    return positive, negative


def _centres(boxes):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w, h


def my_encode(anchors, boxes):
    xa, ya, wa, ha = _centres(anchors)
    x, y, w, h = _centres(boxes)
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=1)


def my_decode(anchors, deltas):
    xa, ya, wa, ha = _centres(anchors)
    x, y = xa + deltas[:, 0] * wa, ya + deltas[:, 1] * ha
    w, h = wa * torch.exp(deltas[:, 2]), ha * torch.exp(deltas[:, 3])
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=1)


def my_rpn_loss(logits, deltas, target_deltas, labels, num_locations, lam=10.0, beta=1 / 9):
    sampled, positive = labels >= 0, labels == 1
    n_cls = max(int(sampled.sum()), 1)                                   # the mini-batch, 256
    loss_cls = torch.nn.functional.cross_entropy(logits[sampled], positive[sampled].long(), reduction="sum") / n_cls
    x = (deltas[positive] - target_deltas[positive]).abs()               # positives only: p_i* = 1
    smooth_l1 = torch.where(x < beta, 0.5 * x ** 2 / beta, x - 0.5 * beta).sum()
    return loss_cls, lam * smooth_l1 / num_locations                     # N_reg = anchor locations


def my_nms(boxes, scores, iou_threshold):
    order = torch.sort(scores, descending=True, stable=True).indices   # ties: lower index first
    overlaps = my_iou(boxes[order], boxes[order]) > iou_threshold     # (N, N), in score order; NaN: no
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):                                        # best first
        if not removed[i]:
            keep.append(i)
            removed |= overlaps[i]                                     # suppress only if IoU > threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def my_proposals(anchors, scores, deltas, image_size, pre_nms_top_n, post_nms_top_n, nms_thresh, min_size):
    height, width = image_size
    boxes = my_decode(anchors, deltas)
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                         boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
    big = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[big], scores[big]
    order = torch.sort(scores, descending=True, stable=True).indices[:pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    keep = my_nms(boxes, scores, nms_thresh)[:post_nms_top_n]
    return boxes[keep], scores[keep]


def my_roi_pool(features, rois, output_size=7, spatial_scale=1 / 16):
    _, channels, height, width = features.shape
    P = output_size
    # snap to the grid with C's round() (halves away from zero); inclusive size, at least one cell
    snapped = rois[:, 1:] * spatial_scale
    snapped = torch.sign(snapped) * torch.floor(snapped.abs() + 0.5)
    p = torch.arange(P, dtype=torch.float32)

    def bins(start, end, limit):                                          # (R, P) first and last + 1 cell
        size = (end - start + 1).clamp(min=1)[:, None] / P
        lo = (torch.floor(p * size) + start[:, None]).clamp(0, limit)
        hi = (torch.ceil((p + 1) * size) + start[:, None]).clamp(0, limit)
        return lo, hi
    x_lo, x_hi = bins(snapped[:, 0], snapped[:, 2], width)
    y_lo, y_hi = bins(snapped[:, 1], snapped[:, 3], height)
    columns, rows = torch.arange(width), torch.arange(height)
    out = features.new_zeros(len(rois), channels, P, P)
    for b in range(features.shape[0]):                                   # a loop over images, then bins
        mine = torch.nonzero(rois[:, 0] == b).flatten()
        if len(mine) == 0:
            continue
        f = features[b][None]                                            # (1, C, H, W)
        by_column = []
        for j in range(P):                                               # max over each bin's columns
            inside = (columns >= x_lo[mine, j, None]) & (columns < x_hi[mine, j, None])          # (R_b, W)
            by_column.append(torch.where(inside[:, None, None, :], f, -math.inf).amax(dim=3))  # (R_b, C, H)
        by_column = torch.stack(by_column, dim=3)                        # (R_b, C, H, P)
        for i in range(P):                                               # then over each bin's rows
            inside = (rows >= y_lo[mine, i, None]) & (rows < y_hi[mine, i, None])                # (R_b, H)
            pooled = torch.where(inside[:, None, :, None], by_column, -math.inf).amax(dim=2)     # (R_b, C, P)
            out[mine, :, i, :] = torch.where(torch.isinf(pooled), 0.0, pooled)                  # empty bin: 0
    return out


def my_sample_rois(proposals, gt_boxes, gt_labels, batch_size=128, positive_fraction=0.25, fg_iou=0.5,
                   bg_iou_low=0.1, bg_iou_high=0.5, generator=None):
    candidates = torch.cat([proposals, gt_boxes])                        # the objects themselves too
    if len(gt_boxes):
        best, match = my_iou(candidates, gt_boxes).max(dim=1)
        foreground = best >= fg_iou
        background = (best < bg_iou_high) & (best >= bg_iou_low)
    else:                                                                # nothing to overlap
        match = torch.zeros(len(candidates), dtype=torch.long)
        foreground = torch.zeros(len(candidates), dtype=torch.bool)
        background = torch.ones(len(candidates), dtype=torch.bool)
    labels = torch.where(foreground, 1, torch.where(background, 0, -1))
    fg, bg = my_sample_anchors(labels, batch_size, positive_fraction, generator)
    chosen = fg | bg
    classes = gt_labels[match] if len(gt_boxes) else torch.zeros(len(candidates), dtype=torch.long)
    return candidates[chosen], torch.where(fg, classes, 0)[chosen]


def my_average_precision(recall, precision, use_07_metric=True):
    if use_07_metric:                                   # 11 points, the devkit's thresholds
        points = [precision[recall >= t].max() if (recall >= t).any() else torch.tensor(0.0)
                  for t in torch.arange(0, 1.1, 0.1, dtype=torch.float64)]
        return float(sum(points) / 11)
    r = torch.cat([torch.tensor([0.0]), recall, torch.tensor([1.0])]).double()
    p = torch.cat([torch.tensor([0.0]), precision, torch.tensor([0.0])]).double()
    p = p.flip(0).cummax(0).values.flip(0)              # the envelope: best precision at any higher recall
    change = torch.nonzero(r[1:] != r[:-1]).flatten() + 1
    return float(((r[change] - r[change - 1]) * p[change]).sum())


SOLUTIONS = {"iou": my_iou, "base_anchors": my_base_anchors, "grid_anchors": my_grid_anchors,
             "label_anchors": my_label_anchors, "sample_anchors": my_sample_anchors, "encode": my_encode,
             "decode": my_decode, "rpn_loss": my_rpn_loss, "nms": my_nms, "proposals": my_proposals,
             "roi_pool": my_roi_pool, "sample_rois": my_sample_rois, "average_precision": my_average_precision}
