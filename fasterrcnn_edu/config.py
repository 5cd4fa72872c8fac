"""One configuration object for the whole detector, with named presets.

`Config.paper()` carries the settings of Ren et al. (NeurIPS 2015) for VGG-16 on PASCAL VOC;
`Config.book()` is a small CPU-friendly setting for the book's synthetic shapes data.
Every number names its source: "paper §x" is the NeurIPS paper, "released code" is the authors'
py-faster-rcnn (lib/fast_rcnn/config.py, models/pascal_voc/*/faster_rcnn_alt_opt/*), and
"Fast R-CNN" is Girshick, ICCV 2015.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field

# The Config fields that hold a StageSchedule, in training order.
STAGE_FIELDS = ("stage_rpn1", "stage_det1", "stage_rpn2", "stage_det2", "joint")
DIFFICULT_CHOICES = ("drop", "ignore", "train")


@dataclass(frozen=True)
class StageSchedule:
    """SGD schedule of one training stage: `iterations` mini-batches, lr multiplied by 0.1 at `lr_step`."""

    iterations: int
    lr: float
    lr_step: int


@dataclass(frozen=True)
class Config:
    """Every setting of the detector, its training and its evaluation, each field commented with its source.

    Build one with a preset, `Config.paper()` or `Config.book()`, overriding fields by keyword,
    e.g. `Config.book(rpn_lambda=1.0)`. A Config is immutable: `dataclasses.replace(cfg, ...)`
    (or `cfg.replace(...)`) gives a changed copy, so a model's settings never change under it.
    Fields marked "ours" are deviations from the paper and the released code, each named here.
    """

    # --- data and image scale -------------------------------------------------------------
    num_classes: int = 21                   # K + 1: 20 PASCAL VOC classes + background
    min_size: int = 600                     # paper §3.3: "re-scale the images such that their shorter side is s = 600"
    max_size: int = 1000                    # released code: TEST.MAX_SIZE = 1000
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet statistics of torchvision's VGG-16
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    size_divisible: int = 16                # pad batched images so the stride-16 grid covers them exactly

    # --- backbone --------------------------------------------------------------------------
    backbone: str = "vgg16"                 # paper §4: ZF net and VGG-16; "small" is the book's CPU net
    backbone_weights: str | None = None     # local ImageNet weights file; nothing is ever downloaded
    frozen_layers: int = 4                  # released code: VGG-16 conv1_1..conv2_2 stay fixed (fine-tune from conv3_1)

    # --- anchors (paper §3.1.1) ------------------------------------------------------------
    anchor_base_size: int = 16              # paper §3.1.1: the stride of the last shared conv layer
    anchor_scales: tuple[float, ...] = (8, 16, 32)     # box areas 128², 256², 512² at base size 16
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0) # 1:2, 1:1, 2:1
    legacy_anchors: bool = False            # True: the released code's "+1 pixel" anchors

    # --- RPN head and its training targets (paper §3.1, §3.1.2) ---------------------------
    rpn_channels: int = 512                 # paper §3.1: 512-d intermediate layer for VGG (256-d for ZF)
    rpn_fg_iou: float = 0.7                 # paper §3.1.2: positive if IoU > 0.7 (released code and torchvision: >= 0.7)
    rpn_bg_iou: float = 0.3                 # paper §3.1.2: negative if IoU < 0.3 for all ground truth
    rpn_batch_size: int = 256               # paper §3.1.2: 256 anchors per image
    rpn_positive_fraction: float = 0.5      # paper §3.1.2: up to 1:1 positives : negatives
    rpn_ignore_cross_boundary: bool = True  # paper §3.3: cross-boundary anchors are ignored in training
    rpn_cls_loss: str = "softmax"           # paper §3.1: 2k scores with a softmax; "sigmoid": k scores
    rpn_lambda: float = 10.0                # paper §3.1.2: λ = 10
    rpn_reg_normalization: str = "locations"  # paper Eq. 1: N_reg = number of anchor locations; "minibatch": N_reg = N_cls
    rpn_smooth_l1_beta: float = 1.0         # Fast R-CNN's smooth L1 (paper Eq. 1); released code uses 1/9 (sigma = 3)

    # --- proposals (paper §3.3) ------------------------------------------------------------
    rpn_pre_nms_top_n_train: int = 12000    # released code: TRAIN.RPN_PRE_NMS_TOP_N
    rpn_pre_nms_top_n_test: int = 6000      # paper §3.3 / released code: TEST.RPN_PRE_NMS_TOP_N
    rpn_post_nms_top_n_train: int = 2000    # paper §3.3: "we use the top-2000 ... for training"
    rpn_post_nms_top_n_test: int = 300      # paper §4: 300 proposals at test time
    rpn_nms_thresh: float = 0.7             # paper §3.3: NMS at IoU 0.7
    rpn_min_size: float = 16.0              # released code: RPN_MIN_SIZE, in original-image pixels

    # --- RoI pooling and the Fast R-CNN head (Fast R-CNN §2) ----------------------------
    roi_output_size: int = 7                # Fast R-CNN: 7×7 for VGG-16 (6×6 for ZF)
    roi_pool: str = "max"                   # Fast R-CNN RoI max pooling; "align": RoIAlign (Mask R-CNN)
    roi_batch_size: int = 64                # RoIs per image. released alt-opt Fast R-CNN stages: 2 images × 64 = R 128
                                            # (Fast R-CNN §2.3); the released end-to-end (joint) code uses 1 image × 128
    roi_positive_fraction: float = 0.25     # Fast R-CNN §2.3: 25 % foreground
    roi_fg_iou: float = 0.5                 # Fast R-CNN §2.3: foreground IoU ≥ 0.5
    roi_bg_iou_low: float = 0.1             # Fast R-CNN §2.3: background IoU in [0.1, 0.5)
    roi_bg_iou_high: float = 0.5
    head_hidden: int = 4096                 # VGG-16 fc6 / fc7
    box_coder_std: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)  # released code: BBOX_NORMALIZE_STDS
    det_lambda: float = 1.0                 # Fast R-CNN Eq. 1: λ = 1
    det_smooth_l1_beta: float = 1.0         # Fast R-CNN Eq. 3

    # --- test-time detection (released code: test.py) -----------------------------------
    score_thresh: float = 0.05              # released code: keep detections with score > 0.05
    det_nms_thresh: float = 0.3             # released code: TEST.NMS = 0.3, per class
    detections_per_img: int = 100           # released code: max_per_image = 100

    # --- training (paper §3.3, released code train_faster_rcnn_alt_opt.py) -------------
    images_per_batch: int = 1               # paper §3.1.3: "each mini-batch arises from a single image" (RPN stages)
    det_images_per_batch: int = 2           # released alt-opt code: Fast R-CNN stages take 2 images (TRAIN.IMS_PER_BATCH = 2)
    momentum: float = 0.9                   # paper §3.1.3
    weight_decay: float = 0.0005            # paper §3.1.3
    bias_lr_mult: float = 2.0               # released prototxts: biases train with lr_mult 2 ...
    bias_weight_decay: bool = False         # ... and decay_mult 0
    warmup_iterations: int = 0              # not in the paper; the book's from-scratch net needs a short warm-up
    flip: bool = True                       # paper: horizontal flip is the only augmentation (released code)
    difficult: str = "drop"                 # released code (use_diff=False): VOC difficult / COCO crowd boxes are removed
                                            # from training; "ignore" (ours): they become ignore regions for anchor
                                            # labelling and RoI sampling; "train": trained on as ordinary objects
    channels_last: bool = True              # speed only (PyTorch memory-format guide): NHWC training convs
    # The 4-step schedule (paper §3.2): RPN, Fast R-CNN, RPN (shared layers frozen), Fast R-CNN (frozen).
    # paper §3.1.3: lr 0.001 for 60k mini-batches, 0.0001 for the next 20k (VOC); released code: 80k/40k per stage.
    stage_rpn1: StageSchedule = field(default_factory=lambda: StageSchedule(80000, 0.001, 60000))
    stage_det1: StageSchedule = field(default_factory=lambda: StageSchedule(40000, 0.001, 30000))
    stage_rpn2: StageSchedule = field(default_factory=lambda: StageSchedule(80000, 0.001, 60000))
    stage_det2: StageSchedule = field(default_factory=lambda: StageSchedule(40000, 0.001, 30000))
    # How steps 3-4 start. released code (alt-opt): step 3 trains a freshly initialised RPN head on the
    # frozen step-2 features; step 4 re-initialises cls_score/bbox_pred. False (ours): warm starts from
    # the step-1 RPN head and the step-2 predictor.
    alt_reinit_heads: bool = True
    # released code: steps 2 and 4 train on proposals computed once by the previous step's RPN in test
    # mode (RPN_PRE_NMS_TOP_N = -1, i.e. all, post-NMS 2000) and stored; False (ours): proposals from the
    # previous RPN in train mode on every step (a second forward pass per step).
    alt_precomputed_proposals: bool = True
    alt_proposal_pre_nms_top_n: int = 0     # released code: -1 (all anchors) before NMS; 0 here means all
    alt_proposal_post_nms_top_n: int = 2000  # released code: RPN_POST_NMS_TOP_N = 2000 for the stored proposals
    joint: StageSchedule = field(default_factory=lambda: StageSchedule(70000, 0.001, 50000))  # released code end2end (VOC07)
    seed: int = 0

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
            frozen_layers=0,                # trained from scratch: nothing to keep fixed
            anchor_scales=(2, 4, 8),        # 32², 64², 128² boxes: the paper's 128..512 divided by 4 (ours: object sizes)
            rpn_channels=128,
            rpn_min_size=4.0,               # objects down to ~1/16 of the side exist in the data
            rpn_smooth_l1_beta=1.0 / 9.0,   # released code's sigma = 3
            rpn_pre_nms_top_n_train=2000,   # the image has only 2880 anchors (16×20×9)
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_train=500,
            rpn_post_nms_top_n_test=300,
            roi_batch_size=64,              # 2 images × 64 RoIs, as the released alt-opt Fast R-CNN stages
            head_hidden=256,
            images_per_batch=2,             # ours: 2 images per RPN step too (CPU throughput)
            difficult="ignore",             # ours: difficult shapes are ignore regions (see `difficult` above)
            alt_proposal_post_nms_top_n=500,  # the book's train-time post-NMS top-N
            warmup_iterations=200,
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
        counts and iterations.
        """
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                raise ConfigError(f.name, f"expected {_type_name(hints[f.name])}, got {value!r} "
                                          f"({type(value).__name__})")
            rule = _RULES.get(f.name)
            if rule is not None and not rule[0](value):
                raise ConfigError(f.name, f"must be {rule[1]}, got {value!r}")
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


def _schedule_ok(s: StageSchedule) -> bool:
    return (isinstance(s.iterations, int) and not isinstance(s.iterations, bool) and s.iterations > 0
            and isinstance(s.lr, (int, float)) and not isinstance(s.lr, bool) and math.isfinite(s.lr) and s.lr > 0
            and isinstance(s.lr_step, int) and not isinstance(s.lr_step, bool) and s.lr_step >= 0)


def _one_of(*choices: str):
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


_UNIT = ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]")
_POSITIVE = ((lambda v: v > 0), "> 0")
_NON_NEGATIVE = ((lambda v: v >= 0), ">= 0")
# Field -> (test, what it must be). Type and finiteness are checked for every field from its annotation.
_RULES: dict[str, tuple] = {
    "backbone": _one_of("vgg16", "zf", "small"),
    "roi_pool": _one_of("max", "align"),
    "rpn_cls_loss": _one_of("softmax", "sigmoid"),
    "rpn_reg_normalization": _one_of("locations", "minibatch"),
    "difficult": _one_of(*DIFFICULT_CHOICES),
    "num_classes": ((lambda v: v >= 2), ">= 2 (the background and at least one class)"),
    "momentum": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
    "seed": ((lambda v: 0 <= v < 2**32), "in 0 .. 2**32 - 1"),
    "image_mean": ((lambda v: len(v) == 3), "3 numbers (R, G, B)"),
    "image_std": ((lambda v: len(v) == 3 and all(x > 0 for x in v)), "3 numbers > 0 (R, G, B)"),
    "box_coder_std": ((lambda v: len(v) == 4 and all(x > 0 for x in v)), "4 numbers > 0"),
    "anchor_scales": ((lambda v: len(v) > 0 and all(x > 0 for x in v)), "a non-empty tuple of numbers > 0"),
    "anchor_ratios": ((lambda v: len(v) > 0 and all(x > 0 for x in v)), "a non-empty tuple of numbers > 0"),
    **{name: (_schedule_ok, "a StageSchedule with iterations > 0, a finite lr > 0 and lr_step >= 0")
       for name in STAGE_FIELDS},
    **{name: _UNIT for name in (
        "rpn_fg_iou", "rpn_bg_iou", "rpn_positive_fraction", "rpn_nms_thresh", "roi_positive_fraction",
        "roi_fg_iou", "roi_bg_iou_low", "roi_bg_iou_high", "score_thresh", "det_nms_thresh")},
    **{name: _POSITIVE for name in (
        "min_size", "max_size", "size_divisible", "anchor_base_size", "rpn_channels", "rpn_batch_size",
        "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test", "roi_output_size", "roi_batch_size", "head_hidden", "detections_per_img",
        "images_per_batch", "det_images_per_batch", "alt_proposal_post_nms_top_n")},
    **{name: _NON_NEGATIVE for name in (
        "frozen_layers", "rpn_lambda", "rpn_smooth_l1_beta", "rpn_min_size", "det_lambda", "det_smooth_l1_beta",
        "weight_decay", "bias_lr_mult", "warmup_iterations", "alt_proposal_pre_nms_top_n")},
}
