"""What the authors' released code sets, with the file and key of every value: data only.

The released code is py-faster-rcnn (github.com/rbgirshick/py-faster-rcnn, read at commit
`RELEASED_COMMIT`), its VGG-16 PASCAL VOC recipes: `faster_rcnn_alt_opt` (the 4-step training)
and `faster_rcnn_end2end` (approximate joint training). `RELEASED` has one row per row of the
settings table (`fasterrcnn_edu.lab.settings_table`) whose "released code" column says something:

* `setting`: the name of that settings-table row;
* `text`: what the column prints;
* `values`: the Config field(s) the setting is, with the released value as the Config spells it
  (empty where the setting has no Config field, e.g. how image pairs are formed);
* `cites`: (file in py-faster-rcnn, key or line) for each value and each claim of `text`.

A setting the released code does not fix has no row (the column prints "—").
`tests/test_released_code.py` checks `Config.paper()` against `values`: the paper preset equals
them except where it follows the paper or names a deviation of ours.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from fasterrcnn_edu.config import StageSchedule

RELEASED_COMMIT = "781a917"


class Released(NamedTuple):
    """One released-code fact: its settings-table row, the text shown, Config values and sources."""
    setting: str
    text: str
    values: dict[str, Any]
    cites: tuple[tuple[str, str], ...]


# The files cited below (paths in py-faster-rcnn).
DEFAULTS = "lib/fast_rcnn/config.py"                  # every cfg.* default
ALT_OPT_YML = "experiments/cfgs/faster_rcnn_alt_opt.yml"
END2END_YML = "experiments/cfgs/faster_rcnn_end2end.yml"
ALT_OPT_TOOL = "tools/train_faster_rcnn_alt_opt.py"
END2END_SCRIPT = "experiments/scripts/faster_rcnn_end2end.sh"
VGG16 = "models/pascal_voc/VGG16/"
RPN1_NET = VGG16 + "faster_rcnn_alt_opt/stage1_rpn_train.pt"
DET1_NET = VGG16 + "faster_rcnn_alt_opt/stage1_fast_rcnn_train.pt"
RPN2_NET = VGG16 + "faster_rcnn_alt_opt/stage2_rpn_train.pt"
RPN_SOLVER = VGG16 + "faster_rcnn_alt_opt/stage1_rpn_solver60k80k.pt"
DET_SOLVER = VGG16 + "faster_rcnn_alt_opt/stage1_fast_rcnn_solver30k40k.pt"
END2END_SOLVER = VGG16 + "faster_rcnn_end2end/solver.prototxt"
ANCHORS = "lib/rpn/generate_anchors.py"
ANCHOR_TARGETS = "lib/rpn/anchor_target_layer.py"
PROPOSALS = "lib/rpn/proposal_layer.py"
MINIBATCH = "lib/roi_data_layer/minibatch.py"
TEST = "lib/fast_rcnn/test.py"


RELEASED: tuple[Released, ...] = (
    # --- data -----------------------------------------------------------------------------
    Released("image scale", "600, longer side ≤ 1000",
             {"min_size": 600, "max_size": 1000},
             ((DEFAULTS, "TRAIN.SCALES = (600,), TRAIN.MAX_SIZE = 1000; TEST.SCALES, TEST.MAX_SIZE alike"),)),
    Released("horizontal flip", "yes: a flipped copy of every image",
             {"flip": True},
             ((DEFAULTS, "TRAIN.USE_FLIPPED = True"), ("lib/fast_rcnn/train.py", "imdb.append_flipped_images()"))),
    Released("VOC *difficult* objects", "dropped from training; an RPN-stage image left without objects is dropped",
             {"difficult": "drop"},
             (("lib/datasets/pascal_voc.py", "'use_diff': False"),
              ("lib/fast_rcnn/train.py", "filter_roidb (no fg or bg RoI)"))),
    # --- backbone -------------------------------------------------------------------------
    Released("network", "ZF, VGG_CNN_M_1024 or VGG-16, ImageNet (.v2.caffemodel)",
             {"backbone": "vgg16"},
             ((RPN1_NET, "name: \"VGG_ILSVRC_16_layers\""),
              ("experiments/scripts/faster_rcnn_alt_opt.sh", "--weights data/imagenet_models/${NET}.v2.caffemodel"))),
    Released("frozen first conv layers", "VGG-16: conv1_1 … conv2_2",
             {"frozen_layers": 4},
             ((RPN1_NET, "conv1_1 … conv2_2: lr_mult: 0, decay_mult: 0"),)),
    # --- anchors --------------------------------------------------------------------------
    Released("anchor areas", "scales 8, 16, 32 × base 16",
             {"anchor_base_size": 16, "anchor_scales": (8, 16, 32)},
             ((ANCHORS, "generate_anchors(base_size=16, scales=2**np.arange(3, 6))"),)),
    Released("aspect ratios (height / width)", "0.5, 1, 2",
             {"anchor_ratios": (0.5, 1.0, 2.0)},
             ((ANCHORS, "generate_anchors(ratios=[0.5, 1, 2]); _ratio_enum: hs = np.round(ws * ratios)"),)),
    Released("anchor arithmetic", "inclusive pixels, rounded sides (\"+1\")",
             {"legacy_anchors": True},
             ((ANCHORS, "_whctrs: w = anchor[2] - anchor[0] + 1"),)),
    # --- RPN ------------------------------------------------------------------------------
    Released("intermediate layer", "3×3 conv, 512-d (VGG-16)",
             {"rpn_channels": 512},
             ((RPN1_NET, "rpn_conv/3x3: num_output: 512"),)),
    Released("anchor labels", "positive IoU ≥ 0.7 or equal to a box's best (exact equality); negative < 0.3",
             {"rpn_fg_iou": 0.7, "rpn_bg_iou": 0.3},
             ((DEFAULTS, "TRAIN.RPN_POSITIVE_OVERLAP = 0.7, TRAIN.RPN_NEGATIVE_OVERLAP = 0.3"),
              (ANCHOR_TARGETS, "np.where(overlaps == gt_max_overlaps)"))),
    Released("cross-boundary anchors", "ignored (allowed border 0)",
             {"rpn_ignore_cross_boundary": True},
             ((ANCHOR_TARGETS, "self._allowed_border = layer_params.get('allowed_border', 0)"),)),
    Released("anchors per image, positive share", "256, 0.5",
             {"rpn_batch_size": 256, "rpn_positive_fraction": 0.5},
             ((DEFAULTS, "TRAIN.RPN_BATCHSIZE = 256, TRAIN.RPN_FG_FRACTION = 0.5"),)),
    Released("images per RPN mini-batch", "1",
             {"images_per_batch": 1},
             ((ALT_OPT_TOOL, "train_rpn: cfg.TRAIN.IMS_PER_BATCH = 1"),)),
    Released("objectness output", "2k, softmax",
             {"rpn_cls_loss": "softmax"},
             ((RPN1_NET, "rpn_cls_score: num_output: 18; rpn_loss_cls: SoftmaxWithLoss"),)),
    Released("loss weights (Eq. 1)", "λ = 1 with N_reg = 256 (outside weights 1/256)",
             {"rpn_lambda": 1.0, "rpn_reg_normalization": "minibatch"},
             ((ANCHOR_TARGETS, "positive_weights = np.ones((1, 4)) * 1.0 / num_examples"),
              (RPN1_NET, "rpn_loss_bbox: loss_weight: 1"))),
    Released("smooth L1 β", "σ = 3, i.e. β = 1/9",
             {"rpn_smooth_l1_beta": 1.0 / 9.0},
             ((RPN1_NET, "rpn_loss_bbox: smooth_l1_loss_param { sigma: 3.0 }"),)),
    # --- proposals ------------------------------------------------------------------------
    Released("training: before / after NMS", "12000 / 2000",
             {"rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000},
             ((DEFAULTS, "TRAIN.RPN_PRE_NMS_TOP_N = 12000, TRAIN.RPN_POST_NMS_TOP_N = 2000"),)),
    Released("test: before / after NMS", "6000 / 300",
             {"rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300},
             ((DEFAULTS, "TEST.RPN_PRE_NMS_TOP_N = 6000, TEST.RPN_POST_NMS_TOP_N = 300"),)),
    Released("NMS IoU", "0.7",
             {"rpn_nms_thresh": 0.7},
             ((DEFAULTS, "TRAIN.RPN_NMS_THRESH = 0.7, TEST.RPN_NMS_THRESH = 0.7"),)),
    Released("smallest proposal side", "16 px at the original image's scale",
             {"rpn_min_size": 16.0},
             ((DEFAULTS, "TRAIN.RPN_MIN_SIZE = 16, TEST.RPN_MIN_SIZE = 16 (at orig image scale)"),
              (PROPOSALS, "_filter_boxes(proposals, min_size * im_info[2])"))),
    # --- detector -------------------------------------------------------------------------
    Released("RoI pooling", "max, 7×7, on inclusive-pixel boxes",
             {"roi_pool": "max", "roi_output_size": 7},
             ((DET1_NET, "roi_pool5: ROIPooling, pooled_w: 7, pooled_h: 7, spatial_scale: 0.0625"),)),
    Released("images × RoIs per detector mini-batch", "alt-opt 2 × 64; end-to-end 1 × 128",
             {"det_images_per_batch": 2, "roi_batch_size": 64},
             ((ALT_OPT_TOOL, "train_fast_rcnn: cfg.TRAIN.IMS_PER_BATCH = 2"),
              (DEFAULTS, "TRAIN.BATCH_SIZE = 128"),
              (MINIBATCH, "rois_per_image = cfg.TRAIN.BATCH_SIZE / num_images"))),
    Released("image pairs", "same orientation (both landscape or both portrait)",
             {},
             ((DEFAULTS, "TRAIN.ASPECT_GROUPING = True"),
              ("lib/roi_data_layer/layer.py", "_shuffle_roidb_inds: horz = (widths >= heights)"))),
    Released("RoI sampling", "25 % fg IoU ≥ 0.5, bg [0, 0.5)",
             {"roi_positive_fraction": 0.25, "roi_fg_iou": 0.5, "roi_bg_iou_low": 0.0, "roi_bg_iou_high": 0.5},
             ((DEFAULTS, "TRAIN.FG_FRACTION = 0.25, TRAIN.FG_THRESH = 0.5, TRAIN.BG_THRESH_HI = 0.5"),
              (ALT_OPT_YML, "TRAIN: BG_THRESH_LO: 0.0 (line 3)"),
              (END2END_YML, "TRAIN: BG_THRESH_LO: 0.0 (line 9)"))),
    Released("fully connected layers", "fc6, fc7 (4096-d), dropout 0.5",
             {"head_hidden": 4096},
             ((DET1_NET, "fc6, fc7: num_output: 4096; drop6, drop7: dropout_ratio: 0.5"),)),
    Released("box-target normalisation",
             "alt-opt: per-class means / stds of the training RoIs; end-to-end: stds (0.1, 0.1, 0.2, 0.2)",
             {"box_coder_std": (0.1, 0.1, 0.2, 0.2)},
             ((DEFAULTS, "TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED = False; TRAIN.BBOX_NORMALIZE_STDS"),
              ("lib/roi_data_layer/roidb.py", "add_bbox_regression_targets: empirical means, stds"),
              (END2END_YML, "TRAIN: BBOX_NORMALIZE_TARGETS_PRECOMPUTED: True"))),
    Released("λ (Fast R-CNN loss)", "1",
             {"det_lambda": 1.0},
             ((DET1_NET, "loss_bbox: loss_weight: 1"),)),
    # --- test -----------------------------------------------------------------------------
    Released("score threshold, per-class NMS, detections kept", "> 0.05, 0.3, 100",
             {"score_thresh": 0.05, "det_nms_thresh": 0.3, "detections_per_img": 100},
             ((TEST, "test_net(max_per_image=100, thresh=0.05)"), (DEFAULTS, "TEST.NMS = 0.3"))),
    Released("images per proposal and test pass", "one image at a time",
             {},
             (("lib/rpn/generate.py", "imdb_proposals: im_proposals(net, im) per image"),
              (TEST, "test_net: im_detect(net, im, ...) per image"))),
    # --- optimisation ---------------------------------------------------------------------
    Released("momentum, weight decay", "0.9, 0.0005",
             {"momentum": 0.9, "weight_decay": 0.0005},
             ((RPN_SOLVER, "momentum: 0.9, weight_decay: 0.0005 (every solver alike)"),)),
    Released("biases", "lr × 2, weight decay (Caffe's default decay_mult 1)",
             {"bias_lr_mult": 2.0, "bias_weight_decay": True},
             ((RPN1_NET, "conv3_1 … rpn_bbox_pred: param { lr_mult: 2 }, no decay_mult"),
              (DET1_NET, "fc6 … bbox_pred: param { lr_mult: 2 }, no decay_mult"))),
    # --- 4-step training ------------------------------------------------------------------
    Released("step 1: RPN", "80k, lr 0.001 → ×0.1 at 60k",
             {"stage_rpn1": StageSchedule(80000, 0.001, 60000)},
             ((ALT_OPT_TOOL, "max_iters = [80000, 40000, 80000, 40000]"),
              (RPN_SOLVER, "base_lr: 0.001, stepsize: 60000"))),
    Released("step 2: Fast R-CNN", "40k, step at 30k; proposals stored once (all before NMS, top 2000 after)",
             {"stage_det1": StageSchedule(40000, 0.001, 30000), "alt_precomputed_proposals": True,
              "alt_proposal_pre_nms_top_n": 0,     # released -1, "no pre NMS filtering": the Config's 0
              "alt_proposal_post_nms_top_n": 2000},
             ((ALT_OPT_TOOL, "max_iters[1] = 40000; rpn_generate: TEST.RPN_PRE_NMS_TOP_N = -1, "
                             "TEST.RPN_POST_NMS_TOP_N = 2000"),
              (DET_SOLVER, "base_lr: 0.001, stepsize: 30000"))),
    Released("step 3: RPN, shared layers fixed", "80k; RPN head newly initialised",
             {"stage_rpn2": StageSchedule(80000, 0.001, 60000), "alt_reinit_heads": True},
             ((ALT_OPT_TOOL, "max_iters[2] = 80000"),
              (VGG16 + "faster_rcnn_alt_opt/stage2_rpn_solver60k80k.pt", "base_lr: 0.001, stepsize: 60000"),
              (DET1_NET, "rpn_conv/3x3, rpn_cls_score, rpn_bbox_pred: dummy layers, lr_mult: 0"))),
    Released("step 4: Fast R-CNN, shared layers fixed", "40k; cls_score, bbox_pred newly initialised",
             {"stage_det2": StageSchedule(40000, 0.001, 30000), "alt_reinit_heads": True},
             ((ALT_OPT_TOOL, "max_iters[3] = 40000"),
              (VGG16 + "faster_rcnn_alt_opt/stage2_fast_rcnn_solver30k40k.pt", "base_lr: 0.001, stepsize: 30000"),
              (RPN2_NET, "fc6, fc7: dummy layers, lr_mult: 0; no cls_score, bbox_pred"))),
    Released("approximate joint (end-to-end)",
             "70k updates of 2 × (1 image × 128 RoIs) (iter_size 2), lr 0.001 → ×0.1 at 50k (VOC 2007)",
             {"joint": StageSchedule(70000, 0.001, 50000), "joint_iter_size": 2, "joint_roi_batch_size": 128},
             ((END2END_SCRIPT, "pascal_voc: ITERS=70000"),
              (END2END_SOLVER, "base_lr: 0.001, stepsize: 50000, iter_size: 2"),
              (END2END_YML, "TRAIN: IMS_PER_BATCH: 1"),
              (DEFAULTS, "TRAIN.BATCH_SIZE = 128"),
              ("lib/rpn/proposal_target_layer.py", "num_images = 1; rois_per_image = cfg.TRAIN.BATCH_SIZE / num_images"))),
)
