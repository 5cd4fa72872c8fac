"""Training details as the paper and the released code (py-faster-rcnn) have them, and our named options.

Each test here fails on the behaviour before the "faithful defaults" change: difficult objects
trained as foreground, step 3 warm-started from step 1's RPN head, a mutable config, resume with
another configuration.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fasterrcnn_edu.checkpoint import CheckpointError
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.inference import predict_proposals
from fasterrcnn_edu.labeling import IGNORED, NEGATIVE, POSITIVE, label_anchors
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.roi_heads import sample_rois
from fasterrcnn_edu.transforms import hflip_boxes
from fasterrcnn_edu.training import (StageLoss, build_networks, load_batch, parameter_groups,
                                     joint, learning_rate, run_stage, step1_rpn, step2_detector, step3_rpn_frozen, step4_detector_frozen, train,
                                     trainable, training_target)

from test_training import TinyShapes, snapshot, tiny_config, train_until_killed


# ---------------------------------------------------------------------------------------------
# The paper preset and the config object
# ---------------------------------------------------------------------------------------------
def test_paper_preset_pins_the_papers_and_released_codes_numbers():
    c = Config.paper()
    assert (c.rpn_fg_iou, c.rpn_bg_iou, c.rpn_batch_size, c.rpn_positive_fraction, c.rpn_lambda) == (0.7, 0.3, 256, 0.5, 10.0)
    assert (c.rpn_pre_nms_top_n_train, c.rpn_post_nms_top_n_train) == (12000, 2000)
    assert (c.rpn_pre_nms_top_n_test, c.rpn_post_nms_top_n_test, c.rpn_nms_thresh) == (6000, 300, 0.7)
    assert (c.anchor_base_size, c.anchor_scales, c.anchor_ratios) == (16, (8, 16, 32), (0.5, 1.0, 2.0))
    # Fast R-CNN stages of the released alt-opt code: 2 images × 64 RoIs = 128, 25 % foreground.
    assert (c.roi_batch_size, c.det_images_per_batch, c.images_per_batch) == (64, 2, 1)
    assert (c.roi_positive_fraction, c.roi_fg_iou, c.roi_bg_iou_low, c.roi_bg_iou_high) == (0.25, 0.5, 0.0, 0.5)
    assert (c.score_thresh, c.det_nms_thresh, c.detections_per_img) == (0.05, 0.3, 100)
    assert (c.min_size, c.max_size, c.box_coder_std) == (600, 1000, (0.1, 0.1, 0.2, 0.2))
    assert (c.momentum, c.weight_decay, c.bias_lr_mult, c.bias_weight_decay) == (0.9, 0.0005, 2.0, True)
    assert (c.difficult, c.alt_reinit_heads, c.alt_precomputed_proposals) == ("drop", True, True)
    assert (c.alt_proposal_pre_nms_top_n, c.alt_proposal_post_nms_top_n) == (0, 2000)
    # Released end-to-end solver: iter_size 2 of 1 image x 128 RoIs per update.
    assert (c.joint_iter_size, c.joint_roi_batch_size) == (2, 128)


def test_book_preset_keeps_its_own_choices():
    b = Config.book()
    assert (b.roi_bg_iou_low, b.bias_weight_decay, b.joint_iter_size, b.joint_roi_batch_size) == (0.1, False, 1, 64)


def test_accumulated_joint_update_equals_the_update_of_the_mean_loss():
    import copy
    cfg = tiny_config(iterations=1, joint_iter_size=2)
    nets = build_networks("joint", cfg)
    reference = copy.deepcopy(nets["shared"])
    stage = joint(nets, cfg)
    assert stage.iter_size == 2
    # By hand: the mean of the losses of mini-batches 0 and 1, one SGD step.
    ref_stage = joint({"shared": reference}, cfg)
    opt = torch.optim.SGD(parameter_groups(ref_stage.params, cfg), lr=cfg.joint.lr, momentum=cfg.momentum)
    for group in opt.param_groups:
        group["lr"] = learning_rate(0, cfg.joint, 0) * group.get("lr_mult", 1.0)
    total = 0
    torch.manual_seed(0)   # anchor and RoI sampling draw from the global generator: the same draws in both runs
    for i in range(2):
        images, targets = load_batch(TinyShapes(), i, cfg, 0, "cpu", images_per_batch=cfg.images_per_batch)
        losses = ref_stage.loss(images, targets)
        total = total + sum(v for k, v in losses.items() if k.startswith("loss"))
    (total / 2).backward()
    opt.step()
    torch.manual_seed(0)
    run_stage(stage, TinyShapes(), cfg, log_every=1)
    after, expected = snapshot(nets["shared"]), snapshot(reference)
    assert all(torch.allclose(after[k], expected[k], atol=1e-6) for k in expected)


def test_config_is_immutable_and_scaled_returns_a_copy():
    cfg = Config.book()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.min_size = 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.joint.iterations = 1
    half = cfg.scaled(0.5)
    assert half.joint.iterations == cfg.joint.iterations // 2 and cfg.joint.iterations == 2500
    assert half.warmup_iterations == cfg.warmup_iterations // 2     # warm-up scales with the schedule


def test_predict_proposals_gives_top_n_without_touching_the_config():
    # 96×128 image: 6×8 positions × 9 anchors = 432 anchors; a pre-NMS cap of 50 must not cap 200.
    cfg = Config.book(num_classes=3, min_size=96, max_size=128, rpn_pre_nms_top_n_test=50,
                      rpn_post_nms_top_n_test=30, rpn_nms_thresh=1.0, rpn_min_size=0.0)
    torch.manual_seed(0)
    model = FasterRCNN(cfg).eval()
    proposals = predict_proposals(model, TinyShapes(), top_n=200)
    assert [len(p) for p in proposals] == [200] * 4
    assert model.cfg is cfg and model.cfg.rpn_post_nms_top_n_test == 30
    # The model's own forward still uses its configured 50 -> 30.
    assert len(model.proposals_for_images([TinyShapes()[0][0]])[0]) == 30


# ---------------------------------------------------------------------------------------------
# Difficult (VOC) / crowd (COCO) objects
# ---------------------------------------------------------------------------------------------
def _target_with_a_difficult_box() -> dict:
    return {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([1, 2]),
            "difficult": torch.tensor([False, True])}


def test_training_target_drops_ignores_or_keeps_difficult_objects():
    target = _target_with_a_difficult_box()
    dropped = training_target(target, "drop")
    assert dropped["boxes"].tolist() == [[0.0, 0, 10, 10]] and dropped["labels"].tolist() == [1]
    ignored = training_target(target, "ignore")
    assert len(ignored["boxes"]) == 2 and ignored["ignore"].tolist() == [False, True]
    kept = training_target(target, "train")
    assert len(kept["boxes"]) == 2 and "ignore" not in kept
    with pytest.raises(ValueError, match="difficult"):
        training_target(target, "sometimes")


def test_load_batch_applies_the_configs_difficult_handling():
    class WithDifficult(TinyShapes):
        def __getitem__(self, i):
            image, target = super().__getitem__(i)
            return image, dict(target, difficult=torch.tensor([False, True]))

    for mode, count in (("drop", 1), ("ignore", 2), ("train", 2)):
        _, targets = load_batch(WithDifficult(), 0, tiny_config(difficult=mode, flip=False), 0, "cpu")
        assert all(len(t["boxes"]) == count for t in targets), mode
        assert ("ignore" in targets[0]) == (mode == "ignore")


def test_ignore_regions_make_no_positive_and_no_negative_anchor():
    anchors = torch.tensor([[0.0, 0, 20, 20], [2, 2, 22, 22], [60, 60, 80, 80]])
    gt = torch.tensor([[[0.0, 0, 20, 20]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    as_object = label_anchors(anchors, gt, valid).labels[0].tolist()
    assert as_object == [POSITIVE, IGNORED, NEGATIVE]            # IoU 1, 0.68 and 0
    as_ignore = label_anchors(anchors, gt, valid, gt_ignore=torch.ones(1, 1, dtype=torch.bool)).labels[0].tolist()
    assert as_ignore == [IGNORED, IGNORED, NEGATIVE]


def test_ignore_regions_give_no_foreground_and_no_background_rois():
    gt = torch.tensor([[[0.0, 0, 20, 20], [50, 50, 70, 70]]])
    labels = torch.tensor([[1, 2]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    ignore = torch.tensor([[False, True]])
    proposals = [torch.tensor([[1.0, 1, 20, 20], [51, 51, 70, 70], [10, 0, 30, 20]])]
    rois, roi_labels, _ = sample_rois(proposals, gt, labels, valid, 16, 0.5, gt_ignore=ignore,
                                      generator=torch.Generator().manual_seed(0))
    picked = {tuple(r): int(l) for r, l in zip(rois[0].tolist(), roi_labels[0].tolist()) if l >= 0}
    assert picked[(1.0, 1.0, 20.0, 20.0)] == 1 and picked[(0.0, 0.0, 20.0, 20.0)] == 1   # the real object
    assert (51.0, 51.0, 70.0, 70.0) not in picked             # on the ignore region: neither fg nor bg
    assert (50.0, 50.0, 70.0, 70.0) not in picked             # the ignore box is no candidate
    assert picked[(10.0, 0.0, 30.0, 20.0)] == 0               # ordinary background (IoU 1/3)


# ---------------------------------------------------------------------------------------------
# Steps 3 and 4: where each step's weights come from
# ---------------------------------------------------------------------------------------------
def _after_step2(cfg: Config) -> dict:
    nets = build_networks("alternating", cfg)
    with torch.no_grad():                                     # stand-ins for trained step-1/2 weights
        for p in nets["rpn"].rpn.parameters():
            p.add_(1.0)
        for p in nets["shared"].roi_heads.parameters():
            p.add_(1.0)
    return nets


def _assert_fresh(layer: torch.nn.Module, std: float) -> None:
    """Fresh as the released code initialises it: zero-mean Gaussian weights of `std`, zero biases."""
    weight = layer.weight.detach()
    assert abs(weight.std().item() - std) < 0.1 * std and abs(weight.mean().item()) < 0.1 * std
    assert not layer.bias.any()


def test_step3_trains_a_fresh_rpn_head_on_the_frozen_detector_features():
    cfg = tiny_config()
    nets = _after_step2(cfg)
    torch.manual_seed(123)                                    # the global RNG plays no part
    stage = step3_rpn_frozen(nets, cfg)
    head = nets["shared"].rpn.head
    _assert_fresh(head.conv, 0.01)
    _assert_fresh(head.cls, 0.01)
    assert not torch.equal(head.cls.weight, nets["rpn"].rpn.head.cls.weight)
    # The fresh head is a function of the seed alone: the same seed gives it again, another seed not.
    torch.manual_seed(456)
    again = _after_step2(cfg)
    step3_rpn_frozen(again, cfg)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(),
                                                 again["shared"].rpn.head.state_dict().values()))
    other = _after_step2(cfg.replace(seed=1))
    step3_rpn_frozen(other, cfg.replace(seed=1))
    assert not torch.equal(head.conv.weight, other["shared"].rpn.head.conv.weight)
    assert not any(p.requires_grad for p in nets["shared"].backbone.parameters())
    assert {id(p) for _, p in stage.params} == {id(p) for p in nets["shared"].rpn.parameters()}


def test_step3_warm_start_from_step1_is_a_named_option():
    cfg = tiny_config(alt_reinit_heads=False)
    nets = _after_step2(cfg)
    step3_rpn_frozen(nets, cfg)
    assert torch.equal(nets["shared"].rpn.head.cls.weight, nets["rpn"].rpn.head.cls.weight)


@pytest.mark.parametrize("reinit", [True, False])
def test_step4_reinitialises_only_the_predictor(reinit):
    cfg = tiny_config(alt_reinit_heads=reinit)
    nets = _after_step2(cfg)
    box_head = snapshot(nets["shared"].roi_heads.box_head)
    predictor = snapshot(nets["shared"].roi_heads.predictor)
    step4_detector_frozen(nets, cfg)
    heads = nets["shared"].roi_heads
    assert all(torch.equal(box_head[k], v) for k, v in heads.box_head.state_dict().items())
    same = all(torch.equal(predictor[k], v) for k, v in heads.predictor.state_dict().items())
    assert same != reinit
    if reinit:
        _assert_fresh(heads.predictor.cls_score, 0.01)
        _assert_fresh(heads.predictor.bbox_pred, 0.001)
        again = _after_step2(cfg)
        torch.manual_seed(789)                                # the global RNG plays no part
        step4_detector_frozen(again, cfg)
        assert torch.equal(heads.predictor.bbox_pred.weight, again["shared"].roi_heads.predictor.bbox_pred.weight)


# ---------------------------------------------------------------------------------------------
# Steps 2 and 4: proposals computed once and stored
# ---------------------------------------------------------------------------------------------
def test_detector_stages_take_proposals_from_the_previous_rpn():
    cfg = tiny_config()
    nets = build_networks("alternating", cfg)
    step1_rpn(nets, cfg)
    stage2 = step2_detector(nets, cfg)
    assert stage2.proposal_source is nets["rpn"] and stage2.loss._proposer[0] is None
    step3_rpn_frozen(nets, cfg)
    stage4 = step4_detector_frozen(nets, cfg)
    assert stage4.proposal_source is nets["shared"]
    on_the_fly = step2_detector(nets, tiny_config(alt_precomputed_proposals=False))
    assert on_the_fly.proposal_source is None and on_the_fly.loss._proposer[0] is nets["rpn"]


def test_stored_proposals_are_mirrored_with_their_image_and_used_instead_of_the_rpn():
    data = TinyShapes()
    stored = [torch.tensor([[10.0, 5, 30, 25]])] * len(data)
    cfg = tiny_config()
    flips = []
    for step in range(4):
        images, targets = load_batch(data, step, cfg, 1, "cpu", proposals=stored)
        for image, target in zip(images, targets):
            flipped = not any(torch.equal(image, data[i][0]) for i in range(len(data)))
            flips.append(flipped)
            expected = hflip_boxes(stored[0], 128) if flipped else stored[0]
            assert torch.equal(target["proposals"], expected)
    assert any(flips) and not all(flips)
    model = FasterRCNN(cfg).train()
    model.rpn.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the RPN must not run"))
    losses = StageLoss(model, "detector")(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}


def test_alternating_training_with_stored_proposals_runs_end_to_end(tmp_path):
    result = train(TinyShapes(), tiny_config(2), "alternating", tmp_path, progress=False, log_every=1)
    assert [r["stage"] for r in result.log][::2] == ["1-rpn", "2-detector", "3-rpn-frozen", "4-detector-frozen"]


# ---------------------------------------------------------------------------------------------
# Optimiser: biases as the released prototxts
# ---------------------------------------------------------------------------------------------
def test_biases_train_at_twice_the_learning_rate_with_weight_decay_unless_the_book_option():
    model = FasterRCNN(tiny_config())
    groups = parameter_groups(trainable(model.rpn), Config.paper(bias_weight_decay=False))
    weights, biases = groups
    assert weights["lr_mult"] == 1.0 and weights["weight_decay"] == 0.0005
    assert biases["lr_mult"] == 2.0 and biases["weight_decay"] == 0.0
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in (model.rpn.head.conv, model.rpn.head.cls,
                                                                      model.rpn.head.reg)}
    released = parameter_groups(trainable(model.rpn), Config.paper())
    assert released[1]["lr_mult"] == 2.0 and released[1]["weight_decay"] == 0.0005
    plain = parameter_groups(trainable(model.rpn), Config.paper(bias_lr_mult=1.0))
    assert plain[1]["lr_mult"] == 1.0 and plain[1]["weight_decay"] == 0.0005


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, monkeypatch):
    cfg = tiny_config(4)
    train_until_killed(monkeypatch, 3, TinyShapes(), cfg, "alternating", tmp_path, progress=False, log_every=1)
    other = cfg.replace(rpn_lambda=1.0, stage_det2=StageSchedule(9, 0.005, 8))
    with pytest.raises(CheckpointError, match=r"rpn_lambda: 10\.0 -> 1\.0.*stage_det2"):
        train(TinyShapes(), other, "alternating", tmp_path, progress=False, resume=tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="mode 'alternating', not 'joint'"):
        train(TinyShapes(), cfg, "joint", tmp_path, progress=False, resume=tmp_path / "checkpoint.pt")
