"""One configuration object for the whole detector, with named presets.

`Config.paper()` carries the settings of Ren et al. (NeurIPS 2015) for VGG-16 on PASCAL VOC;
`Config.book()` is a small CPU-friendly setting for the book's synthetic shapes data.
Every number names its source: "paper §x" is the NeurIPS paper, "released code" is the authors'
py-faster-rcnn (lib/fast_rcnn/config.py, experiments/cfgs/*.yml, models/pascal_voc/VGG16/*), and
"Fast R-CNN" is Girshick, ICCV 2015. The released file and key of every released value are the
rows of `fasterrcnn_edu.released_code.RELEASED`, and a test checks the paper preset against them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

# The Config fields that hold a StageSchedule, in training order.
STAGE_FIELDS = ("stage_rpn1", "stage_det1", "stage_rpn2", "stage_det2", "joint")
DIFFICULT_CHOICES = ("drop", "ignore", "train")


@dataclass(frozen=True)
class StageSchedule:
    """SGD schedule of one training stage: `iterations` mini-batches, lr multiplied by 0.1 at `lr_step`."""

    iterations: int
    lr: float
    lr_step: int


# ---------------------------------------------------------------------------------------------
# Field metadata: each field's range, unit, source and meaning, in one place
# ---------------------------------------------------------------------------------------------
class Rule(typing.NamedTuple):
    """What a value must be: `test(value)` is true; `words` says it in a message ("in [0, 1]"), and
    `why(value)`, when given, the reason an out-of-range value is refused (e.g. the memory it needs)."""

    test: Callable[[Any], bool]
    words: str
    why: Callable[[Any], str] | None = None


def nbytes(count: float) -> str:
    """A byte count in words: 12 MB, 1.2 EB, 3e+25 bytes."""
    for power, unit in ((18, "EB"), (15, "PB"), (12, "TB"), (9, "GB"), (6, "MB"), (3, "kB")):
        if count >= 10**power:
            return f"{count / 10**power:.3g} {unit}" if power < 18 or count < 1e21 else f"{count:.2g} bytes"
    return f"{count:.0f} bytes"


def interval(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
             why: Callable[[Any], str] | None = None) -> Rule:
    """A number between `low` and `high` (None: no upper bound), each end open or closed."""
    def test(v) -> bool:
        return (v > low if low_open else v >= low) and (high is None or (v < high if high_open else v <= high))
    if high is None:
        words = f"{'>' if low_open else '>='} {low:g}"
    elif isinstance(low, int) and isinstance(high, int) and not (low_open or high_open):
        words = f"in {low} .. {high:,}"
    else:
        words = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    # The reason is given for values above the upper bound only (a value below it needs no memory).
    return Rule(test, words, None if why is None else (lambda v: why(v) if high is not None and v > high else ""))


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def positive_numbers(count: int | None, what: str) -> Rule:
    """A tuple of numbers > 0, of length `count` (None: any non-empty length)."""
    return Rule(lambda v: (len(v) == count if count else len(v) > 0) and all(x > 0 for x in v), what)


def _schedule_ok(s: StageSchedule) -> bool:
    return (isinstance(s.iterations, int) and not isinstance(s.iterations, bool) and s.iterations > 0
            and isinstance(s.lr, (int, float)) and not isinstance(s.lr, bool) and math.isfinite(s.lr) and s.lr > 0
            and isinstance(s.lr_step, int) and not isinstance(s.lr_step, bool) and s.lr_step >= 0)


# The ranges the fields share. Sizes have an upper bound: the memory the value would need says why.
FRACTION = interval(0.0, 1.0)
NON_NEGATIVE = interval(0)
WIDEST_FEATURES = 512      # channels of VGG-16's conv5_3, the widest backbone (backbones.py)
IMAGE_SIDE = interval(1, 10_000, why=lambda v: f"a {v} x {v}-pixel image needs {nbytes(3 * 4 * v * v)} for its "
                                               "float32 input alone")
COUNT = interval(1, 2**31 - 1, why=lambda v: "a count beyond 2**31 - 1 overflows 32-bit tensor indices")
BATCH = interval(1, 256, why=lambda v: f"{v} images are held at once: {nbytes(3 * 4 * 600 * 1000 * v)} for their "
                                       "float32 inputs alone at the paper's 600 x 1000 scale")
SCHEDULE = Rule(_schedule_ok, "a StageSchedule with iterations > 0, a finite lr > 0 and lr_step >= 0")


def setting(default: Any = dataclasses.MISSING, rule: Rule | None = None, unit: str = "", source: str = "",
            help: str = "", *, training_only: bool = False, factory: Callable[[], Any] | None = None):
    """A Config field with its metadata: `rule` (its range; the type is the annotation), `unit`,
    `source` ("paper §3.3", "released code: ...", "ours"), `help` (what it does), and
    `training_only` (only steers training: a model file written before the field existed still loads)."""
    metadata = {"rule": rule, "unit": unit, "source": source, "help": help, "training_only": training_only}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _stage(iterations: int, lr: float, lr_step: int, source: str, help: str):
    return setting(rule=SCHEDULE, unit="iterations", source=source, help=help, training_only=True,
                   factory=lambda: StageSchedule(iterations, lr, lr_step))


@dataclass(frozen=True)
class Config:
    """Every setting of the detector, its training and its evaluation, each field with its source.

    Build one with a preset, `Config.paper()` or `Config.book()`, overriding fields by keyword,
    e.g. `Config.book(rpn_lambda=1.0)`. A Config is immutable: `dataclasses.replace(cfg, ...)`
    (or `cfg.replace(...)`) gives a changed copy, so a model's settings never change under it.
    Each field's range, unit, source and meaning are its metadata (`setting`, `field_info`);
    sources "ours" are deviations from the paper and the released code, each named here.
    """

    # --- data and image scale -------------------------------------------------------------
    num_classes: int = setting(21, interval(2, 10_000, why=lambda v: f"the predictor would hold 5 x {v} weights per "
                                                                    f"hidden unit ({nbytes(4 * 5 * v * 4096)} at 4096)"),
                               "classes", "paper §4", "K + 1: 20 PASCAL VOC classes + the background")
    min_size: int = setting(600, IMAGE_SIDE, "px", "paper §3.3",
                            "\"re-scale the images such that their shorter side is s = 600\"")
    max_size: int = setting(1000, IMAGE_SIDE, "px", "released code: TEST.MAX_SIZE = 1000",
                            "the longer side after rescaling is at most this")
    image_mean: tuple[float, ...] = setting((0.485, 0.456, 0.406), Rule(lambda v: len(v) == 3, "3 numbers (R, G, B)"),
                                            "", "torchvision's VGG-16", "ImageNet mean, subtracted from the input")
    image_std: tuple[float, ...] = setting((0.229, 0.224, 0.225), positive_numbers(3, "3 numbers > 0 (R, G, B)"),
                                           "", "torchvision's VGG-16", "ImageNet standard deviation")
    size_divisible: int = setting(16, interval(1, 1024, why=lambda v: f"every image is padded to at least {v} x {v} "
                                                                     f"pixels: {nbytes(3 * 4 * v * v)} per image"),
                                  "px", "ours", "pad batched images so the stride-16 grid covers them exactly")

    # --- backbone --------------------------------------------------------------------------
    backbone: str = setting("vgg16", one_of("vgg16", "zf", "small"), "", "paper §4",
                            "ZF net and VGG-16; \"small\" is the book's CPU net")
    backbone_weights: str | None = setting(None, None, "", "ours",
                                           "local ImageNet weights file; nothing is ever downloaded", training_only=True)
    frozen_layers: int = setting(4, NON_NEGATIVE, "conv layers", "released code",
                                 "VGG-16 conv1_1..conv2_2 stay fixed (fine-tune from conv3_1)", training_only=True)

    # --- anchors (paper §3.1.1) ------------------------------------------------------------
    anchor_base_size: int = setting(16, COUNT, "px", "paper §3.1.1", "the stride of the last shared conv layer")
    anchor_scales: tuple[float, ...] = setting((8, 16, 32), positive_numbers(None, "a non-empty tuple of numbers > 0"),
                                               "x base size", "paper §3.1.1", "box areas 128², 256², 512² at base size 16")
    anchor_ratios: tuple[float, ...] = setting((0.5, 1.0, 2.0), positive_numbers(None, "a non-empty tuple of numbers > 0"),
                                               "height / width", "paper §3.1.1", "1:2, 1:1, 2:1")
    legacy_anchors: bool = setting(False, None, "", "ours: continuous boxes (True: the released code's)",
                                   "True: the released code's \"+1 pixel\" anchors (generate_anchors.py)")

    # --- RPN head and its training targets (paper §3.1, §3.1.2) ---------------------------
    rpn_channels: int = setting(512, interval(1, 4096, why=lambda v: f"the 3x3 RPN conv would hold 9 x {WIDEST_FEATURES} "
                                                                    f"x {v} weights ({nbytes(4 * 9 * WIDEST_FEATURES * v)})"),
                                "channels", "paper §3.1", "512-d intermediate layer for VGG (256-d for ZF)")
    rpn_fg_iou: float = setting(0.7, FRACTION, "IoU", "paper §3.1.2",
                                "positive if IoU > 0.7 (released code and torchvision: >= 0.7); also every anchor whose IoU "
                                "equals a box's best, an exact float32 equality without tolerance, as the released "
                                "anchor_target_layer.py (overlaps == gt_max_overlaps) and torchvision's Matcher",
                                training_only=True)
    rpn_bg_iou: float = setting(0.3, FRACTION, "IoU", "paper §3.1.2", "negative if IoU < 0.3 for all ground truth",
                                training_only=True)
    rpn_batch_size: int = setting(256, COUNT, "anchors per image", "paper §3.1.2", "256 anchors per image",
                                  training_only=True)
    rpn_positive_fraction: float = setting(0.5, FRACTION, "", "paper §3.1.2", "up to 1:1 positives : negatives",
                                           training_only=True)
    rpn_ignore_cross_boundary: bool = setting(True, None, "", "paper §3.3",
                                              "cross-boundary anchors are ignored in training", training_only=True)
    rpn_cls_loss: str = setting("softmax", one_of("softmax", "sigmoid"), "", "paper §3.1",
                                "2k scores with a softmax; \"sigmoid\": k scores")
    rpn_lambda: float = setting(10.0, NON_NEGATIVE, "", "paper §3.1.2", "λ = 10", training_only=True)
    rpn_reg_normalization: str = setting("locations", one_of("locations", "minibatch"), "", "paper Eq. 1",
                                         "N_reg = number of anchor locations; \"minibatch\": N_reg = N_cls",
                                         training_only=True)
    rpn_smooth_l1_beta: float = setting(1.0, NON_NEGATIVE, "", "Fast R-CNN",
                                        "smooth L1 of paper Eq. 1; the released code uses 1/9 (sigma = 3)",
                                        training_only=True)

    # --- proposals (paper §3.3) ------------------------------------------------------------
    rpn_pre_nms_top_n_train: int = setting(12000, COUNT, "proposals", "released code: TRAIN.RPN_PRE_NMS_TOP_N",
                                           "proposals kept before NMS in training", training_only=True)
    rpn_pre_nms_top_n_test: int = setting(6000, COUNT, "proposals", "paper §3.3 / released code: TEST.RPN_PRE_NMS_TOP_N",
                                          "proposals kept before NMS at test time")
    rpn_post_nms_top_n_train: int = setting(2000, COUNT, "proposals", "paper §3.3",
                                            "\"we use the top-2000 ... for training\"", training_only=True)
    rpn_post_nms_top_n_test: int = setting(300, COUNT, "proposals", "paper §4", "300 proposals at test time")
    rpn_nms_thresh: float = setting(0.7, FRACTION, "IoU", "paper §3.3", "NMS at IoU 0.7")
    rpn_min_size: float = setting(16.0, NON_NEGATIVE, "px (original image)", "released code: RPN_MIN_SIZE",
                                  "smallest proposal side kept, in pixels of the original image (x the image's "
                                  "scale in the resized input, as the released proposal_layer.py)")

    # --- RoI pooling and the Fast R-CNN head (Fast R-CNN §2) ----------------------------
    roi_output_size: int = setting(7, interval(1, 64, why=lambda v: f"each pooled RoI holds up to {WIDEST_FEATURES} x "
                                                                   f"{v}² numbers ({nbytes(4 * WIDEST_FEATURES * v * v)}), "
                                                                   "and fc6 as many weights per hidden unit"),
                                   "bins per side", "Fast R-CNN", "7×7 for VGG-16 (6×6 for ZF)")
    roi_pool: str = setting("max", one_of("max", "align"), "", "Fast R-CNN",
                            "RoI max pooling; \"align\": RoIAlign (Mask R-CNN). Max pooling gets continuous boxes "
                            "(x2 not inclusive, ours), so round(x2/16) can take one more feature cell than the "
                            "released Caffe ROIPooling for about 1/16 of the RoIs")
    roi_batch_size: int = setting(64, COUNT, "RoIs per image", "released alt-opt code: TRAIN.BATCH_SIZE = 128 "
                                  "(lib/fast_rcnn/config.py) / TRAIN.IMS_PER_BATCH = 2 (train_faster_rcnn_alt_opt.py)", "RoIs per image in the 4-step Fast R-CNN stages: 2 images x 64 "
                                  "= Fast R-CNN's R = 128 (joint training: `joint_roi_batch_size`)", training_only=True)
    roi_positive_fraction: float = setting(0.25, FRACTION, "", "Fast R-CNN §2.3", "25 % foreground", training_only=True)
    roi_fg_iou: float = setting(0.5, FRACTION, "IoU", "Fast R-CNN §2.3", "foreground IoU ≥ 0.5", training_only=True)
    roi_bg_iou_low: float = setting(0.0, FRACTION, "IoU", "released code: BG_THRESH_LO 0.0 (faster_rcnn_alt_opt.yml, "
                                    "faster_rcnn_end2end.yml)", "background RoIs have max IoU in [0.0, 0.5); "
                                    "0.1 is Fast R-CNN's heuristic (its §2.3, the lib/fast_rcnn/config.py default)",
                                    training_only=True)
    roi_bg_iou_high: float = setting(0.5, FRACTION, "IoU", "Fast R-CNN §2.3", "upper end of the background IoU",
                                     training_only=True)
    head_hidden: int = setting(4096, interval(1, 16384, why=lambda v: f"fc7 alone would hold {v}² weights "
                                                                     f"({nbytes(4 * v * v)})"),
                               "units", "VGG-16", "fc6 / fc7 width")
    box_coder_std: tuple[float, ...] = setting((0.1, 0.1, 0.2, 0.2), positive_numbers(4, "4 numbers > 0"), "",
                                               "released end-to-end code: BBOX_NORMALIZE_STDS",
                                               "fixed box-target stds, in every mode: the released end-to-end code "
                                               "(BBOX_NORMALIZE_TARGETS_PRECOMPUTED: True); the released alt-opt "
                                               "code divides by per-class means / stds of its training RoIs (ours "
                                               "for the 4-step mode)")
    det_lambda: float = setting(1.0, NON_NEGATIVE, "", "Fast R-CNN Eq. 1", "λ = 1", training_only=True)
    det_smooth_l1_beta: float = setting(1.0, NON_NEGATIVE, "", "Fast R-CNN Eq. 3", "smooth L1 β", training_only=True)

    # --- test-time detection (released code: test.py) -----------------------------------
    score_thresh: float = setting(0.05, FRACTION, "score", "released code", "keep detections with score > 0.05")
    det_nms_thresh: float = setting(0.3, FRACTION, "IoU", "released code: TEST.NMS", "per-class NMS at IoU 0.3")
    detections_per_img: int = setting(100, COUNT, "detections", "released code: max_per_image",
                                      "detections kept per image")

    # --- training (paper §3.3, released code train_faster_rcnn_alt_opt.py) -------------
    images_per_batch: int = setting(1, BATCH, "images", "paper §3.1.3",
                                    "\"each mini-batch arises from a single image\" (RPN stages)", training_only=True)
    det_images_per_batch: int = setting(2, BATCH, "images", "released alt-opt code: TRAIN.IMS_PER_BATCH = 2",
                                        "images per Fast R-CNN step, paired at random (ours: the released code "
                                        "pairs images of the same orientation, TRAIN.ASPECT_GROUPING)",
                                        training_only=True)
    momentum: float = setting(0.9, interval(0.0, 1.0, high_open=True), "", "paper §3.1.3", "SGD momentum",
                              training_only=True)
    weight_decay: float = setting(0.0005, NON_NEGATIVE, "", "paper §3.1.3", "SGD weight decay", training_only=True)
    bias_lr_mult: float = setting(2.0, NON_NEGATIVE, "", "released prototxts: param { lr_mult: 2 }",
                                  "biases train at twice the learning rate", training_only=True)
    bias_weight_decay: bool = setting(True, None, "", "released prototxts: no decay_mult (Caffe's default 1)",
                                      "biases are weight-decayed like the weights; False (ours, Detectron's "
                                      "convention): no decay on biases", training_only=True)
    warmup_iterations: int = setting(0, NON_NEGATIVE, "iterations", "ours",
                                     "not in the paper: a linear warm-up at the start of every stage (it restarts "
                                     "in each of the 4 steps)", training_only=True)
    flip: bool = setting(True, None, "", "released code: TRAIN.USE_FLIPPED",
                         "horizontal flip, the only augmentation; the released code adds a flipped copy of every "
                         "image, we flip each batch image with probability 1/2 (ours)", training_only=True)
    difficult: str = setting("drop", one_of(*DIFFICULT_CHOICES), "", "released code (use_diff=False)",
                             "VOC difficult / COCO crowd boxes: \"drop\": removed from training; \"ignore\" (ours): "
                             "ignore regions for anchor labelling and RoI sampling; \"train\": ordinary objects. "
                             "An image left without objects still trains, on negatives only (ours: the released "
                             "filter_roidb drops it)", training_only=True)
    channels_last: bool = setting(True, None, "", "ours", "speed only (PyTorch memory-format guide): NHWC training convs",
                                  training_only=True)
    # The 4-step schedule (paper §3.2): RPN, Fast R-CNN, RPN (shared layers frozen), Fast R-CNN (frozen).
    # paper §3.1.3: lr 0.001 for 60k mini-batches, 0.0001 for the next 20k (VOC); released code: 80k/40k per stage.
    stage_rpn1: StageSchedule = _stage(80000, 0.001, 60000, "released code", "step 1: the RPN")
    stage_det1: StageSchedule = _stage(40000, 0.001, 30000, "released code", "step 2: Fast R-CNN")
    stage_rpn2: StageSchedule = _stage(80000, 0.001, 60000, "released code", "step 3: the RPN, shared layers frozen")
    stage_det2: StageSchedule = _stage(40000, 0.001, 30000, "released code", "step 4: Fast R-CNN, shared layers frozen")
    alt_reinit_heads: bool = setting(True, None, "", "released code (alt-opt)",
                                     "step 3 trains a freshly initialised RPN head on the frozen step-2 features; "
                                     "step 4 re-initialises cls_score/bbox_pred. False (ours): warm starts from the "
                                     "step-1 RPN head and the step-2 predictor", training_only=True)
    alt_precomputed_proposals: bool = setting(True, None, "", "released code",
                                              "steps 2 and 4 train on proposals computed once by the previous "
                                              "step's RPN in test mode and stored; False (ours): proposals from "
                                              "the previous RPN in train mode on every step. Stored proposals "
                                              "and evaluation run in padded batches (ours: the released code "
                                              "one image at a time), so border features, and mAP in its last "
                                              "digits, depend on the batch's other images", training_only=True)
    alt_proposal_pre_nms_top_n: int = setting(0, interval(0, 2**31 - 1), "proposals", "released code: -1 (all)",
                                              "stored proposals before NMS; 0 here means all anchors",
                                              training_only=True)
    alt_proposal_post_nms_top_n: int = setting(2000, COUNT, "proposals", "released code: RPN_POST_NMS_TOP_N",
                                               "stored proposals after NMS", training_only=True)
    joint: StageSchedule = _stage(70000, 0.001, 50000, "released code: faster_rcnn_end2end.sh ITERS=70000, solver.prototxt stepsize 50000",
                                  "approximate joint training; its iterations are updates of `joint_iter_size` "
                                  "mini-batches")
    joint_iter_size: int = setting(2, BATCH, "mini-batches per update", "released end-to-end solver: iter_size 2",
                                   "joint training accumulates the gradients of this many mini-batches (of "
                                   "`images_per_batch` images) into one SGD update of their mean loss, as Caffe's "
                                   "iter_size", training_only=True)
    joint_roi_batch_size: int = setting(128, COUNT, "RoIs per image", "released end-to-end code: TRAIN.BATCH_SIZE "
                                        "= 128 (lib/fast_rcnn/config.py) / IMS_PER_BATCH: 1 (faster_rcnn_end2end.yml)", "RoIs sampled per image in joint training",
                                        training_only=True)
    seed: int = setting(0, interval(0, 2**32 - 1), "", "ours", "random seed (weights, data order, sampling)",
                        training_only=True)

    # ------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides) -> "Config":
        """VGG-16 on PASCAL VOC 2007, as in the paper. Fields can be overridden by keyword."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def book(cls, **overrides) -> "Config":
        """A small CPU setting for the book's synthetic shapes (320×256 images, 6 classes)."""
        book = cls(
            num_classes=7,                  # 6 shape classes + background (data/shapes/classes.txt)
            min_size=256, max_size=320,     # the shapes images are 320×256: no rescaling
            backbone="small",               # 6 conv layers, stride 16, 128 channels (backbones.py)
            frozen_layers=0,                # ours: the small net, pre-trained on shape crops, is fine-tuned whole
            anchor_scales=(2, 4, 8),        # 32², 64², 128² boxes: the paper's 128..512 divided by 4 (ours: object sizes)
            rpn_channels=128,
            rpn_min_size=4.0,               # objects down to ~1/16 of the side exist in the data
            rpn_smooth_l1_beta=1.0 / 9.0,   # released code's sigma = 3
            rpn_pre_nms_top_n_train=2000,   # the image has only 2880 anchors (16×20×9)
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_train=500,
            rpn_post_nms_top_n_test=300,
            roi_batch_size=64,              # 2 images × 64 RoIs, as the released alt-opt Fast R-CNN stages
            roi_bg_iou_low=0.1,             # ours (Fast R-CNN's heuristic): the released code's band is [0.0, 0.5)
            bias_weight_decay=False,        # ours: the released prototxts decay biases
            joint_iter_size=1,              # ours: 1 mini-batch of 2 images per joint update (released: 2 x 1)
            joint_roi_batch_size=64,        # ours: 64 RoIs per image in joint training too (released: 128)
            head_hidden=256,
            images_per_batch=2,             # ours: 2 images per RPN step too (CPU throughput)
            difficult="ignore",             # ours: difficult shapes are ignore regions (see `difficult` above)
            alt_proposal_post_nms_top_n=500,  # the book's train-time post-NMS top-N
            warmup_iterations=200,          # ours: a short warm-up, restarted at the start of every stage
            stage_rpn1=StageSchedule(1500, 0.01, 1200),
            stage_det1=StageSchedule(2000, 0.01, 1600),
            stage_rpn2=StageSchedule(600, 0.01, 480),
            stage_det2=StageSchedule(1000, 0.01, 800),
            joint=StageSchedule(2500, 0.01, 2000),
        )
        return dataclasses.replace(book, **overrides)

    @property
    def num_anchors(self) -> int:
        """The number k of anchors per sliding-window position (k = 9 in paper §3.1.1)."""
        return len(self.anchor_scales) * len(self.anchor_ratios)

    def replace(self, **changes) -> "Config":
        """A copy with `changes` applied (the Config itself never changes)."""
        return dataclasses.replace(self, **changes)

    def scaled(self, factor: float) -> "Config":
        """Every stage's iterations, lr step and the warm-up multiplied by `factor` (at least 1 step each)."""
        if factor == 1.0:
            return self
        stages = {name: dataclasses.replace(s, iterations=max(1, round(s.iterations * factor)),
                                            lr_step=max(1, round(s.lr_step * factor)))
                  for name in STAGE_FIELDS for s in [getattr(self, name)]}
        return dataclasses.replace(self, warmup_iterations=round(self.warmup_iterations * factor), **stages)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        values = dict(values)
        for name in STAGE_FIELDS:
            if isinstance(values.get(name), dict):
                values[name] = StageSchedule(**values[name])
        for f in dataclasses.fields(cls):
            if isinstance(values.get(f.name), list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a field of the wrong type or out of its range (ConfigError names the field).

        Runs on every construction (presets, `replace`, `--set`, a checkpoint's config), so no
        nonsense value reaches a model or a training run: wrong types, non-finite numbers,
        unknown choices, IoU thresholds and fractions outside [0, 1], non-positive sizes,
        counts and iterations, and sizes beyond their upper bound (the message says the memory
        they would need). Each field's range is its `rule` metadata (`setting`).
        """
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                raise ConfigError(f.name, f"expected {_type_name(hints[f.name])}, got {value!r} "
                                          f"({type(value).__name__})")
            rule = f.metadata["rule"]
            if rule is not None and not rule.test(value):
                reason = rule.why(value) if rule.why is not None else ""
                raise ConfigError(f.name, f"must be {rule.words}, got {value!r}" + (f" ({reason})" if reason else ""))
        for low, high in (("rpn_bg_iou", "rpn_fg_iou"), ("roi_bg_iou_low", "roi_bg_iou_high")):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(low, f"must not exceed {high} ({getattr(self, low)} > {getattr(self, high)})")


PRESETS = {"paper": Config.paper, "book": Config.book}


def get_config(preset: str, **overrides) -> Config:
    """The named preset (`"paper"` or `"book"`) with keyword overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset](**overrides)


# ---------------------------------------------------------------------------------------------
# Validation of every field (`Config.validate`)
# ---------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A Config field with a wrong type or value; `field` is its name, the message says what is wrong."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        super().__init__(f"Config field {field_name}: {problem}")

    def __reduce__(self):
        return (type(self), (self.field, str(self).split(": ", 1)[1]))


@functools.cache
def _type_hints(cls: type) -> dict:
    """The evaluated annotations of `cls` (the module uses `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def _has_type(value, hint) -> bool:
    """isinstance for the annotations Config uses: int (not bool), float (int accepted, finite),
    bool, str, X | None, tuple[T, ...] and classes such as StageSchedule."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:       # an int too large for a float (10**400) is not a finite number either
        return (isinstance(value, float) and math.isfinite(value)) or (
            isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**1023)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_has_type(v, item) for v in value)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return "a tuple of " + ("finite numbers" if item is float else _type_name(item))
    return {int: "an integer", float: "a finite number", bool: "True or False", str: "a string",
            type(None): "None"}.get(hint, getattr(hint, "__name__", str(hint)))


def field_info(name: str) -> dict:
    """The metadata of Config field `name`: rule, unit, source, help, training_only (see `setting`)."""
    return dict(_FIELDS[name].metadata)


def describe(cfg: Config, name: str) -> str:
    """The value of field `name` of `cfg` with its unit: "600 px", "0.7 IoU", "True"."""
    value, unit = getattr(cfg, name), _FIELDS[name].metadata["unit"]
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Fields that only steer training: a model file written before one of them existed still loads (the
# field takes its default, which cannot change detections); any other missing field is refused.
TRAINING_ONLY_FIELDS = frozenset(name for name, f in _FIELDS.items() if f.metadata["training_only"])
