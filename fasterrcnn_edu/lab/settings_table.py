"""Every training and test setting in one table: the paper, the released code, and the package's two presets.

The two preset columns are read from `Config.paper()` and `Config.book()` when the table is made,
so the book's settings page cannot drift from the code. The "paper" column quotes Ren et al.
(arXiv:1506.01497v3 section numbers; the NeurIPS paper has the same §3 text). The "released code"
column is read from `fasterrcnn_edu.released_code.RELEASED`, which cites the file and key of
every value in the authors' py-faster-rcnn; the Markdown table numbers them ("[3]") and lists the
sources below it. "—" means the source does not say.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fasterrcnn_edu.config import Config
from fasterrcnn_edu.released_code import RELEASED, RELEASED_COMMIT, Released

__all__ = ["Setting", "SETTINGS", "settings_rows", "settings_markdown"]


@dataclass(frozen=True)
class Setting:
    """One row: the Config `fields` it shows (`config.field_info` gives each one's source, unit and
    range), its group and name, what the paper says, and `preset(cfg)`, the cell of a preset. The
    released code's cell is the `released_code.RELEASED` row of the same name."""
    fields: tuple[str, ...]
    group: str
    name: str
    paper: str
    preset: Callable[[Config], str]


def _sizes(cfg: Config) -> str:
    return ", ".join(f"{cfg.anchor_base_size * s:g}²" for s in cfg.anchor_scales)


def _ratios(cfg: Config) -> str:
    return ", ".join(f"{r:g}" for r in cfg.anchor_ratios)


def _stage(cfg: Config, name: str) -> str:
    s = getattr(cfg, name)
    return f"{s.iterations:,} it., lr {s.lr:g} → ×0.1 at {s.lr_step:,}"


def _difficult(cfg: Config) -> str:
    # C6: an image whose objects were all difficult is kept (the released filter_roidb drops it in the RPN stages).
    return {"drop": "dropped from training", "ignore": "ignore regions (ours)",
            "train": "trained on as objects"}[cfg.difficult] + "; images left without objects still train (ours)"


SETTINGS: tuple[Setting, ...] = (
    # --- data -----------------------------------------------------------------------------
    Setting(('min_size', 'max_size'), "data", "image scale", "shorter side 600 (§3.3)",
            lambda c: f"shorter side {c.min_size}, longer ≤ {c.max_size}"),
    Setting(('flip',), "data", "horizontal flip", "—",
            lambda c: "yes, each image with probability ½ (ours)" if c.flip else "no"),
    Setting(('difficult',), "data", "VOC *difficult* objects", "—", _difficult),
    # --- backbone -------------------------------------------------------------------------
    Setting(('backbone',), "backbone", "network", "ZF or VGG-16, ImageNet pre-trained (§3.1.3)",
            lambda c: c.backbone + (" (ImageNet weights from a local file)" if c.backbone != "small"
                                    else " (6 conv layers, pre-trained on shape crops)")),
    Setting(('frozen_layers',), "backbone", "frozen first conv layers", "—", lambda c: str(c.frozen_layers)),
    # --- anchors --------------------------------------------------------------------------
    Setting(('anchor_base_size', 'anchor_scales'), "anchors", "anchor areas", "128², 256², 512² (§3.1.1)", _sizes),
    Setting(('anchor_ratios',), "anchors", "aspect ratios (height / width)", "1:1, 1:2, 2:1 (§3.1.1)", _ratios),
    Setting(('legacy_anchors',), "anchors", "anchor arithmetic", "—",
            lambda c: "released (\"+1\")" if c.legacy_anchors else "continuous (ours)"),
    # --- RPN ------------------------------------------------------------------------------
    Setting(('rpn_channels',), "RPN", "intermediate layer", "3×3 conv, 256-d (ZF) / 512-d (VGG) (§3.1)",
            lambda c: f"3×3 conv, {c.rpn_channels}-d"),
    Setting(('rpn_fg_iou', 'rpn_bg_iou'), "RPN", "anchor labels",
            "positive IoU > 0.7 or highest IoU with a box; negative < 0.3 (§3.1.2)",
            lambda c: f"positive > {c.rpn_fg_iou:g} or equal to a box's best (exact); negative < {c.rpn_bg_iou:g}"),
    Setting(('rpn_ignore_cross_boundary',), "RPN", "cross-boundary anchors", "ignored in training (§3.3)",
            lambda c: "ignored" if c.rpn_ignore_cross_boundary else "used"),
    Setting(('rpn_batch_size', 'rpn_positive_fraction'), "RPN", "anchors per image, positive share",
            "256, up to 1:1 (§3.1.3)", lambda c: f"{c.rpn_batch_size}, {c.rpn_positive_fraction:g}"),
    Setting(('images_per_batch',), "RPN", "images per RPN mini-batch", "1 (§3.1.3)", lambda c: str(c.images_per_batch)),
    Setting(('rpn_cls_loss',), "RPN", "objectness output", "2k scores, softmax (§3.1)",
            lambda c: "2k, softmax" if c.rpn_cls_loss == "softmax" else "k, sigmoid"),
    Setting(('rpn_lambda', 'rpn_reg_normalization'), "RPN", "loss weights (Eq. 1)",
            "λ = 10, N_cls = 256, N_reg ≈ 2400 locations (§3.1.2)",
            lambda c: f"λ = {c.rpn_lambda:g}, N_reg = " + ("locations" if c.rpn_reg_normalization == "locations"
                                                           else "N_cls")),
    Setting(('rpn_smooth_l1_beta',), "RPN", "smooth L1 β", "Fast R-CNN's (β = 1)", lambda c: f"{c.rpn_smooth_l1_beta:.3g}"),
    # --- proposals ------------------------------------------------------------------------
    Setting(('rpn_pre_nms_top_n_train', 'rpn_post_nms_top_n_train'), "proposals", "training: before / after NMS",
            "— / 2000 (§3.3)", lambda c: f"{c.rpn_pre_nms_top_n_train} / {c.rpn_post_nms_top_n_train}"),
    Setting(('rpn_pre_nms_top_n_test', 'rpn_post_nms_top_n_test'), "proposals", "test: before / after NMS", "— / 300 (§4)",
            lambda c: f"{c.rpn_pre_nms_top_n_test} / {c.rpn_post_nms_top_n_test}"),
    Setting(('rpn_nms_thresh',), "proposals", "NMS IoU", "0.7 (§3.3)", lambda c: f"{c.rpn_nms_thresh:g}"),
    Setting(('rpn_min_size',), "proposals", "smallest proposal side", "—",
            lambda c: f"{c.rpn_min_size:g} px at the original image's scale"),
    # --- detector -------------------------------------------------------------------------
    Setting(('roi_pool', 'roi_output_size'), "detector", "RoI pooling", "Fast R-CNN's max pooling, 7×7 for VGG",
            lambda c: ("max" if c.roi_pool == "max" else "RoIAlign (ours)") + f", {c.roi_output_size}×{c.roi_output_size}"
                      + (", on continuous boxes (ours)" if c.roi_pool == "max" else "")),
    Setting(('det_images_per_batch', 'roi_batch_size'), "detector", "images × RoIs per detector mini-batch",
            "— (Fast R-CNN: 2 × 64)", lambda c: f"{c.det_images_per_batch} × {c.roi_batch_size}"),
    Setting(('det_images_per_batch',), "detector", "image pairs", "—",
            lambda c: "at random (ours)" if c.det_images_per_batch > 1 else "— (1 image)"),
    Setting(('roi_positive_fraction', 'roi_fg_iou', 'roi_bg_iou_low', 'roi_bg_iou_high'), "detector", "RoI sampling",
            "— (Fast R-CNN: 25 % fg IoU ≥ 0.5, bg [0.1, 0.5))",
            lambda c: f"{c.roi_positive_fraction:.0%} fg IoU ≥ {c.roi_fg_iou:g}, bg [{c.roi_bg_iou_low:g}, "
                      f"{c.roi_bg_iou_high:g})" + (" (ours)" if c.roi_bg_iou_low != 0.0 else "")),
    Setting(('head_hidden',), "detector", "fully connected layers", "VGG-16 fc6, fc7 (4096-d)",
            lambda c: f"2 × {c.head_hidden}-d"),
    Setting(('box_coder_std',), "detector", "box-target normalisation", "—",
            lambda c: "stds (" + ", ".join(f"{v:g}" for v in c.box_coder_std) + ") in both modes (4-step: ours)"),
    Setting(('det_lambda',), "detector", "λ (Fast R-CNN loss)", "1 (Fast R-CNN)", lambda c: f"{c.det_lambda:g}"),
    # --- test -----------------------------------------------------------------------------
    Setting(('score_thresh', 'det_nms_thresh', 'detections_per_img'), "test",
            "score threshold, per-class NMS, detections kept", "—",
            lambda c: f"> {c.score_thresh:g}, {c.det_nms_thresh:g}, {c.detections_per_img}"),
    Setting((), "test", "images per proposal and test pass", "—",
            lambda c: "padded batches of several images (ours): border features depend on the batch"),
    # --- optimisation ---------------------------------------------------------------------
    Setting(('momentum', 'weight_decay'), "training", "momentum, weight decay", "0.9, 0.0005 (§3.1.3)",
            lambda c: f"{c.momentum:g}, {c.weight_decay:g}"),
    Setting(('bias_lr_mult', 'bias_weight_decay'), "training", "biases", "—",
            lambda c: f"lr × {c.bias_lr_mult:g}, " + ("weight decay" if c.bias_weight_decay else "no weight decay (ours)")),
    Setting(('warmup_iterations',), "training", "warm-up", "—",
            lambda c: f"{c.warmup_iterations} iterations at the start of every stage (ours)" if c.warmup_iterations
            else "none"),
    Setting(('stage_rpn1',), "4-step training", "step 1: RPN", "lr 0.001 for 60k, 0.0001 for 20k (§3.1.3, VOC)",
            lambda c: _stage(c, "stage_rpn1")),
    Setting(('stage_det1', 'alt_precomputed_proposals'), "4-step training", "step 2: Fast R-CNN",
            "on step-1 proposals (§3.2)", lambda c: _stage(c, "stage_det1") + (
                "; stored proposals" if c.alt_precomputed_proposals else "; proposals on the fly (ours)")),
    Setting(('stage_rpn2', 'alt_reinit_heads'), "4-step training", "step 3: RPN, shared layers fixed",
            "\"use the detector network to initialize RPN training\" (§3.2)", lambda c: _stage(c, "stage_rpn2") + (
                "; fresh RPN head" if c.alt_reinit_heads else "; step-1 RPN head (ours)")),
    Setting(('stage_det2', 'alt_reinit_heads'), "4-step training", "step 4: Fast R-CNN, shared layers fixed",
            "fine-tune its unique layers (§3.2)", lambda c: _stage(c, "stage_det2") + (
                "; fresh cls_score / bbox_pred" if c.alt_reinit_heads else "; step-2 head (ours)")),
    Setting(('joint', 'joint_iter_size', 'joint_roi_batch_size'), "4-step training", "approximate joint (end-to-end)",
            "§3.2 (ii); no schedule given",
            lambda c: _stage(c, "joint") + f"; {c.joint_iter_size} × ({c.images_per_batch} image"
                      f"{'s' if c.images_per_batch > 1 else ''} × {c.joint_roi_batch_size} RoIs) per update"),
)


_RELEASED_BY_SETTING: dict[str, Released] = {r.setting: r for r in RELEASED}


def released_row(setting: Setting) -> Released | None:
    """The released-code row of `setting`, or None where the released code does not fix it."""
    return _RELEASED_BY_SETTING.get(setting.name)


def _cites(row: Released | None) -> str:
    return "; ".join(f"{path}: {key}" for path, key in row.cites) if row is not None else ""


def settings_rows(paper: Config | None = None, book: Config | None = None) -> list[dict[str, str]]:
    """One dict per setting: group, setting, its Config fields, paper, released code (text and its
    `released source`, "file: key; ..."), `paper` preset, `book` preset."""
    paper = paper if paper is not None else Config.paper()
    book = book if book is not None else Config.book()
    rows = []
    for s in SETTINGS:
        released = released_row(s)
        rows.append({"group": s.group, "setting": s.name, "fields": ", ".join(s.fields), "paper": s.paper,
                     "released code": released.text if released is not None else "—",
                     "released source": _cites(released),
                     "`paper` preset": s.preset(paper), "`book` preset": s.preset(book)})
    return rows


def settings_markdown(paper: Config | None = None, book: Config | None = None) -> str:
    """The table of `settings_rows` in Markdown, one group per block of rows (group shown once); each
    released-code cell ends with the number [n] of its sources, listed under the table."""
    rows = settings_rows(paper, book)
    columns = ["setting", "paper", "released code", "`paper` preset", "`book` preset"]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    sources, group = [], None
    for setting, row in zip(SETTINGS, rows):
        if row["group"] != group:
            group = row["group"]
            lines.append(f"| **{group}** | | | | |")
        cells = dict(row)
        released = released_row(setting)
        if released is not None:
            sources.append(released)
            cells["released code"] += f" [{len(sources)}]"
        lines.append("| " + " | ".join(cells[c].replace("|", "\\|") for c in columns) + " |")
    notes = [f"Released-code sources, files of py-faster-rcnn at commit {RELEASED_COMMIT} "
             "(`fasterrcnn_edu.released_code`):", ""]
    notes += [f"{n}. " + "; ".join(f"`{path}`: `{key}`" for path, key in r.cites) for n, r in enumerate(sources, 1)]
    return "\n".join(lines) + "\n\n" + "\n".join(notes)
