"""Where does a detector lose its mAP? Its errors in the categories of TIDE (Bolya et al., ECCV 2020).

TIDE ("A General Toolbox for Identifying Object Detection Errors") sorts every false positive
into exactly one of five types and every undetected object into a sixth, then asks for each
type: how much would AP rise if this one kind of error were fixed by an oracle and the rest were
left alone? With IoU thresholds t_f (foreground, the metric's own threshold, 0.5 here) and t_b
(background, 0.1), and for a false positive its best IoU with a ground-truth object of its own
class (IoU_same), of any other class (IoU_other) and of any class (IoU_any):

=================  ======================================================  ====================================
type               a false positive that ...                               the oracle's fix
=================  ======================================================  ====================================
localisation       has the right class, t_b <= IoU_same < t_f              move the box onto that object*
classification     lies on an object of another class, IoU_other >= t_f    relabel it to that object's class*
duplicate          has the right class and place, IoU_same >= t_f, but     remove it
                   a higher-scoring detection already took the object
background         touches no object, IoU_any < t_b                        remove it
both               wrong class and t_b <= IoU_other < t_f                  remove it (which object it meant
                                                                           is unknown)
missed             (an object) no true positive, and no localisation       drop the object from the ground
                   or classification error points at it                    truth (AP's recall denominator)
=================  ======================================================  ====================================

(*) An object can take only one corrected detection. With ``fix_rule="tide"`` (the default,
TIDE's own rule: ``tidecv/errors/error.py``, ``BestGTMatch``), the one is the highest-scoring of
*all* the localisation and classification errors on the object, whichever type is being fixed:
the fix corrects it if it is of the fixed type, and removes every other error of the fixed type
on that object. So fixing classification removes a classification error whose object also has
a higher-scoring localisation error (which stays a false positive), and the other way round.
With ``fix_rule="per-type"`` (ours, not TIDE's) the one is the highest-scoring
error of the fixed type alone, which credits each type with more. Either way an object that
already has a true positive takes none: the errors on it are removed.

When a false positive meets two rows, the first row in the order localisation, classification,
duplicate, background, both wins (TIDE's order): each false positive counts once. True positives
and ignored detections (on `difficult` objects) are decided exactly as `evaluation.evaluate_voc`
decides them (the PASCAL devkit's matching: each detection looks only at its best object of its
class; TIDE's own matching takes the best *unclaimed* one, COCO-style), so fixing nothing
reproduces its AP, and fixing every type gives AP 1. ΔAP is VOC AP (`evaluate_voc`, 11-point by
default; TIDE's toolbox uses COCO-style 101-point AP) after the fix minus before; the ΔAPs of
different types overlap and do not add up to 1 - mAP.

Misses are also broken down by object size (fixed COCO bins of the box area in original image
pixels: small < 32², medium < 96², large), by `truncated`, and by occlusion: the target's
``occlusion`` field (fraction hidden, (G,)) when the data set provides one, otherwise a proxy
from the boxes alone (the largest fraction of the object's box covered by another object's box;
VOC XML, and so `data/shapes`, records no occlusion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fasterrcnn_edu.boxes import as_boxes, box_iou
from fasterrcnn_edu.evaluation import evaluate_voc

__all__ = ["FG_IOU", "BG_IOU", "ERROR_TYPES", "FALSE_POSITIVE_TYPES", "FIX_RULES", "SIZE_BINS", "OCCLUSION_BINS",
           "ImageErrors", "classify_image", "fix_errors", "analyse_errors"]

FG_IOU = 0.5       # t_f: VOC's matching threshold
BG_IOU = 0.1       # t_b: below this a detection touches no object (TIDE's default)

FALSE_POSITIVE_TYPES = ("localisation", "classification", "duplicate", "background", "both")
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
# Which error an object's one correction goes to (module docstring): TIDE's rule, or ours per type.
FIX_RULES = ("tide", "per-type")
# The error types an oracle fixes by turning the detection into a true positive.
MOVER_TYPES = ("localisation", "classification")

# COCO's area ranges, in original image pixels (box area w * h).
SIZE_BINS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, float("inf")))
# Occlusion (fraction hidden, or the box-overlap proxy): none, up to a quarter, more.
OCCLUSION_BINS = (("none", -1.0, 0.0), ("up to 25 %", 0.0, 0.25), ("over 25 %", 0.25, float("inf")))

# Codes of `ImageErrors.kind`, one per detection.
TRUE_POSITIVE, IGNORED = "true positive", "ignored"
# The target fields with one entry per object (the others, "image_id" and "orig_size", are per image).
PER_OBJECT_KEYS = ("boxes", "labels", "difficult", "truncated", "occlusion")


@dataclass
class ImageErrors:
    """The verdict on one image's detections (D of them) and ground truth (G objects).

    - kind: (D,) str: "true positive", "ignored" (on a difficult object) or one of
      `FALSE_POSITIVE_TYPES`.
    - target: (D,) int: the object index the verdict refers to (the matched object, the object a
      localisation / classification / duplicate / both error lies on), -1 for background errors.
    - iou: (D,) float: the detection's IoU with `target` (0 for background errors).
    - gt_tp_score: (G,) float: score of the object's true positive, NaN if it has none.
    - missed: (G,) bool: TIDE's missed objects (not difficult, no true positive, and no
      localisation or classification error points at it).
    """

    kind: np.ndarray
    target: np.ndarray
    iou: np.ndarray
    gt_tp_score: np.ndarray
    missed: np.ndarray


def _best(iou: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise best IoU among the allowed columns: iou, allowed (D, G) -> (best (D,), index (D,)); best -1 if none."""
    masked = np.where(allowed, iou, -1.0)
    if masked.shape[1] == 0:
        return np.full(len(masked), -1.0), np.zeros(len(masked), dtype=np.int64)
    index = masked.argmax(axis=1)          # first maximum on ties, like the devkit and evaluate_voc
    return masked[np.arange(len(masked)), index], index


def classify_image(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                   gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_difficult: torch.Tensor | None = None,
                   fg_iou: float = FG_IOU, bg_iou: float = BG_IOU) -> ImageErrors:
    """Sort one image's detections into true positives, ignored and TIDE's error types.

    boxes (D, 4), scores (D,), labels (D,) int: detections; gt_boxes (G, 4), gt_labels (G,),
    gt_difficult (G,) bool or None: ground truth. Boxes are x1, y1, x2, y2 pixels.
    """
    d, g = len(scores), len(gt_labels)
    difficult = np.zeros(g, dtype=bool) if gt_difficult is None else gt_difficult.cpu().numpy().astype(bool)
    # In the boxes' own precision, as evaluate_voc computes it: an IoU on the 0.5 edge must fall the same way.
    iou = box_iou(as_boxes(boxes.cpu(), where="classify_image"),
                  as_boxes(gt_boxes.cpu(), "gt_boxes", "classify_image")).double().numpy()
    label_np, gt_label_np = labels.cpu().numpy(), gt_labels.cpu().numpy()
    same = label_np[:, None] == gt_label_np[None, :]                  # (D, G)
    best_same, arg_same = _best(iou, same)
    best_other, arg_other = _best(iou, ~same)
    best_any = np.maximum(best_same, best_other)

    # The devkit's matching (as evaluation._match_class): each detection takes its best object
    # of its class; the highest-scoring hit per object is the true positive.
    order = np.argsort(-scores.cpu().double().numpy(), kind="stable")
    hit = best_same >= fg_iou
    ignored = hit.copy()
    ignored[hit] = difficult[arg_same[hit]]
    candidates = order[(hit & ~ignored)[order]]                      # hits in descending score
    _, first = np.unique(arg_same[candidates], return_index=True)
    tp = np.zeros(d, dtype=bool)
    tp[candidates[first]] = True

    fp = ~tp & ~ignored
    loc = fp & (best_same >= bg_iou) & (best_same < fg_iou)
    cls = fp & ~loc & (best_other >= fg_iou)
    dup = fp & ~loc & ~cls & (best_same >= fg_iou)
    bkg = fp & ~loc & ~cls & ~dup & (best_any < bg_iou)
    both = fp & ~loc & ~cls & ~dup & ~bkg                            # t_b <= IoU_other < t_f
    kind = np.select([tp, ignored, loc, cls, dup, bkg, both],
                     [TRUE_POSITIVE, IGNORED, "localisation", "classification", "duplicate", "background", "both"],
                     default="").astype(object)
    on_other = cls | both
    target = np.where(on_other, arg_other, arg_same)
    target[bkg] = -1
    target_iou = np.where(on_other, best_other, best_same)
    target_iou[bkg] = 0.0

    gt_tp_score = np.full(g, np.nan)
    gt_tp_score[target[tp]] = scores.cpu().double().numpy()[tp]
    covered = np.zeros(g, dtype=bool)
    covered[target[loc | cls]] = True
    missed = ~difficult & np.isnan(gt_tp_score) & ~covered
    return ImageErrors(kind=kind, target=target.astype(np.int64), iou=target_iou,
                       gt_tp_score=gt_tp_score, missed=missed)


def _fix_image(detection: dict, target: dict, errors: ImageErrors, fix: frozenset[str],
               fix_rule: str = "tide") -> tuple[dict, dict]:
    """One image's detections and targets with the errors of the types in `fix` corrected (see the module table)."""
    boxes = as_boxes(detection["boxes"], "detection['boxes']", "fix_errors").clone()
    labels = detection["labels"].clone()
    scores = detection["scores"]
    keep = ~np.isin(errors.kind, list(fix & {"duplicate", "background", "both"}))
    movers = np.isin(errors.kind, list(fix & set(MOVER_TYPES)))
    if movers.any():
        # The contenders for each object's one correction: every localisation and classification
        # error on it (TIDE), or only those of the fixed types (ours). In descending score, the first
        # contender per object wins; it is corrected if it is a mover and its object has no true positive.
        contenders = np.isin(errors.kind, MOVER_TYPES) if fix_rule == "tide" else movers
        order = np.argsort(-scores.cpu().double().numpy(), kind="stable")
        claimers = order[contenders[order]]
        free = np.isnan(errors.gt_tp_score)[errors.target[claimers]]
        _, first = np.unique(errors.target[claimers], return_index=True)
        winners = np.zeros(len(claimers), dtype=bool)
        winners[first] = True
        winners &= free & movers[claimers]
        keep[claimers[movers[claimers] & ~winners]] = False     # fixed-type losers go; other types stay
        for i in claimers[winners]:
            gt = int(errors.target[i])
            if errors.kind[i] == "localisation":
                boxes[i] = target["boxes"][gt]
            else:
                labels[i] = target["labels"][gt]
    keep_t = torch.from_numpy(keep)
    fixed_det = {"boxes": boxes[keep_t], "scores": scores[keep_t], "labels": labels[keep_t]}
    fixed_tgt = dict(target)
    if "missed" in fix:
        stay = torch.from_numpy(~errors.missed)
        fixed_tgt.update({k: target[k][stay] for k in PER_OBJECT_KEYS if target.get(k) is not None})
    return fixed_det, fixed_tgt


def fix_errors(detections: Sequence[dict], targets: Sequence[dict], errors: Sequence[ImageErrors],
               fix: Sequence[str], fix_rule: str = "tide") -> tuple[list[dict], list[dict]]:
    """Detections and targets with every error of the types in `fix` corrected by the oracle.

    detections, targets: per image, as `inference.predict_dataset` returns them; errors: the
    `classify_image` verdict of each image; fix: a subset of `ERROR_TYPES`; fix_rule: one of
    `FIX_RULES`, which error an object's one correction goes to (module docstring).
    """
    unknown = set(fix) - set(ERROR_TYPES)
    if unknown:
        raise ValueError(f"unknown error types {sorted(unknown)}; expected some of {ERROR_TYPES}")
    if fix_rule not in FIX_RULES:
        raise ValueError(f"unknown fix rule {fix_rule!r}; expected one of {FIX_RULES}")
    pairs = [_fix_image(d, t, e, frozenset(fix), fix_rule) for d, t, e in zip(detections, targets, errors)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _occlusion(target: dict) -> np.ndarray:
    """(G,) fraction hidden: the target's "occlusion" field, or the largest fraction of each box covered by another box."""
    if target.get("occlusion") is not None:
        return target["occlusion"].cpu().double().numpy()
    b = as_boxes(target["boxes"], "target['boxes']").cpu().double().numpy()
    width = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    covered = width * height / area[:, None]                         # (G, G): row i's box covered by column j's
    np.fill_diagonal(covered, 0.0)
    return covered.max(axis=1) if len(b) else np.zeros(0)


def _bin_index(values: np.ndarray, bins: Sequence[tuple[str, float, float]]) -> np.ndarray:
    """(N,) values -> (N,) index of the bin (lo, hi] ... with the first bin [lo, hi] closed."""
    index = np.zeros(len(values), dtype=np.int64)
    for i, (_, lo, hi) in enumerate(bins):
        index[(values > lo) & (values <= hi)] = i
    return index


def _miss_table(groups: np.ndarray, names: Sequence[str], no_tp: np.ndarray, missed: np.ndarray,
                missed_at_threshold: np.ndarray) -> dict:
    """Per group: non-difficult objects, objects without a true positive, TIDE-missed, undetected at the score threshold."""
    table = {}
    for i, name in enumerate(names):
        inside = groups == i
        n = int(inside.sum())
        table[name] = {"objects": n, "not_detected": int(no_tp[inside].sum()), "missed": int(missed[inside].sum()),
                       "not_detected_at_threshold": int(missed_at_threshold[inside].sum()),
                       "miss_rate_at_threshold": float(missed_at_threshold[inside].mean()) if n else None}
    return table


def _object_table(targets: Sequence[dict], errors: Sequence[ImageErrors], score_threshold: float) -> dict:
    """Every non-difficult object of the split, flattened: (N,) arrays for the miss breakdowns and the worst misses."""
    rows = {"image": [], "index": [], "area": [], "occlusion": [], "truncated": [], "no_tp": [], "missed": [],
            "missed_at_threshold": []}
    for image, (t, e) in enumerate(zip(targets, errors)):
        g = len(t["labels"])
        keep = np.ones(g, dtype=bool) if t.get("difficult") is None else ~t["difficult"].cpu().numpy().astype(bool)
        b = as_boxes(t["boxes"], f"targets[{image}]['boxes']").cpu().double().numpy()
        truncated = np.zeros(g, dtype=bool) if t.get("truncated") is None else t["truncated"].cpu().numpy()
        no_tp = np.isnan(e.gt_tp_score)
        rows["image"].append(np.full(int(keep.sum()), image))
        rows["index"].append(np.flatnonzero(keep))
        rows["area"].append(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[keep])
        rows["occlusion"].append(_occlusion(t)[keep])
        rows["truncated"].append(truncated.astype(bool)[keep])
        rows["no_tp"].append(no_tp[keep])
        rows["missed"].append(e.missed[keep])
        # The true positive is each object's highest-scoring hit, so the object is found at a
        # threshold exactly when its true positive scores at least that much.
        rows["missed_at_threshold"].append((no_tp | (np.nan_to_num(e.gt_tp_score, nan=-1.0) < score_threshold))[keep])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()}


def _miss_breakdown(objects: dict) -> dict:
    """Misses by size, occlusion and truncation, from `_object_table`'s arrays."""
    counts = (objects["no_tp"], objects["missed"], objects["missed_at_threshold"])
    return {"by_size": _miss_table(_bin_index(objects["area"], SIZE_BINS), [b[0] for b in SIZE_BINS], *counts),
            "by_occlusion": _miss_table(_bin_index(objects["occlusion"], OCCLUSION_BINS),
                                        [b[0] for b in OCCLUSION_BINS], *counts),
            "by_truncation": _miss_table(objects["truncated"].astype(np.int64), ["not truncated", "truncated"],
                                         *counts)}


def _name(label: int, class_names: Sequence[str] | None) -> str | int:
    """The class name of a label 1..K, or the label itself without names."""
    return class_names[label - 1] if class_names else label


def _worst_examples(detections, targets, errors, image_ids, class_names, objects: dict, top: int) -> dict:
    """For each error type, the `top` highest-scoring false positives (for misses: the largest missed objects)."""
    rows = []
    for image, (d, t, e) in enumerate(zip(detections, targets, errors)):
        for i in np.flatnonzero(np.isin(e.kind, FALSE_POSITIVE_TYPES)):
            row = {"type": e.kind[i], "image_id": image_ids[image], "score": float(d["scores"][i]),
                   "label": _name(int(d["labels"][i]), class_names),
                   "box": [round(float(v), 1) for v in d["boxes"][i]], "iou": float(e.iou[i])}
            if e.target[i] >= 0:
                row["object_label"] = _name(int(t["labels"][e.target[i]]), class_names)
                row["object_box"] = [round(float(v), 1) for v in t["boxes"][e.target[i]]]
            rows.append(row)
    rows.sort(key=lambda r: -r["score"])
    worst = {kind: [r for r in rows if r["type"] == kind][:top] for kind in FALSE_POSITIVE_TYPES}
    missed = np.flatnonzero(objects["missed"])
    missed = missed[np.argsort(-objects["area"][missed], kind="stable")][:top]
    worst["missed"] = []
    for k in missed:
        image, index = int(objects["image"][k]), int(objects["index"][k])
        worst["missed"].append({"type": "missed", "image_id": image_ids[image],
                                "label": _name(int(targets[image]["labels"][index]), class_names),
                                "box": [round(float(v), 1) for v in targets[image]["boxes"][index]],
                                "area": float(objects["area"][k])})
    return worst


def _worst_images(detections, errors, image_ids, objects: dict, score_threshold: float, top: int) -> list[dict]:
    """The `top` images with the most errors a reader sees: false positives scoring >= the threshold, plus objects undetected at it."""
    undetected = np.bincount(objects["image"].astype(np.int64)[objects["missed_at_threshold"]], minlength=len(errors))
    ranked = []
    for image, (d, e) in enumerate(zip(detections, errors)):
        confident = (d["scores"].cpu().numpy() >= score_threshold) & np.isin(e.kind, FALSE_POSITIVE_TYPES)
        counts = {kind: int((confident & (e.kind == kind)).sum()) for kind in FALSE_POSITIVE_TYPES}
        counts["undetected"] = int(undetected[image])
        total = sum(counts.values())
        if total:
            ranked.append({"image_id": image_ids[image], "errors": total, **counts})
    ranked.sort(key=lambda r: -r["errors"])                          # stable: ties keep split order
    return ranked[:top]


def analyse_errors(detections: Sequence[dict], targets: Sequence[dict], num_classes: int,
                   class_names: Sequence[str] | None = None, use_07_metric: bool = True,
                   fg_iou: float = FG_IOU, bg_iou: float = BG_IOU, score_threshold: float = 0.5,
                   top: int = 8, fix_rule: str = "tide") -> dict:
    """TIDE's error breakdown of a detector on a split, with the mAP each error type costs.

    detections: per image, {"boxes" (D, 4), "scores" (D,), "labels" (D,)}; targets: per image,
    {"boxes" (G, 4), "labels" (G,), optional "difficult" (G,) bool, "truncated" (G,) bool,
    "occlusion" (G,) float, "image_id"}: both as `inference.predict_dataset` returns them.
    num_classes: K + 1 (with the background). score_threshold: the operating point of the
    "at threshold" miss counts and of `worst_images` (0.5: what `detect` draws). fix_rule: one
    of `FIX_RULES`, which error an object's one correction goes to (module docstring).

    Returns a JSON-ready dict: "map" (VOC AP before any fix), "delta_ap" (per `ERROR_TYPES`
    entry, plus "all false positives" and "all"), "map_fixed" (the same, mAP after the fix),
    "counts" (per false-positive type and for true positives: {"all": over every detection,
    "at_threshold": among those scoring >= score_threshold}; for "missed": {"all": TIDE's missed
    objects, "at_threshold": objects without a true positive scoring >= score_threshold};
    "objects": the non-difficult objects), "misses" (by size, occlusion and truncation),
    "worst_examples" (per type) and "worst_images".
    """
    errors = [classify_image(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"], t.get("difficult"),
                             fg_iou, bg_iou) for d, t in zip(detections, targets)]

    def mean_ap(dets, tgts) -> float:
        return evaluate_voc(dets, tgts, num_classes, iou_threshold=fg_iou, use_07_metric=use_07_metric).map

    base = mean_ap(detections, targets)
    fixes = {kind: (kind,) for kind in ERROR_TYPES}
    fixes["all false positives"] = FALSE_POSITIVE_TYPES
    fixes["all"] = ERROR_TYPES
    map_fixed = {name: mean_ap(*fix_errors(detections, targets, errors, types, fix_rule))
                 for name, types in fixes.items()}

    kinds = np.concatenate([e.kind for e in errors]) if errors else np.zeros(0, dtype=object)
    scores = np.concatenate([d["scores"].cpu().numpy() for d in detections]) if detections else np.zeros(0)
    objects = _object_table(targets, errors, score_threshold)
    image_ids = [str(t.get("image_id", i)) for i, t in enumerate(targets)]
    counts = {kind: {"all": int((kinds == kind).sum()), "at_threshold": int(((kinds == kind) & (scores >= score_threshold)).sum())}
              for kind in FALSE_POSITIVE_TYPES}
    counts["true positive"] = {"all": int((kinds == TRUE_POSITIVE).sum()),
                               "at_threshold": int(((kinds == TRUE_POSITIVE) & (scores >= score_threshold)).sum())}
    counts["missed"] = {"all": int(objects["missed"].sum()), "at_threshold": int(objects["missed_at_threshold"].sum())}
    counts["objects"] = int(len(objects["missed"]))
    return {
        "settings": {"foreground_iou": fg_iou, "background_iou": bg_iou,
                     "metric": "VOC07 11-point AP" if use_07_metric else "VOC2010+ area AP",
                     "score_threshold": score_threshold,
                     "size_bins": {name: [lo, hi if np.isfinite(hi) else None] for name, lo, hi in SIZE_BINS},
                     "size": "box area w * h in original image pixels, COCO's fixed bins",
                     "occlusion": ("the targets' occlusion field" if targets and targets[0].get("occlusion") is not None
                                   else "proxy: the largest fraction of the object's box covered by another "
                                        "object's box (the annotations record no occlusion)"),
                     "precedence": list(FALSE_POSITIVE_TYPES),
                     "fix_rule": fix_rule},
        "images": len(targets),
        "map": base,
        "delta_ap": {name: value - base for name, value in map_fixed.items()},
        "map_fixed": map_fixed,
        "counts": counts,
        "misses": _miss_breakdown(objects),
        "worst_examples": _worst_examples(detections, targets, errors, image_ids, class_names, objects, top),
        "worst_images": _worst_images(detections, errors, image_ids, objects, score_threshold, top),
    }
