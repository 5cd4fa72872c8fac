"""Issue 13, class 3: one validation layer for options and config.

Every CLI option with a range is checked by `options.check_arguments` before the command runs, and
every Config — preset, `--set`, `replace`, a checkpoint's — by `Config.validate`; a problem is one
line that names the option or field, with status 2, never a traceback and never a half-done run.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import pickle
from pathlib import Path

import pytest
import torch

from fasterrcnn_edu.cli import build_parser, main
from fasterrcnn_edu.commands import parse_overrides
from fasterrcnn_edu.config import Config, ConfigError, StageSchedule
from fasterrcnn_edu.options import OPTION_RULES, UsageError, pick_device

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / "data" / "shapes")
IMAGE = str(next((ROOT / "data" / "shapes" / "JPEGImages").glob("*.jpg")))


def _all_parsers():
    parser = build_parser()
    todo = [("", parser)]
    while todo:
        name, p = todo.pop()
        yield name, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}".strip(), q) for n, q in action.choices.items()]


def test_every_numeric_option_of_every_command_has_a_range_rule():
    """The root of the class: a new numeric option cannot go unchecked."""
    unchecked = sorted({f"{name}: --{a.dest}" for name, p in _all_parsers() for a in p._actions
                        if a.type in (int, float) and a.dest not in OPTION_RULES})
    assert unchecked == [], "add these options to options.OPTION_RULES"


BAD_OPTIONS = [
    (["train", "--data", SHAPES, "--iterations-scale", "0"], "--iterations-scale"),
    (["train", "--data", SHAPES, "--iterations-scale", "-1"], "--iterations-scale"),
    (["train", "--data", SHAPES, "--iterations-scale", "nan"], "--iterations-scale"),
    (["train", "--data", SHAPES, "--iterations-scale", "inf"], "--iterations-scale"),
    (["train", "--data", SHAPES, "--threads", "-1"], "--threads"),
    (["train", "--data", SHAPES, "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--data", SHAPES, "--seed", "-3"], "--seed"),
    (["train", "--data", SHAPES, "--seed", str(2**70)], "--seed"),
    (["train", "--data", SHAPES, "--split", "../../etc/passwd"], "--split"),
    (["train", "--data", SHAPES, "--backbone-weights", "/no/such/weights.pth"], "--backbone-weights"),
    (["train", "--data", SHAPES, "--resume", "/no/such/checkpoint.pt"], "--resume"),
    (["eval", "--limit", "-1"], "--limit"),
    (["eval", "--threads", "-2"], "--threads"),
    (["detect", IMAGE, "--score-threshold", "1.5"], "--score-threshold"),
    (["detect", IMAGE, "--score-threshold", "nan"], "--score-threshold"),
    (["detect", IMAGE, "--threads", "5000"], "--threads"),
    (["pretrain", "--steps", "0"], "--steps"),
    (["lambda-sweep", "--steps", "-5"], "--steps"),
    (["lambda-sweep", "--lambdas", "1", "nan"], "--lambdas"),
    (["lambda-sweep", "--top-n", "0"], "--top-n"),
    (["profile", "--repeats", "0"], "--repeats"),
    (["profile", "--sizes", "0", "300"], "--sizes"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["side-by-side", "--seeds", "-1"], "--seeds"),
    (["make-data", "runs/never", "--jpeg-quality", "0"], "--jpeg-quality"),
    (["make-data", "runs/never", "--val-fraction", "1.5"], "--val-fraction"),
    (["make-data", "runs/never", "--image-size", "0", "10"], "--image-size"),
    (["check-data", SHAPES, "--max-errors", "-1"], "--max-errors"),
    (["check-data", SHAPES, "--splits", "../x"], "--splits"),
    (["eval", "--device", "gpu"], "--device"),
    (["eval", "--device", "cuda:99"], "--device"),
    (["eval", "--device", "meta"], "--device"),
    (["detect", IMAGE, "--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("args, option", BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_naming_it(args, option, tmp_path, capsys):
    assert main(args + (["--out", str(tmp_path / "out")] if args[0] not in ("make-data", "check-data") else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and option in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_on_a_machine_without_cuda_says_so(device):
    with pytest.raises(UsageError, match="CUDA is not available on this machine"):
        pick_device(device)


BAD_SETS = [
    ("roi_pool=avg", "roi_pool"), ("rpn_cls_loss=hinge", "rpn_cls_loss"),
    ("rpn_reg_normalization=images", "rpn_reg_normalization"), ("backbone=resnet50", "backbone"),
    ("difficult=keep", "difficult"), ("rpn_fg_iou=1.5", "rpn_fg_iou"), ("roi_bg_iou_low=-0.1", "roi_bg_iou_low"),
    ("det_nms_thresh=2", "det_nms_thresh"), ("rpn_bg_iou=0.9", "rpn_bg_iou"), ("min_size=0", "min_size"),
    ("roi_batch_size=-4", "roi_batch_size"), ("images_per_batch=0", "images_per_batch"),
    ("det_images_per_batch=0", "det_images_per_batch"), ("rpn_post_nms_top_n_test=0", "rpn_post_nms_top_n_test"),
    ("rpn_lambda=nan", "rpn_lambda"), ("weight_decay=inf", "weight_decay"), ("min_size=600.5", "min_size"),
    ("min_size=abc", "min_size"), ("flip=maybe", "flip"), ("anchor_scales=(1,'a')", "anchor_scales"),
    ("anchor_scales=()", "anchor_scales"), ("joint=(0,0.01,0)", "joint"), ("joint=(10,-1,5)", "joint"),
    ("stage_rpn1=5", "stage_rpn1"), ("no_such_field=1", "no_such_field"), ("roi_pol=max", "roi_pool"),
    ("num_classes=3", "num_classes"), ("roi_pool", "FIELD=VALUE"), ("momentum=1.0", "momentum"),
    ("alt_proposal_post_nms_top_n=0", "alt_proposal_post_nms_top_n"), ("bias_lr_mult=-2", "bias_lr_mult"),
]


@pytest.mark.parametrize("item, named", BAD_SETS, ids=[i for i, _ in BAD_SETS])
def test_bad_set_is_refused_before_training_naming_the_field(item, named, tmp_path, capsys):
    assert main(["train", "--data", SHAPES, "--set", item, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set ") and named in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_field_set_twice_is_refused():
    with pytest.raises(UsageError, match="set twice"):
        parse_overrides(["roi_pool=max", "roi_pool=align"])


@pytest.mark.parametrize("item, value", [
    ("flip=false", False), ("flip=True", True), ("roi_pool=align", "align"), ("backbone_weights=None", None),
    ("rpn_lambda=1", 1.0), ("anchor_scales=[2, 4]", (2, 4)), ("joint=(100, 0.01, 80)", StageSchedule(100, 0.01, 80)),
    ("stage_rpn1={'iterations': 5, 'lr': 0.1, 'lr_step': 4}", StageSchedule(5, 0.1, 4)),
])
def test_set_values_are_typed_like_the_field(item, value):
    name = item.partition("=")[0]
    parsed = parse_overrides([item])[name]
    assert parsed == value and type(parsed) is type(value)
    Config.book(**{name: parsed})               # and valid


@pytest.mark.parametrize("field, value", [
    ("roi_pool", "avg"), ("rpn_cls_loss", "hinge"), ("backbone", "resnet"), ("difficult", "yes"),
    ("rpn_reg_normalization", "none"), ("rpn_nms_thresh", 1.01), ("score_thresh", -0.1), ("roi_fg_iou", math.nan),
    ("min_size", 0), ("max_size", -1), ("min_size", "600"), ("min_size", 600.0), ("flip", 1), ("seed", -1),
    ("rpn_batch_size", 0), ("detections_per_img", 0), ("head_hidden", True), ("image_std", (0.2, 0.2, 0.0)),
    ("image_mean", (0.5, 0.5)), ("box_coder_std", (0.1, 0.1, 0.2)), ("anchor_ratios", (1.0, -1.0)),
    ("joint", StageSchedule(10, math.inf, 5)), ("joint", (10, 0.1, 5)), ("backbone_weights", 3),
    ("num_classes", 1), ("warmup_iterations", -1), ("alt_proposal_pre_nms_top_n", -1),
])
def test_config_refuses_wrong_types_and_ranges_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"Config field {field}:") as info:
        Config.book(**{field: value})
    assert info.value.field == field
    with pytest.raises(ConfigError):
        dataclasses.replace(Config.paper(), **{field: value})    # every construction path validates


def test_presets_and_their_scaled_copies_are_valid():
    for cfg in (Config.book(), Config.paper(), Config.book().scaled(0.0001), Config.paper().scaled(3)):
        cfg.validate()
    error = pickle.loads(pickle.dumps(ConfigError("min_size", "must be > 0, got 0")))
    assert error.field == "min_size" and str(error) == "Config field min_size: must be > 0, got 0"


def test_unknown_field_in_from_dict_is_a_clear_error():
    with pytest.raises(TypeError, match="no_such_field"):
        Config.from_dict({**Config.book().to_dict(), "no_such_field": 1})


# Issue 25, item 2: sizes without an upper bound ended in an allocation or overflow traceback.
UNBOUNDED_SIZES = [("min_size", 10**9, "needs 12 EB"), ("max_size", 10**9, "needs 12 EB"),
                   ("roi_output_size", 100_000, "each pooled RoI holds"), ("size_divisible", 10**6, "12 TB per image"),
                   ("head_hidden", 10**9, "fc7 alone would hold")]


@pytest.mark.parametrize("field, value, reason", UNBOUNDED_SIZES, ids=[f for f, _, _ in UNBOUNDED_SIZES])
def test_a_size_beyond_its_upper_bound_is_refused_by_set_with_the_memory_it_needs(field, value, reason, tmp_path,
                                                                                  capsys):
    # A short schedule: where the value is not refused (the old code) the run ends soon, with status 0.
    assert main(["train", "--data", SHAPES, "--set", f"{field}={value}", "--iterations-scale", "0.001",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --set {field}={value}: Config field {field}: must be in 1 .. ") and err.count("\n") == 1
    assert reason in err, err
    assert not (tmp_path / "run").exists()


def test_every_size_has_an_upper_bound():
    """Every integer field with a lower bound of 1 (a size or a count) has an upper one too."""
    unbounded = [f.name for f in dataclasses.fields(Config)
                 if f.metadata["rule"] is not None and f.metadata["rule"].words.startswith(">= 1")]
    assert unbounded == []
    assert Config.book(min_size=10_000, head_hidden=16_384, roi_output_size=64, size_divisible=1024).min_size == 10_000
