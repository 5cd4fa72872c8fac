"""The benchmark runs (tiny sizes: behaviour, not speed) and the backbone pre-training learns crops."""
from __future__ import annotations

import pytest
import torch

from fasterrcnn_edu.lab.bench import format_table, run_benchmarks, torchvision_twin
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.lab.pretrain import crop_boxes, pretrain_backbone
from fasterrcnn_edu.boxes import box_iou
from two_squares import TwoSquares


def test_bench_tiny_runs_and_reports_ratios():
    result = run_benchmarks("cpu", tiny=True)
    names = [row["name"] for row in result["rows"]]
    assert any(n.startswith("NMS fast path") for n in names)
    assert any(n.startswith("training step") for n in names) and any(n.startswith("inference") for n in names)
    for row in result["rows"]:
        assert row["ours_ms"] > 0 and row["torchvision_ms"] > 0
        # Ratios are computed before the milliseconds are rounded to 3 decimals.
        assert row["ratio"] == pytest.approx(row["ours_ms"] / row["torchvision_ms"], rel=0.02)
    assert {"device", "torch", "torchvision", "threads", "date"} <= set(result["environment"])
    assert "ours/tv" in format_table(result)


def test_torchvision_twin_has_our_weights_and_settings():
    torch.manual_seed(0)
    ours = FasterRCNN(Config.book(rpn_cls_loss="sigmoid", min_size=128, max_size=160)).eval()
    twin = torchvision_twin(ours).eval()
    assert torch.equal(twin.backbone.body[0].weight, ours.backbone.body[0].weight)
    assert torch.equal(twin.rpn.head.cls_logits.weight, ours.rpn.head.cls.weight)
    assert torch.equal(twin.roi_heads.box_predictor.bbox_pred.weight[4:], ours.roi_heads.predictor.bbox_pred.weight)
    assert twin.rpn._pre_nms_top_n["testing"] == ours.cfg.rpn_pre_nms_top_n_test
    assert twin.roi_heads.nms_thresh == ours.cfg.det_nms_thresh
    # Same RPN weights and anchors: the two RPN heads give the same objectness maps.
    features = torch.randn(1, ours.backbone.out_channels, 8, 10)
    theirs_logits = twin.rpn.head([features])[0][0]                     # (1, k, 8, 10)
    ours_logits, _ = ours.rpn.head(features)                             # (1, 8*10*k)
    assert torch.allclose(theirs_logits.permute(0, 2, 3, 1).reshape(1, -1), ours_logits, atol=1e-6)


def test_crop_boxes_backgrounds_do_not_overlap_objects():
    gt = torch.tensor([[10.0, 10, 50, 50], [70, 40, 120, 90]])
    boxes, is_object = crop_boxes(gt, (96, 128), 5, torch.Generator().manual_seed(0))
    assert is_object[:2].all() and not is_object[2:].any() and len(boxes) > 2     # backgrounds were drawn
    assert box_iou(boxes[~is_object], gt).max() < 0.3


def test_pretraining_learns_to_tell_the_crops_apart(tmp_path):
    cfg = Config.book(num_classes=3)
    backbone, log = pretrain_backbone(TwoSquares(), cfg, steps=60, images_per_step=2, lr=0.05,
                                      out_path=tmp_path / "bb.pt", progress=False)
    # Chance level is 1/3 accuracy and a loss of ln 3 ≈ 1.10.
    assert log[-1]["accuracy"] >= 0.9 and log[-1]["loss_cls"] < 0.5
    # The file loads as backbone weights of a detector.
    model = FasterRCNN(Config.book(num_classes=3, backbone_weights=str(tmp_path / "bb.pt")))
    assert torch.equal(model.backbone.body[0].weight, backbone.body[0].weight)
