"""The torchvision side-by-side: both detectors see the same start, batches and schedule (tiny budget)."""
from __future__ import annotations

import json

import pytest
import torch

from fasterrcnn_edu.lab.bench import torchvision_twin
from fasterrcnn_edu.cli import main
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.data.synthetic import generate_dataset
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.roi_heads import pool_rois, rois_with_batch_index
from fasterrcnn_edu.lab.side_by_side import build_pair, format_table, run_side_by_side
from two_squares import TwoSquares


def _tiny_config(**overrides) -> Config:
    return Config.book(min_size=96, max_size=128, num_classes=3, warmup_iterations=2, **overrides)


def test_twin_of_a_softmax_rpn_keeps_the_other_weights():
    """torchvision has no 2k-score head: the twin keeps its own k scores, every other weight is copied."""
    torch.manual_seed(0)
    ours = FasterRCNN(_tiny_config())
    assert ours.rpn.head.scores_per_anchor == 2
    twin = torchvision_twin(ours)
    assert twin.rpn.head.cls_logits.out_channels == ours.cfg.num_anchors
    assert torch.equal(twin.rpn.head.bbox_pred.weight, ours.rpn.head.reg.weight)
    for a, b in zip(twin.roi_heads.box_head.parameters(), ours.roi_heads.box_head.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["max", "align"])
def test_twin_pools_rois_with_the_configured_op(mode):
    torch.manual_seed(0)
    ours = FasterRCNN(_tiny_config(roi_pool=mode))
    twin = torchvision_twin(ours)
    features = torch.randn(1, ours.backbone.out_channels, 6, 8)
    boxes = [torch.tensor([[3.0, 5, 60, 70], [20, 10, 120, 90]])]
    pooled = twin.roi_heads.box_roi_pool({"0": features}, boxes, [(96, 128)])
    expected = pool_rois(features, rois_with_batch_index(boxes), ours.cfg.roi_output_size, 1 / 16, mode)
    assert torch.equal(pooled, expected)
    other = pool_rois(features, rois_with_batch_index(boxes), ours.cfg.roi_output_size, 1 / 16,
                      "align" if mode == "max" else "max")
    assert not torch.equal(pooled, other)


def test_pair_starts_from_the_same_backbone_and_is_in_train_mode():
    models = build_pair(_tiny_config(), torch.device("cpu"))
    ours, theirs = models["ours"], models["torchvision"]
    assert ours.training and theirs.training
    for a, b in zip(ours.backbone.parameters(), theirs.backbone.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()      # equal copies, not shared tensors


def test_side_by_side_trains_both_and_reports_map_and_time_ratios():
    cfg = _tiny_config(joint=StageSchedule(6, 0.01, 4))
    result = run_side_by_side(TwoSquares(shift=1), TwoSquares(shift=1), cfg, seeds=(0, 1), log_every=3, progress=False)
    assert result["steps"] == 6 and result["test_images"] == 4 and result["seeds"] == [0, 1]
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:
        for name in ("ours", "torchvision"):
            r = run[name]
            assert set(r["voc07_ap"]) == {"bright", "dark"}
            assert r["voc07_map"] == pytest.approx(sum(r["voc07_ap"].values()) / 2)   # the mean of the class APs
            assert r["train_seconds"] > 0 and r["infer_ms_per_image"] > 0
        # Logged every 3 steps for each model: steps 2 and 5, with the sum of the four losses.
        assert [(r["model"], r["step"]) for r in run["log"]] == [
            ("ours", 2), ("ours", 5), ("torchvision", 2), ("torchvision", 5)]
        assert all(r["loss"] > 0 and r["lr"] == pytest.approx(0.001 if r["step"] == 5 else 0.01)
                   for r in run["log"])
        assert run["ratios"]["train_time"] == pytest.approx(
            run["ours"]["train_seconds"] / run["torchvision"]["train_seconds"])
    # Different seeds start the heads from different weights: the first logged losses differ.
    assert result["runs"][0]["log"][0]["loss"] != result["runs"][1]["log"][0]["loss"]
    summary = result["summary"]
    maps = [run["ours"]["voc07_map"] for run in result["runs"]]
    assert summary["ours"]["voc07_map"]["mean"] == pytest.approx(sum(maps) / 2)
    total = [sum(run[name]["train_seconds"] for run in result["runs"]) for name in ("ours", "torchvision")]
    assert summary["train_time"] == pytest.approx(total[0] / total[1])
    table = format_table(result)
    assert "| mean ± std |" in table and table.count("\n| 0 |") == 1


def test_side_by_side_command_writes_json(tmp_path):
    root = tmp_path / "shapes"
    generate_dataset(root, seed=0, num_trainval=4, num_test=2, image_size=(160, 128))
    out = tmp_path / "sbs.json"
    code = main(["side-by-side", "--data", str(root), "--iterations-scale", "0.0012", "--limit", "2",
                 "--set", "warmup_iterations=1", "--set", "min_size=128", "--set", "max_size=160",
                 "--threads", "1", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["test_images"] == 2 and len(result["runs"]) == 1
    assert {"train_time", "infer_time", "voc07_map_difference"} == set(result["runs"][0]["ratios"])


def test_side_by_side_command_names_a_missing_data_folder(tmp_path, capsys):
    code = main(["side-by-side", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")])
    assert code == 1
    assert "nowhere" in capsys.readouterr().err


def test_recorded_arguments_name_no_path_of_this_checkout(tmp_path, monkeypatch):
    import argparse
    from pathlib import Path

    from fasterrcnn_edu.lab.records import recorded_arguments

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(data=tmp_path / "data" / "shapes", out=Path("runs/x.json"), seeds=[0, 1],
                              elsewhere=Path("/opt/weights.pt"), func=print)
    recorded = recorded_arguments(args)
    assert recorded == {"data": "data/shapes", "out": "runs/x.json", "seeds": "[0, 1]", "elsewhere": "/opt/weights.pt"}
