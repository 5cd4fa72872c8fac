"""Tests for fasterrcnn_edu.evaluation: hand-computed VOC APs, devkit matching rules, COCO AP,
recall-vs-IoU and the sliding-window proposal baseline."""
import math

import numpy as np
import pytest
import torch

from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.evaluation import (average_recall, evaluate_coco, evaluate_voc,
                                       recall_vs_iou, voc_ap)
from fasterrcnn_edu.lab.baselines import selective_search_proposals, sliding_window_proposals


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _tgt(boxes, labels, difficult=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return t


# ---------------------------------------------------------------------------------------------
# voc_ap
# ---------------------------------------------------------------------------------------------

def _devkit_ap(rec, prec, use_07):
    """Line-by-line transcription of py-faster-rcnn's voc_ap (the devkit's VOCevaldet.m / VOCap.m),
    with its thresholds np.arange(0., 1.1, 0.1) (MATLAB's 0:0.1:1), not decimal ones typed here."""
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = [pr for r, pr in zip(rec, prec) if r >= t]
            ap += (max(p) if p else 0.0) / 11
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def test_voc_ap_textbook_values():
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    # 11-point: t = 0..0.5 (6 points) -> max precision 1; t = 0.6..1.0 (5 points) -> 2/3.
    # AP = (6 * 1 + 5 * 2/3) / 11 = (28/3) / 11 = 28/33.
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(28 / 33, abs=1e-12)
    # Area: envelope is 1 on (0, 0.5], 2/3 on (0.5, 1]: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(5 / 6, abs=1e-12)


def test_voc_ap_matches_devkit_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(20):
        tp = rng.random(30) < 0.6
        npos = int(tp.sum()) + int(rng.integers(0, 5))
        rec = np.cumsum(tp) / npos
        prec = np.cumsum(tp) / np.arange(1, 31)
        for use_07 in (True, False):
            assert voc_ap(rec, prec, use_07) == pytest.approx(_devkit_ap(rec, prec, use_07), abs=1e-12)


def test_voc_ap_edge_cases():
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0
    # The released code's t = 0.3 is 0.30000000000000004: a recall of exactly 3/10 does not reach
    # it (t = 0, 0.1, 0.2 count), while 0.4 reaches t = 0.4 (exact in np.arange).
    assert voc_ap(np.array([0.3]), np.array([1.0]), True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.4]), np.array([1.0]), True) == pytest.approx(5 / 11)


# ---------------------------------------------------------------------------------------------
# evaluate_voc
# ---------------------------------------------------------------------------------------------

def _hand_case(with_difficult_detection=True):
    """Image A: g1, g2; image B: g3 and a difficult g4. npos = 3.

    Detections, by score:
      0.9 A on g1            -> TP
      0.8 A shifted g1 (IoU 81/119 = 0.68, best gt g1, already matched) -> FP (duplicate)
      0.7 B on difficult g4  -> ignored
      0.6 B on g3            -> TP
      0.5 B in empty space   -> FP
    g2 is missed.
    """
    targets = [_tgt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]),
               _tgt([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], difficult=[False, True])]
    det_a = _det([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [1, 1])
    if with_difficult_detection:
        det_b = _det([[50, 50, 60, 60], [0, 0, 10, 10], [100, 100, 110, 110]], [0.7, 0.6, 0.5], [1, 1, 1])
    else:
        det_b = _det([[0, 0, 10, 10], [100, 100, 110, 110]], [0.6, 0.5], [1, 1])
    return [det_a, det_b], targets


def test_evaluate_voc_hand_computed():
    dets, targets = _hand_case()
    # Non-ignored sequence TP, FP, TP, FP with npos = 3:
    #   cum TP 1,1,2,2   cum FP 0,1,1,2
    #   recall    1/3, 1/3, 2/3, 2/3
    #   precision 1,   1/2, 2/3, 1/2
    # 11-point: t in {0, .1, .2, .3} (recall 1/3 >= .3) -> max precision 1   (4 points)
    #           t in {.4, .5, .6} -> max precision at recall 2/3 is 2/3     (3 points)
    #           t >= .7 -> no recall reaches it -> 0
    #   AP07 = (4 * 1 + 3 * 2/3) / 11 = 6/11
    # Area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 beyond: 1/3 + 2/9 = 5/9
    r07 = evaluate_voc(dets, targets, num_classes=2, use_07_metric=True, class_names=["dog"])
    assert r07.ap["dog"] == pytest.approx(6 / 11, abs=1e-12)
    assert r07.map == pytest.approx(6 / 11, abs=1e-12)
    np.testing.assert_allclose(r07.recall["dog"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r07.precision["dog"], [1, 1 / 2, 2 / 3, 1 / 2])
    r10 = evaluate_voc(dets, targets, num_classes=2, use_07_metric=False, class_names=["dog"])
    assert r10.ap["dog"] == pytest.approx(5 / 9, abs=1e-12)


def test_npos_excludes_difficult():
    dets, targets = _hand_case()
    assert evaluate_voc(dets, targets, num_classes=2).npos[1] == 3


def test_detection_on_difficult_is_ignored():
    with_d = evaluate_voc(*_hand_case(True), num_classes=2)
    without = evaluate_voc(*_hand_case(False), num_classes=2)
    np.testing.assert_array_equal(with_d.precision[1], without.precision[1])
    np.testing.assert_array_equal(with_d.recall[1], without.recall[1])
    assert with_d.ap[1] == without.ap[1]


def test_duplicate_detection_is_false_positive():
    targets = [_tgt([[0, 0, 10, 10]], [1])]
    dets = [_det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])]
    r = evaluate_voc(dets, targets, num_classes=2)
    np.testing.assert_allclose(r.precision[1], [1.0, 0.5])
    np.testing.assert_allclose(r.recall[1], [1.0, 1.0])
    assert r.ap[1] == pytest.approx(1.0)


def test_devkit_takes_best_gt_even_if_matched():
    # Two overlapping gts; the second detection's best gt (IoU 1) is already taken, and although
    # it overlaps the other gt with IoU 0.6 the devkit counts it as a duplicate (FP).
    targets = [_tgt([[0, 0, 10, 10], [0, 0, 10, 6]], [1, 1])]
    dets = [_det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])]
    r = evaluate_voc(dets, targets, num_classes=2)
    np.testing.assert_allclose(r.precision[1], [1.0, 0.5])
    np.testing.assert_allclose(r.recall[1], [0.5, 0.5])


def test_perfect_detections_and_class_without_gt():
    targets = [_tgt([[0, 0, 10, 10], [5, 5, 40, 30]], [1, 2]), _tgt([[3, 3, 9, 19]], [1])]
    dets = [_det([[0, 0, 10, 10], [5, 5, 40, 30], [60, 60, 70, 70]], [0.9, 0.8, 0.3], [1, 2, 3]),
            _det([[3, 3, 9, 19]], [0.7], [1])]
    names = ["__background__", "cat", "dog", "cow"]
    r = evaluate_voc(dets, targets, num_classes=4, class_names=names)
    assert r.ap["cat"] == 1.0 and r.ap["dog"] == 1.0
    assert math.isnan(r.ap["cow"]) and r.npos["cow"] == 0     # only a false positive, no gt
    assert r.map == 1.0                                       # NaN class excluded from the mean
    table = r.table()
    assert "cow" in table and "n/a" in table and "mAP" in table and "100.00" in table


def test_missed_class_and_iou_threshold():
    targets = [_tgt([[0, 0, 10, 10]], [1])]
    dets = [_det([[0, 0, 10, 6]], [0.9], [1])]                 # IoU 0.6
    assert evaluate_voc(dets, targets, 2, iou_threshold=0.5).ap[1] == pytest.approx(1.0)
    assert evaluate_voc(dets, targets, 2, iou_threshold=0.7).ap[1] == 0.0
    empty = [_det(np.zeros((0, 4)), [], [])]
    assert evaluate_voc(empty, targets, 2).ap[1] == 0.0


def _devkit_match(dets, targets, c, thr=0.5):
    """Transcription of VOCevaldet.m's sequential loop (continuous IoU) for class c."""
    items = [(float(s), i, b) for i, d in enumerate(dets)
             for b, s, l in zip(d["boxes"], d["scores"], d["labels"]) if l == c]
    items.sort(key=lambda x: -x[0])
    gts = [(t["boxes"][t["labels"] == c], t["difficult"][t["labels"] == c]) for t in targets]
    used = [torch.zeros(len(g), dtype=torch.bool) for g, _ in gts]
    tp, fp = [], []
    for _, i, b in items:
        g, diff = gts[i]
        ovmax, jmax = -math.inf, -1
        for j in range(len(g)):
            ov = box_iou(b[None], g[j][None]).item()
            if ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax >= thr:
            if diff[jmax]:
                continue                                    # ignored
            if not used[i][jmax]:
                used[i][jmax] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    npos = sum(int((~d).sum()) for _, d in gts)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return tp / npos, tp / np.maximum(tp + fp, 1e-12)


def test_evaluate_voc_matches_sequential_devkit_loop():
    gen = torch.Generator().manual_seed(0)
    targets, dets = [], []
    for _ in range(6):
        g = torch.rand(5, 2, generator=gen) * 80
        gb = torch.cat([g, g + 15 + torch.rand(5, 2, generator=gen) * 30], 1)
        targets.append({"boxes": gb, "labels": torch.randint(1, 3, (5,), generator=gen),
                        "difficult": torch.rand(5, generator=gen) < 0.2})
        # Jittered copies of the gts (several per gt -> duplicates) plus random boxes.
        idx = torch.randint(0, 5, (12,), generator=gen)
        db = torch.cat([gb[idx] + torch.randn(12, 4, generator=gen) * 4,
                        torch.cat([g, g + 25], 1)[:3] + 40])
        dets.append({"boxes": db, "scores": torch.rand(15, generator=gen),
                     "labels": torch.cat([targets[-1]["labels"][idx], torch.randint(1, 3, (3,), generator=gen)])})
    for use_07 in (True, False):
        result = evaluate_voc(dets, targets, num_classes=3, use_07_metric=use_07)
        for c in (1, 2):
            rec, prec = _devkit_match(dets, targets, c)
            np.testing.assert_allclose(result.recall[c], rec)
            np.testing.assert_allclose(result.precision[c], prec)
            assert result.ap[c] == pytest.approx(_devkit_ap(rec, prec, use_07), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# evaluate_coco
# ---------------------------------------------------------------------------------------------

def _coco_case(shift=0.0):
    g = torch.tensor([[10, 10, 110, 90], [150, 40, 260, 200], [30, 120, 90, 190]], dtype=torch.float32)
    targets = [{"boxes": g, "labels": torch.tensor([1, 2, 1])},
               {"boxes": g[:2] + 5, "labels": torch.tensor([2, 2])}]
    dets = [{"boxes": t["boxes"] + shift, "labels": t["labels"].clone(),
             "scores": torch.linspace(0.9, 0.6, len(t["labels"]))} for t in targets]
    return dets, targets


def test_coco_perfect_and_shifted():
    names = ["__background__", "cat", "dog"]
    perfect = evaluate_coco(*_coco_case(0.0), class_names=names)
    assert set(perfect) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert perfect["AP"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["AP50"] == pytest.approx(1.0, abs=1e-6)
    shifted = evaluate_coco(*_coco_case(8.0), class_names=names)
    assert shifted["AP"] < 0.9 and shifted["AP50"] == pytest.approx(1.0, abs=1e-6)


def test_coco_difficult_not_penalised(capsys):
    dets, targets = _coco_case(0.0)
    # An extra, undetected difficult object and a detection sitting on another difficult one.
    targets[0] = {"boxes": torch.cat([targets[0]["boxes"], torch.tensor([[300., 300, 380, 360],
                                                                          [400, 50, 470, 120]])]),
                  "labels": torch.tensor([1, 2, 1, 1, 1]),
                  "difficult": torch.tensor([False, False, False, True, True])}
    dets[0] = {k: torch.cat([v, extra]) for (k, v), extra in
               zip(dets[0].items(), [torch.tensor([[400., 50, 470, 120]]), torch.tensor([1]),
                                     torch.tensor([0.95])])}
    r = evaluate_coco(dets, targets, class_names=["cat", "dog"])
    assert r["AP"] == pytest.approx(1.0, abs=1e-6)
    assert capsys.readouterr().out == ""                      # silent by default


# ---------------------------------------------------------------------------------------------
# recall vs IoU
# ---------------------------------------------------------------------------------------------

def test_recall_vs_iou_hand_case():
    gt = [torch.tensor([[0.0, 0, 10, 10]])]
    props = [torch.tensor([[0.0, 0, 10, 6], [0.0, 0, 10, 8]])]   # IoU 0.6, then 0.8
    t, r = recall_vs_iou(props, gt, top_n=2)
    np.testing.assert_allclose(t, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0])
    np.testing.assert_array_equal(r, (t <= 0.8).astype(float))
    _, r1 = recall_vs_iou(props, gt, top_n=1)                      # only the IoU-0.6 proposal
    np.testing.assert_array_equal(r1, (t <= 0.6).astype(float))
    # Recall 1 on [0.5, 0.8], linear drop to 0 at 0.85: area 0.3 + 0.025 = 0.325, / 0.5 = 0.65.
    assert average_recall(t, r) == pytest.approx(0.65)


def test_recall_vs_iou_difficult_and_many_images():
    gt = [torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), torch.tensor([[0.0, 0, 20, 20]])]
    props = [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros((0, 4))]
    _, r = recall_vs_iou(props, gt, top_n=10, iou_thresholds=[0.5])
    assert r[0] == pytest.approx(1 / 3)                            # second image proposes nothing
    _, r = recall_vs_iou(props, gt, top_n=10, iou_thresholds=[0.5],
                         difficult=[torch.tensor([False, True]), torch.tensor([False])])
    assert r[0] == pytest.approx(1 / 2)


# ---------------------------------------------------------------------------------------------
# Proposal baselines
# ---------------------------------------------------------------------------------------------

def test_sliding_window_proposals_finds_bright_rectangle():
    image = torch.full((3, 160, 224), 0.1)
    image[:, 50:114, 70:134] = 0.9                 # one 64 x 64 bright square
    boxes, scores = sliding_window_proposals(image, max_proposals=300, return_scores=True)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 0 < len(boxes) <= 300
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 224).all() and (boxes[:, 3] <= 160).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (scores[:-1] >= scores[1:]).all()
    square = torch.tensor([[70.0, 50, 134, 114]])
    assert box_iou(boxes[:1], square).item() > 0.5
    # NMS at 0.7 leaves no near-duplicates.
    iou = box_iou(boxes, boxes).fill_diagonal_(0)
    assert iou.max() <= 0.7 + 1e-6


def test_sliding_window_proposals_uint8_and_small_image():
    image = (torch.rand(3, 40, 50) * 255).to(torch.uint8)
    boxes = sliding_window_proposals(image, scales=(16, 32, 64), max_proposals=20)
    assert boxes.shape[1] == 4 and 0 < len(boxes) <= 20
    assert (boxes[:, 2] <= 50).all() and (boxes[:, 3] <= 40).all()
    tiny = sliding_window_proposals(torch.rand(3, 10, 10), scales=(32,))
    assert tiny.tolist() == [[0.0, 0.0, 10.0, 10.0]]


def test_selective_search_if_available():
    image = torch.rand(3, 64, 64)
    try:
        import cv2
        cv2.ximgproc.segmentation  # noqa: B018
    except (ImportError, AttributeError):
        with pytest.raises(ImportError, match="opencv-contrib"):
            selective_search_proposals(image)
        pytest.skip("opencv-contrib (cv2.ximgproc) not installed")
    boxes = selective_search_proposals(image)
    assert boxes.ndim == 2 and boxes.shape[1] == 4
