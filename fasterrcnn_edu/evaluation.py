"""Evaluation: PASCAL VOC mAP, COCO AP, and the paper's proposal-recall analysis.

What this module reproduces
---------------------------
* `voc_ap` / `evaluate_voc`: the official PASCAL VOC development kit (``VOCevaldet.m`` and
  ``VOCap.m``), the metric of every table in the paper (Tables 2-6, "mAP" on VOC 2007 test uses
  the 11-point VOC2007 metric; VOC 2012 numbers use the area-under-curve VOC2010+ metric).
* `evaluate_coco`: the MS COCO metrics of Table 11 (AP@[.5:.95], AP@0.5, ...), computed by the
  maintained `faster_coco_eval` library (a C++ re-implementation of ``pycocotools``).
* `recall_vs_iou` / `average_recall`: the "Analysis of Recall-to-IoU" of Sec. 4.1 (Figure 4):
  recall of the top-N proposals as a function of the IoU threshold.

The non-learned proposal baselines the book compares the RPN with live in `fasterrcnn_edu.lab.baselines`.

Box convention: (x1, y1, x2, y2) continuous coordinates, width = x2 - x1, like the rest of the
package (and torchvision). Labels are 1..K, 0 is background. The devkit treats boxes as
inclusive pixel ranges and adds 1 to every width and height; our VOC loader maps an inclusive
``[xmin, xmax]`` to the continuous ``[xmin - 1, xmax]`` (`fasterrcnn_edu.data.voc`), so a detection
written back as ``x1 + 1, x2`` has exactly the devkit's IoU: the continuous IoU used here equals
the devkit's, with no "+1" discrepancy.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fasterrcnn_edu.boxes import as_boxes, box_iou
from fasterrcnn_edu.pieces import piece

__all__ = [
    "VOCResult",
    "voc_ap",
    "evaluate_voc",
    "evaluate_coco",
    "recall_vs_iou",
    "average_recall",
]


# ----------------------------------------------------------------------------------------------
# PASCAL VOC
# ----------------------------------------------------------------------------------------------

# py-faster-rcnn's voc_eval.py: np.arange(0., 1.1, 0.1) (MATLAB's 0:0.1:1 in VOCevaldet.m).
DEVKIT_11_POINT_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision from a precision/recall curve, as the VOC devkit's ``VOCap`` and py-faster-rcnn's ``voc_ap``.

    recall, precision: (D,) cumulative values, one per detection in descending-score order.

    * ``use_07_metric=True`` (VOC2007): 11-point interpolated AP,
      AP = 1/11 * sum_{t in {0, 0.1, ..., 1}} max{precision[i] : recall[i] >= t}  (0 if none).
    * ``use_07_metric=False`` (VOC2010+): area under the precision envelope, i.e. the curve made
      monotonically decreasing by p(r) = max_{r' >= r} p(r'), integrated over recall.
    """
    recall = np.asarray(recall, dtype=np.float64).ravel()
    precision = np.asarray(precision, dtype=np.float64).ravel()
    if use_07_metric:
        # The released code's thresholds, np.arange(0, 1.1, 0.1), bit for bit: three of them are
        # not the decimal value (0.30000000000000004, 0.6000000000000001, 0.7000000000000001),
        # so a recall of exactly 3/10 does not reach t = 0.3. It matters only when npos is a
        # multiple of 10 and recall lands exactly on such a threshold; we keep it for parity.
        thresholds = DEVKIT_11_POINT_THRESHOLDS
        interpolated = [precision[recall >= t].max() if (recall >= t).any() else 0.0
                        for t in thresholds]
        # Sum, then divide (the devkit adds p/11 eleven times; same value up to rounding, but
        # this way perfect detections give exactly 1.0).
        return float(np.sum(interpolated) / 11.0)
    # Sentinels: the curve starts at recall 0 and ends at recall 1 with precision 0.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # Precision envelope: running maximum from the right.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    # Sum rectangle areas where recall changes.
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


@dataclass
class VOCResult:
    """Per-class results of `evaluate_voc`. All dicts are keyed by class name (or by label
    index when no class names were given), foreground classes only, in label order.

    - ap: AP per class; NaN for a class with no non-difficult ground truth (npos == 0).
    - map: mean of the non-NaN APs (classes without ground truth are excluded from the mean).
    - precision, recall: (D_c,) arrays, one entry per non-ignored detection of the class in
      descending-score order (detections on difficult objects are dropped; they would only
      repeat the previous point and leave the AP unchanged).
    - npos: number of non-difficult ground-truth boxes per class.
    """

    ap: dict
    map: float
    precision: dict
    recall: dict
    npos: dict
    iou_threshold: float = 0.5
    use_07_metric: bool = True
    labels: dict = field(default_factory=dict)  # key -> label index

    def table(self) -> str:
        """A per-class AP table followed by the mean, e.g. for printing in the book."""
        metric = "VOC07 11-point" if self.use_07_metric else "VOC10+ area"
        names = [str(k) for k in self.ap]
        width = max([len(n) for n in names] + [len("mAP"), 5])
        lines = [f"{'class':<{width}}  {'AP':>6}  {'npos':>6}",
                 f"{'-' * width}  {'-' * 6}  {'-' * 6}"]
        for key, name in zip(self.ap, names):
            ap = self.ap[key]
            ap_str = "   n/a" if math.isnan(ap) else f"{100 * ap:6.2f}"
            lines.append(f"{name:<{width}}  {ap_str}  {self.npos[key]:>6d}")
        lines.append(f"{'-' * width}  {'-' * 6}  {'-' * 6}")
        lines.append(f"{'mAP':<{width}}  {100 * self.map:6.2f}  "
                     f"({metric}, IoU >= {self.iou_threshold:g}; AP in %)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _class_key(label: int, num_classes: int, class_names: Sequence[str] | None):
    """Name of a foreground label. class_names may include background (length num_classes,
    indexed by label) or list only the K foreground classes (length num_classes - 1)."""
    if class_names is None:
        return label
    if len(class_names) == num_classes:
        return class_names[label]
    if len(class_names) == num_classes - 1:
        return class_names[label - 1]
    raise ValueError(f"class_names has {len(class_names)} entries; expected num_classes="
                     f"{num_classes} (with background) or {num_classes - 1} (without)")


def to_cpu(x) -> Tensor:
    return torch.as_tensor(x).detach().cpu()


def _difficult_mask(target: dict) -> Tensor:
    n = len(target["labels"])
    if target.get("difficult") is None:
        return torch.zeros(n, dtype=torch.bool)
    return to_cpu(target["difficult"]).bool().reshape(n)


def _match_class(dets: list[tuple[Tensor, Tensor]], gts: list[tuple[Tensor, Tensor]],
                 iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Devkit matching for one class.

    dets: per image (boxes (D_i, 4), scores (D_i,)); gts: per image (boxes (G_i, 4),
    difficult (G_i,) bool). Returns tp, fp: (D',) 0/1 float arrays over the non-ignored
    detections in descending-score order, and npos.

    The devkit walks the detections in descending score order; each one takes the ground truth
    with the highest IoU in its image (*whether or not that one is already matched*). If that IoU
    is >= threshold: a difficult gt makes the detection ignored; an unmatched gt makes it a TP
    and marks the gt; an already matched gt makes it a duplicate, i.e. FP. Otherwise FP.
    Because the chosen gt does not depend on the matching state, the walk has a closed form:
    the highest-scoring detection assigned to each gt is the TP, later ones are FPs. So we only
    need the per-detection (max IoU, argmax gt) and a "first occurrence" per gt; no Python loop.
    """
    scores, best_iou, best_gt, gt_difficult = [], [], [], []
    offset = 0
    for (d_boxes, d_scores), (g_boxes, g_diff) in zip(dets, gts):
        scores.append(d_scores)
        if len(g_boxes) and len(d_boxes):
            iou = box_iou(d_boxes, g_boxes)              # (D_i, G_i)
            # torch.max returns the first maximal index on ties, like the devkit's strict '>'.
            best, idx = iou.max(dim=1)
        else:
            best = torch.full((len(d_boxes),), -math.inf)
            idx = torch.zeros(len(d_boxes), dtype=torch.long)
        best_iou.append(best)
        best_gt.append(idx + offset)                     # global gt index across images
        gt_difficult.append(g_diff)
        offset += len(g_boxes)
    gt_difficult_all = torch.cat(gt_difficult) if gt_difficult else torch.zeros(0, dtype=torch.bool)
    npos = int((~gt_difficult_all).sum())
    if not scores or sum(len(s) for s in scores) == 0:
        return np.zeros(0), np.zeros(0), npos

    scores_all = torch.cat(scores).double().numpy()
    best_iou_all = torch.cat(best_iou).double().numpy()
    best_gt_all = torch.cat(best_gt).numpy()
    difficult_np = gt_difficult_all.numpy()

    # Descending score; stable so ties keep input order (MATLAB's sort is stable too).
    order = np.argsort(-scores_all, kind="stable")
    best_iou_all, best_gt_all = best_iou_all[order], best_gt_all[order]

    hit = best_iou_all >= iou_threshold                  # devkit: ovmax >= minoverlap
    ignored = np.zeros(len(order), dtype=bool)
    ignored[hit] = difficult_np[best_gt_all[hit]]
    tp = np.zeros(len(order))
    candidates = np.flatnonzero(hit & ~ignored)          # already in score order
    _, first = np.unique(best_gt_all[candidates], return_index=True)
    tp[candidates[first]] = 1.0                          # first detection per gt is the TP
    fp = 1.0 - tp
    keep = ~ignored                                      # ignored: neither TP nor FP
    return tp[keep], fp[keep], npos


def evaluate_voc(detections: Sequence[dict], targets: Sequence[dict], num_classes: int,
                 iou_threshold: float = 0.5, use_07_metric: bool = True,
                 class_names: Sequence[str] | None = None) -> VOCResult:
    """PASCAL VOC detection evaluation (devkit ``VOCevaldet``) over a whole dataset.

    - detections: per image, dict with ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) int.
    - targets: per image, dict with ``boxes`` (G, 4), ``labels`` (G,) and optionally
      ``difficult`` (G,) bool. Difficult objects are not counted in npos, and a detection
      matched to one is ignored (neither TP nor FP).
    - num_classes: number of classes *including* background (K + 1, as the paper's cls layer
      and torchvision); labels 1..K are evaluated.
    - class_names: optional names, indexed by label (length K + 1) or foreground only (length K).

    A class with no non-difficult ground truth gets AP = NaN and is left out of the mean.
    """
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection dicts for {len(targets)} targets")
    dets = [{"boxes": as_boxes(to_cpu(d["boxes"]), f"detections[{i}]['boxes']", "evaluate_voc"),
             **{k: to_cpu(d[k]) for k in ("scores", "labels")}} for i, d in enumerate(detections)]
    tgts = [{"boxes": as_boxes(to_cpu(t["boxes"]), f"targets[{i}]['boxes']", "evaluate_voc"), "labels": to_cpu(t["labels"]),
             "difficult": _difficult_mask(t)} for i, t in enumerate(targets)]

    ap, precision, recall, npos, labels = {}, {}, {}, {}, {}
    for c in range(1, num_classes):
        key = _class_key(c, num_classes, class_names)
        class_dets = [(d["boxes"][d["labels"] == c], d["scores"][d["labels"] == c])
                      for d in dets]
        class_gts = [(t["boxes"][t["labels"] == c], t["difficult"][t["labels"] == c]) for t in tgts]
        tp, fp, n = _match_class(class_dets, class_gts, iou_threshold)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / n if n > 0 else np.full_like(tp, np.nan)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[key] = piece("average_precision", voc_ap)(rec, prec, use_07_metric) if n > 0 else float("nan")
        precision[key], recall[key], npos[key], labels[key] = prec, rec, n, c

    valid = [v for v in ap.values() if not math.isnan(v)]
    mean_ap = float(np.mean(valid)) if valid else float("nan")
    return VOCResult(ap=ap, map=mean_ap, precision=precision, recall=recall, npos=npos,
                     iou_threshold=iou_threshold, use_07_metric=use_07_metric, labels=labels)


# ----------------------------------------------------------------------------------------------
# MS COCO (through faster_coco_eval)
# ----------------------------------------------------------------------------------------------

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_coco(detections: Sequence[dict], targets: Sequence[dict],
                  class_names: Sequence[str], verbose: bool = False,
                  num_classes: int | None = None) -> dict[str, float]:
    """COCO box AP through ``faster_coco_eval`` (same numbers as ``pycocotools``).

    detections / targets: as in `evaluate_voc`. class_names: either indexed by label with the
    background first (recognised by the name "__background__" or "background", or by passing
    num_classes = len(class_names)), or the K foreground names, class_names[i] = label i + 1.
    Returns {"AP": AP@[.5:.95], "AP50", "AP75", "APs", "APm", "APl"} as fractions in [0, 1]
    (-1 where undefined, e.g. no object in a size range, as the COCO API reports).

    Difficult objects are passed as ``iscrowd=1``: the COCO API then neither counts them as
    ground truth nor penalises detections on them, which is what VOC does with difficult
    objects. (The COCO API ignores a separate ``ignore`` flag: ``iscrowd`` takes precedence.)
    One difference remains: overlap with a crowd region is intersection over the *detection*
    area, a bit more permissive than IoU. Object size ("area") is the box area, since there
    are no segmentation masks. Printing is silenced unless ``verbose``.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if num_classes is None:
        with_background = str(class_names[0]).lower() in ("__background__", "background")
        num_classes = len(class_names) if with_background else len(class_names) + 1
    categories = [{"id": c, "name": str(_class_key(c, num_classes, class_names))}
                  for c in range(1, num_classes)]
    images, gt_anns, dt_anns = [], [], []
    for img_id, (det, tgt) in enumerate(zip(detections, targets), start=1):
        t_boxes = as_boxes(to_cpu(tgt["boxes"]), f"targets[{img_id - 1}]['boxes']", "evaluate_coco").float()
        t_labels = to_cpu(tgt["labels"]).long()
        t_diff = _difficult_mask(tgt)
        # The image size only matters for segmentation; use the extent of all boxes.
        d_boxes = as_boxes(to_cpu(det["boxes"]), f"detections[{img_id - 1}]['boxes']", "evaluate_coco").float()
        extent = torch.cat([t_boxes, d_boxes]).amax(0) if len(t_boxes) + len(d_boxes) else None
        width = int(math.ceil(extent[2])) + 1 if extent is not None else 1
        height = int(math.ceil(extent[3])) + 1 if extent is not None else 1
        images.append({"id": img_id, "width": width, "height": height})
        # COCO wants [x, y, w, h]; ids must start at 1 (0 means "unmatched" inside the API).
        for box, label, diff in zip(t_boxes.tolist(), t_labels.tolist(), t_diff.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": img_id, "category_id": label,
                            "bbox": [box[0], box[1], w, h], "area": w * h,
                            "iscrowd": int(diff)})
        for box, label, score in zip(d_boxes.tolist(), to_cpu(det["labels"]).tolist(),
                                     to_cpu(det["scores"]).float().tolist()):
            if not 1 <= label < num_classes:      # background or unknown: not a detection
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": img_id, "category_id": int(label),
                            "bbox": [box[0], box[1], w, h], "area": w * h, "score": score})

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    log = print if verbose else (lambda *args, **kwargs: None)
    with quiet:
        coco_gt = COCO({"images": images, "annotations": gt_anns, "categories": categories},
                       print_function=log)
        if not dt_anns:  # the COCO API cannot load an empty result list
            return {k: 0.0 if gt_anns else -1.0 for k in COCO_KEYS}
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=log)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: float(v) for k, v in zip(COCO_KEYS, evaluator.stats[:6])}


# ----------------------------------------------------------------------------------------------
# Recall vs IoU (paper Sec. 4.1, Figure 4)
# ----------------------------------------------------------------------------------------------

def default_iou_thresholds() -> np.ndarray:
    """0.5, 0.55, ..., 1.0 (11 values), correctly rounded."""
    return np.round(np.arange(11) * 0.05 + 0.5, 2)


def recall_vs_iou(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], top_n: int,
                  iou_thresholds: np.ndarray | Sequence[float] | None = None,
                  difficult: Sequence[Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Proposal recall as a function of the IoU threshold, for the top-N proposals per image.

    proposals: per image (P, 4), sorted by descending score (only the first top_n are used).
    gt_boxes: per image (G, 4). difficult: optional per-image (G,) bool masks; difficult
    objects are excluded. Returns (thresholds (T,), recall (T,)), where recall[t] is the
    fraction of ground-truth boxes whose best IoU with any of the top-N proposals of their image
    is >= thresholds[t].
    """
    thresholds = default_iou_thresholds() if iou_thresholds is None \
        else np.asarray(iou_thresholds, dtype=np.float64)
    best = []
    for i, (props, gts) in enumerate(zip(proposals, gt_boxes)):
        gts = as_boxes(to_cpu(gts), f"gt_boxes[{i}]", "recall_vs_iou").float()
        if difficult is not None:
            gts = gts[~to_cpu(difficult[i]).bool().reshape(-1)]
        props = as_boxes(to_cpu(props), f"proposals[{i}]", "recall_vs_iou").float()[:top_n]
        if len(props) == 0:
            best.append(torch.zeros(len(gts)))           # nothing proposed: recall 0
        elif len(gts):
            best.append(box_iou(gts, props).amax(dim=1))
    best_np = torch.cat(best).double().numpy() if best else np.zeros(0)
    if len(best_np) == 0:
        return thresholds, np.full(len(thresholds), np.nan)
    recall = (best_np[None, :] >= thresholds[:, None]).mean(axis=1)
    return thresholds, recall


def average_recall(thresholds: np.ndarray, recall: np.ndarray) -> float:
    """Average recall (Hosang et al., 2016): the mean of recall over the IoU range covered by
    the thresholds (for 0.5..1 this is 2 * the area under the recall-vs-IoU curve), by the
    trapezoidal rule."""
    t = np.asarray(thresholds, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    if len(t) < 2:
        return float(r.mean()) if len(r) else float("nan")
    area = np.sum((r[1:] + r[:-1]) / 2.0 * np.diff(t))
    return float(area / (t[-1] - t[0]))
