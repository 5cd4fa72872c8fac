"""Tests for fasterrcnn_edu.error_analysis: TIDE's error types on hand-built detections whose verdicts are known."""
import numpy as np
import pytest
import torch

from fasterrcnn_edu.error_analysis import analyse_errors, classify_image, fix_errors
from fasterrcnn_edu.evaluation import evaluate_voc


def _det(rows):
    """rows: (x1, y1, x2, y2, score, label) -> a detection dict."""
    rows = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return {"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].long()}


def _tgt(rows, difficult=None, image_id="000001"):
    """rows: (x1, y1, x2, y2, label) -> a target dict like VOCDataset's."""
    rows = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    n = len(rows)
    return {"boxes": rows[:, :4], "labels": rows[:, 4].long(),
            "difficult": torch.tensor(difficult or [False] * n, dtype=torch.bool),
            "truncated": torch.zeros(n, dtype=torch.bool), "image_id": image_id}


# One image with one error of each kind. Ground truth:
GT = [(0, 0, 100, 100, 1),        # g0: found (true positive) and found again (duplicate)
      (200, 0, 300, 100, 2),      # g1: a class-1 detection on it (classification error)
      (0, 150, 100, 250, 1),      # g2: a class-1 detection a third on it (localisation error)
      (200, 150, 230, 175, 2),    # g3: nothing near it (missed; 30 x 25 px, small)
      (320, 0, 380, 60, 2),       # g4: found late (so that false positives before it cost AP)
      (320, 100, 380, 160, 1)]    # g5: found late
DETS = [(0, 0, 100, 100, 0.9, 1),         # true positive on g0
        (2, 2, 100, 100, 0.8, 1),         # duplicate of g0 (IoU 0.96)
        (200, 0, 300, 100, 0.7, 1),       # classification: on g1, wrong class
        (50, 150, 150, 250, 0.6, 1),      # localisation: IoU 1/3 with g2
        (330, 200, 390, 240, 0.5, 2),     # background: touches nothing
        (50, 0, 150, 100, 0.4, 2),        # both: wrong class (g0 is class 1) and IoU 1/3
        (320, 0, 380, 60, 0.1, 2),        # true positive on g4
        (320, 100, 380, 160, 0.05, 1)]    # true positive on g5
KINDS = ["true positive", "duplicate", "classification", "localisation", "background", "both",
         "true positive", "true positive"]


def _voc_map(dets, tgts):
    return evaluate_voc(dets, tgts, num_classes=3).map


def test_classify_image_finds_each_error_type():
    d, t = _det(DETS), _tgt(GT)
    errors = classify_image(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"], t["difficult"])
    assert list(errors.kind) == KINDS
    assert list(errors.target) == [0, 0, 1, 2, -1, 0, 4, 5]
    assert errors.iou[3] == pytest.approx(1 / 3)
    # g1 and g2 are covered by the classification and localisation errors, so only g3 is missed.
    assert list(errors.missed) == [False, False, False, True, False, False]
    assert np.isnan(errors.gt_tp_score[[1, 2, 3]]).all() and errors.gt_tp_score[0] == pytest.approx(0.9)


def test_each_fix_is_the_hand_made_correction():
    d, t = _det(DETS), _tgt(GT)
    report = analyse_errors([d], [t], num_classes=3)
    base = _voc_map([d], [t])
    assert report["map"] == pytest.approx(base)
    without = lambda i: [r for k, r in enumerate(DETS) if k != i]             # noqa: E731
    expected = {
        "duplicate": ([_det(without(1))], [t]),
        "background": ([_det(without(4))], [t]),
        "both": ([_det(without(5))], [t]),
        "classification": ([_det([r if k != 2 else (200, 0, 300, 100, 0.7, 2) for k, r in enumerate(DETS)])], [t]),
        "localisation": ([_det([r if k != 3 else (0, 150, 100, 250, 0.6, 1) for k, r in enumerate(DETS)])], [t]),
        "missed": ([d], [_tgt([g for k, g in enumerate(GT) if k != 3])]),
    }
    for kind, (dets, tgts) in expected.items():
        assert report["map_fixed"][kind] == pytest.approx(_voc_map(dets, tgts)), kind
        assert report["delta_ap"][kind] > 0, kind           # the scene is built so that every fix helps
    assert report["map_fixed"]["all"] == 1.0
    # Hand-computed: class 1 (npos 3) before any fix: TP, FP, FP, FP, TP -> precision 1 up to
    # recall 1/3 and 2/5 at recall 2/3; class 2 (npos 3): FP, FP, TP -> 1/3 at recall 1/3.
    assert base == pytest.approx(((4 * 1 + 3 * 0.4) / 11 + 4 / 3 / 11) / 2)


def test_counts_misses_and_worst_examples():
    report = analyse_errors([_det(DETS)], [_tgt(GT)], num_classes=3, class_names=["one", "two"],
                            score_threshold=0.5)
    counts = report["counts"]
    for kind in ("classification", "localisation", "duplicate", "background", "both"):
        assert counts[kind]["all"] == 1, kind
    assert counts["both"]["at_threshold"] == 0                # scored 0.4
    # Missed (TIDE): g3 only; without a true positive scoring >= 0.5: g1, g2, g3, and g4, g5 (found at 0.1, 0.05).
    assert counts["missed"] == {"all": 1, "at_threshold": 5}
    small = report["misses"]["by_size"]["small"]
    assert small == {"objects": 1, "not_detected": 1, "missed": 1, "not_detected_at_threshold": 1,
                     "miss_rate_at_threshold": 1.0}
    assert report["worst_examples"]["classification"][0]["object_label"] == "two"
    assert report["worst_examples"]["missed"][0]["box"] == [200.0, 150.0, 230.0, 175.0]
    assert report["worst_images"][0]["image_id"] == "000001"


def test_difficult_objects_are_neither_errors_nor_misses():
    d = _det([(0, 0, 100, 100, 0.9, 1)])
    t = _tgt([(0, 0, 100, 100, 1), (200, 0, 300, 100, 1)], difficult=[True, True])
    errors = classify_image(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"], t["difficult"])
    assert list(errors.kind) == ["ignored"] and not errors.missed.any()


def test_images_without_objects_or_detections():
    empty_d, empty_t = _det([]), _tgt([])
    errors = classify_image(empty_d["boxes"], empty_d["scores"], empty_d["labels"],
                            empty_t["boxes"], empty_t["labels"], empty_t["difficult"])
    assert len(errors.kind) == 0 and len(errors.missed) == 0
    d = _det([(0, 0, 10, 10, 0.9, 1)])
    errors = classify_image(d["boxes"], d["scores"], d["labels"], empty_t["boxes"], empty_t["labels"], None)
    assert list(errors.kind) == ["background"]


def test_fixing_every_error_gives_ap_one_on_random_scenes():
    gen = torch.Generator().manual_seed(0)
    dets, tgts = [], []
    for i in range(30):
        g = int(torch.randint(0, 6, (1,), generator=gen))
        xy = torch.rand(g, 2, generator=gen) * 200
        gt = torch.cat([xy, xy + 10 + torch.rand(g, 2, generator=gen) * 60], 1)
        # Detections: jittered copies of the objects (some twice) and random boxes, random labels.
        copies = gt.repeat(2, 1) + torch.randn(2 * g, 4, generator=gen) * 8
        noise_xy = torch.rand(4, 2, generator=gen) * 200
        noise = torch.cat([noise_xy, noise_xy + 20], 1)
        boxes = torch.cat([copies, noise])
        dets.append({"boxes": boxes, "scores": torch.rand(len(boxes), generator=gen),
                     "labels": torch.randint(1, 4, (len(boxes),), generator=gen)})
        tgts.append({"boxes": gt, "labels": torch.randint(1, 4, (g,), generator=gen),
                     "difficult": torch.rand(g, generator=gen) < 0.1, "image_id": f"{i:06d}"})
    report = analyse_errors(dets, tgts, num_classes=4)
    assert report["map"] == pytest.approx(evaluate_voc(dets, tgts, 4).map)
    assert report["map_fixed"]["all"] == 1.0
    for kind in ("classification", "localisation", "both", "duplicate", "background", "missed"):
        assert report["delta_ap"][kind] >= 0, kind
        assert report["counts"][kind]["all"] > 0, kind


def test_fix_errors_refuses_unknown_types():
    d, t = _det(DETS), _tgt(GT)
    errors = [classify_image(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"], t["difficult"])]
    with pytest.raises(ValueError, match="unknown error types"):
        fix_errors([d], [t], errors, ["typo"])


def test_occlusion_proxy_and_field():
    t = _tgt([(0, 0, 100, 100, 1), (50, 0, 150, 100, 1), (300, 300, 310, 310, 2)])
    report = analyse_errors([_det([])], [t], num_classes=3)
    occ = report["misses"]["by_occlusion"]
    # The first two boxes each have half their area under the other; the third is free.
    assert occ["none"]["objects"] == 1 and occ["over 25 %"]["objects"] == 2 and occ["up to 25 %"]["objects"] == 0
    t["occlusion"] = torch.tensor([0.0, 0.1, 0.0])
    occ = analyse_errors([_det([])], [t], num_classes=3)["misses"]["by_occlusion"]
    assert occ["none"]["objects"] == 2 and occ["up to 25 %"]["objects"] == 1


# TIDE's fix rule on a hand-built image. Ground truth, both class 1: g0 (0, 0, 100, 100) and
# g1 (200, 0, 300, 100). Detections: A, class 2 exactly on g0 (a classification error); B, class 1
# at (50, 0, 150, 100), IoU 5000 / 15000 = 1/3 with g0 (a localisation error); C, class 1 on g1 (a
# true positive, score 0.7). Class 2 has no object, so the mAP is class 1's AP, npos 2.
TIDE_GT = [(0, 0, 100, 100, 1), (200, 0, 300, 100, 1)]


def _tide_scene(score_cls: float, score_loc: float):
    dets = [(0, 0, 100, 100, score_cls, 2), (50, 0, 150, 100, score_loc, 1), (200, 0, 300, 100, 0.7, 1)]
    return _det(dets), _tgt(TIDE_GT)


# Worked by hand, 11-point AP. Before any fix, class 1 in score order is B (FP), C (TP): precision
# 1/2 at recall 1/2, so AP = 6 * (1/2) / 11 = 3/11 in both scenes.
# Scene 1, A (0.9) outscores B (0.8) on g0:
#  - fix classification: A, the best error on g0, becomes a class-1 TP; B stays an FP. A, B, C =
#    TP, FP, TP: precision 1 up to recall 1/2, 2/3 at recall 1: (6 * 1 + 5 * 2/3) / 11 = 28/33.
#  - fix localisation (TIDE): g0's correction goes to A, which is not being fixed, so B is removed:
#    C alone, precision 1 up to recall 1/2: 6/11. (Ours, per type: B is moved onto g0, AP 1.)
# Scene 2, B (0.9) outscores A (0.8):
#  - fix localisation: B moves onto g0: B, C both TP, AP 1.
#  - fix classification (TIDE): g0's correction goes to B, so A is removed; class 1 is unchanged,
#    AP 3/11, ΔAP 0. (Ours, per type: A becomes a TP between B and C: FP, TP, TP, precision 2/3 at
#    recall 1, so AP = 11 * (2/3) / 11 = 2/3.)
TIDE_CASES = [
    (0.9, 0.8, "tide", {"classification": 28 / 33, "localisation": 6 / 11}),
    (0.9, 0.8, "per-type", {"classification": 28 / 33, "localisation": 1.0}),
    (0.8, 0.9, "tide", {"classification": 3 / 11, "localisation": 1.0}),
    (0.8, 0.9, "per-type", {"classification": 2 / 3, "localisation": 1.0}),
]


@pytest.mark.parametrize("score_cls, score_loc, rule, expected", TIDE_CASES)
def test_tide_fix_rule_gives_an_object_to_its_best_error_of_either_type(score_cls, score_loc, rule, expected):
    d, t = _tide_scene(score_cls, score_loc)
    errors = classify_image(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"], t["difficult"])
    assert list(errors.kind) == ["classification", "localisation", "true positive"]
    report = analyse_errors([d], [t], num_classes=3, fix_rule=rule)
    assert report["map"] == pytest.approx(3 / 11)
    assert report["settings"]["fix_rule"] == rule
    for kind, value in expected.items():
        assert report["map_fixed"][kind] == pytest.approx(value), kind
    # g0 is covered by both errors, so it is not missed; fixing both types at once corrects the best one.
    assert report["counts"]["missed"]["all"] == 0
    assert report["map_fixed"]["all false positives"] == pytest.approx(1.0)


def test_fix_errors_refuses_an_unknown_rule():
    d, t = _tide_scene(0.9, 0.8)
    errors = [classify_image(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"], t["difficult"])]
    with pytest.raises(ValueError, match="unknown fix rule 'coco'"):
        fix_errors([d], [t], errors, ["localisation"], fix_rule="coco")
