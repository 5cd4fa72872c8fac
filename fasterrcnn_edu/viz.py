"""Plotting: every figure of the book is drawn by a function of this module.

All functions take tensors or NumPy arrays, draw into an optional Matplotlib ``ax`` (a new
figure is made when it is None) and return the Axes (or the Figure for multi-panel plots). They
never call ``plt.show()``: the notebook displays the figure, scripts save it.

One visual language throughout: class c always has colour ``tab10[c % 10]``; boxes are unfilled
rectangles; detections are solid, in their class colour, with a "name score" tag in a small
filled box; ground truth is white and dashed with a black outline, never labelled
(`draw_ground_truth`). Box convention: (x1, y1, x2, y2) continuous pixel coordinates (pixel (i, j) covers
[j, j+1) x [i, i+1)), so boxes are drawn exactly at their coordinates over the image.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from fasterrcnn_edu.anchors import feature_map_size
from fasterrcnn_edu.boxes import as_boxes

__all__ = [
    "class_color", "panels", "show_image", "draw_boxes", "draw_ground_truth", "plot_detections", "plot_anchors",
    "anchor_centers", "plot_anchor_grid", "plot_anchor_labels", "plot_anchor_matches", "plot_proposals", "score_colorbar",
    "plot_nms_steps", "mark_cross_class_duplicates", "plot_detection_verdicts", "verdict_legend", "ERROR_COLORS",
    "plot_recall_vs_proposals",
    "roi_pool_bins", "plot_roi_pool", "plot_pr_curves", "plot_recall_vs_iou",
    "plot_loss_curves", "whole_run_steps", "plot_feature_map", "image_grid", "network_shapes", "plot_network", "plot_rpn_head",
    "GT_COLOR", "GT_STYLE_COLOR", "POSITIVE_COLOR", "NEGATIVE_COLOR", "SUPPRESSED_COLOR", "SMALL_PT",
]

#: Colour of ground-truth boxes when no class is known.
GT_COLOR = "#00d5ff"
#: Colour of every ground-truth box of `draw_ground_truth` (dashed, outlined in black).
GT_STYLE_COLOR = "white"
#: Colour of positive anchors.
POSITIVE_COLOR = "tab:green"
#: Colour of negative anchors.
NEGATIVE_COLOR = "tab:red"
#: Colour of each object's best anchor where positives and negatives are drawn too (not green or red).
BEST_ANCHOR_COLOR = "gold"
#: Colour of boxes that NMS suppressed.
SUPPRESSED_COLOR = "0.55"
# The smallest text of any figure (pt). A figure at most 8 inches wide (`panels`) is shown in the
# book's ~700-px column at >= 700 / (8 * 72) px per pt, so 8 pt is >= 9 CSS px there.
#: The smallest text size (pt) of the book's figures.
SMALL_PT = 8.0
#: Colour of each of TIDE's error types (`error_analysis`), in every figure that shows them:
#: false positives warm, the missed objects grey.
ERROR_COLORS = {"classification": "tab:red", "localisation": "tab:orange", "both": "tab:brown",
                "duplicate": "tab:purple", "background": "tab:pink", "missed": "tab:gray"}
# `plot_detection_verdicts`: short tags of the false-positive types, and the styles of the other verdicts.
_ERROR_TAGS = {"classification": "cls", "localisation": "loc", "both": "both", "duplicate": "dup",
               "background": "bkg"}
_TRUE_POSITIVE_COLOR = "tab:green"
_IGNORED_COLOR = "0.85"
_UNDETECTED_COLOR = "#ffd400"         # yellow: no warm error colour, no class colour of the shapes' tab10


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def _np(x) -> np.ndarray:
    """Tensor (any device) or array-like -> NumPy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _np_boxes(boxes, name: str, where: str) -> np.ndarray:
    """Boxes (tensor, array or list) -> NumPy (N, 4); ValueError naming `name` for any other shape (`as_boxes`)."""
    return _np(as_boxes(torch.as_tensor(_np(boxes)), name, where))


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6, 4.5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def class_color(label: int) -> tuple[float, float, float, float]:
    """The fixed colour of class `label` (tab10, cycling every 10 classes)."""
    return plt.get_cmap("tab10")(int(label) % 10)


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    """class_names indexed by label (background first, 1..K) or foreground only (0..K-1)."""
    if class_names is None:
        return str(int(label))
    names = list(class_names)
    if str(names[0]).lower() in ("__background__", "background"):
        return str(names[int(label)]) if int(label) < len(names) else str(int(label))
    idx = int(label) - 1
    return str(names[idx]) if 0 <= idx < len(names) else str(int(label))


def _image_hwc(image) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] / uint8, or (H, W, 3) / (H, W) array -> array for imshow."""
    arr = _np(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)                    # CHW -> HWC
    elif arr.ndim == 3 and isinstance(image, torch.Tensor) and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)                    # tensors are always CHW
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    return arr


def _show_or_blank(ax: Axes, image, image_size: tuple[int, int] | None) -> None:
    """Draw `image`, or a light-grey canvas of `image_size` (H, W) when there is no image."""
    if image is not None:
        show_image(image, ax=ax)
    elif image_size is not None:
        h, w = int(image_size[0]), int(image_size[1])
        ax.imshow(np.full((h, w, 3), 0.88), extent=(0, w, h, 0))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)


def _fit_view(ax: Axes, boxes: np.ndarray, image_size: tuple[int, int] | None, pad: float = 4.0) -> None:
    """Set limits covering the image (if any) and all boxes, y pointing down like an image."""
    x_lo, y_lo, x_hi, y_hi = [], [], [], []
    if image_size is not None:
        x_lo.append(0), y_lo.append(0), x_hi.append(image_size[1]), y_hi.append(image_size[0])
    if len(boxes):
        x_lo.append(boxes[:, 0].min() - pad), y_lo.append(boxes[:, 1].min() - pad)
        x_hi.append(boxes[:, 2].max() + pad), y_hi.append(boxes[:, 3].max() + pad)
    if x_lo:
        ax.set_xlim(min(x_lo), max(x_hi))
        ax.set_ylim(max(y_hi), min(y_lo))
    ax.set_aspect("equal")


def panels(n: int, ncols: int = 2, panel: tuple[float, float] = (3.9, 3.3), **subplots_kw) -> tuple[Figure, np.ndarray]:
    """A figure of `n` panels, at most `ncols` per row, each `panel` (width, height) inches; returns
    (figure, the n Axes as a flat array). Unused cells of the last row are removed.

    The book's text column is about 700 CSS pixels, so a figure wider than about 8 inches is shrunk
    and its text with it: two panels of 3.9 inches per row keep text of `SMALL_PT` at least 9 pixels
    high (tests/test_book_browser.py measures it).
    """
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained",
                             squeeze=False, **subplots_kw)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


# ----------------------------------------------------------------------------------------------
# Images and boxes
# ----------------------------------------------------------------------------------------------

def show_image(image, ax: Axes | None = None) -> Axes:
    """Show an image. image: (3, H, W) tensor in [0, 1] (or uint8), or an (H, W, 3) uint8 /
    float array, or (H, W) grayscale. Extent is set so that pixel (i, j) covers [j, j+1) x
    [i, i+1), matching continuous box coordinates."""
    ax = _axes(ax)
    arr = _image_hwc(image)
    h, w = arr.shape[:2]
    ax.imshow(arr, extent=(0, w, h, 0), cmap="gray" if arr.ndim == 2 else None)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    return ax


def draw_boxes(ax: Axes, boxes, labels=None, scores=None, class_names: Sequence[str] | None = None,
               color=None, linewidth: float = 1.5, linestyle: str = "-", alpha: float = 1.0,
               fontsize: float = SMALL_PT) -> Axes:
    """Draw boxes (N, 4) x1,y1,x2,y2 as unfilled rectangles (adds exactly N Rectangle patches).

    labels: optional (N,) ints -> colour per class and a name tag; scores: optional (N,) ->
    "name 0.93" tag. color: one colour for all boxes (overrides the class colours), or a list
    of N colours.
    """
    boxes = _np_boxes(boxes, "boxes", "draw_boxes")
    labels = None if labels is None else _np(labels).reshape(-1)
    scores = None if scores is None else _np(scores).reshape(-1)
    n = len(boxes)
    if color is not None:
        colors = [color] * n if mcolors.is_color_like(color) else list(color)
    elif labels is not None:
        colors = [class_color(c) for c in labels]
    else:
        colors = [GT_COLOR] * n
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colors[i],
                               linewidth=linewidth, linestyle=linestyle, alpha=alpha))
        parts = []
        if labels is not None:
            parts.append(_class_name(labels[i], class_names))
        if scores is not None:
            parts.append(f"{scores[i]:.2f}")
        if parts:
            ax.text(x1, y1, " ".join(parts), fontsize=fontsize, color="white", va="bottom",
                    ha="left", alpha=alpha, clip_on=True,
                    bbox=dict(facecolor=colors[i], edgecolor="none", alpha=0.8 * alpha, pad=1.0))
    return ax


def draw_ground_truth(ax: Axes, boxes, linewidth: float = 1.3, color=GT_STYLE_COLOR, linestyle: str = "--") -> Axes:
    """Ground-truth boxes in the book's one neutral style: white, dashed, with a thin black outline
    (visible on light and dark backgrounds), no label: class colours belong to predictions.
    `color` and `linestyle` mark a kind of object apart (`plot_detection_verdicts`)."""
    from matplotlib import patheffects

    for x1, y1, x2, y2 in _np_boxes(boxes, "boxes", "draw_ground_truth"):
        patch = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linestyle=linestyle,
                          linewidth=linewidth)
        patch.set_path_effects([patheffects.withStroke(linewidth=linewidth + 1.4, foreground="black", alpha=0.7)])
        ax.add_patch(patch)
    return ax


def _difficult_mask(targets: Mapping, count: int) -> np.ndarray:
    """(G,) bool: which of the `count` objects in `targets` are marked difficult (none without the key)."""
    if targets.get("difficult") is None:
        return np.zeros(count, dtype=bool)
    difficult = _np(targets["difficult"]).astype(bool).reshape(-1)
    if len(difficult) != count:
        raise ValueError(f"targets['difficult'] has {len(difficult)} flags for {count} boxes")
    return difficult


def _draw_difficult(ax: Axes, boxes: np.ndarray) -> None:
    """Difficult objects, which VOC's metric ignores: dotted grey (`verdict_legend` names the style)."""
    draw_ground_truth(ax, boxes, linewidth=1.8, color=_IGNORED_COLOR, linestyle=":")


def plot_detections(image, detections: Mapping, class_names: Sequence[str] | None = None,
                    score_threshold: float = 0.5, targets: Mapping | None = None,
                    ax: Axes | None = None, title: str | None = None) -> Axes:
    """An image with its detections (solid, class colour, "name score") above `score_threshold`, and
    optionally the ground truth `targets` (dict with boxes and optional difficult) in one neutral style,
    unlabelled (`draw_ground_truth`), so that a missed object shows as a dashed box with no solid box on
    it. Difficult objects, which VOC's metric ignores, are dotted grey as in `plot_detection_verdicts`:
    no detection is owed to them.

    detections: dict with boxes (D, 4), labels (D,), scores (D,).
    """
    ax = show_image(image, ax=ax)
    if targets is not None:
        gt = _np_boxes(targets["boxes"], "targets['boxes']", "plot_detections")
        difficult = _difficult_mask(targets, len(gt))
        draw_ground_truth(ax, gt[~difficult])
        _draw_difficult(ax, gt[difficult])
    scores = _np(detections["scores"]).reshape(-1)
    keep = scores >= score_threshold
    draw_boxes(ax, _np_boxes(detections["boxes"], "detections['boxes']", "plot_detections")[keep],
               labels=_np(detections["labels"]).reshape(-1)[keep], scores=scores[keep],
               class_names=class_names, linewidth=2.0)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return ax


def _place_tag(ax: Axes, box: np.ndarray, text: str, color, placed: list) -> None:
    """Write `text` at a corner of `box` (x1, y1, x2, y2), inside the axes and over no tag in `placed`
    (display-space extents, appended to); the first corner tried wins when every corner fails."""
    x1, y1, x2, y2 = box
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    style = dict(fontsize=SMALL_PT, color="white", clip_on=True,
                 bbox=dict(facecolor=color, edgecolor="none", alpha=0.85, pad=1.0))
    # Above or below the top edge, then below or above the bottom edge; left-aligned, then right-aligned.
    corners = [(x, y, va, ha) for x, ha in ((x1, "left"), (x2, "right"))
               for y, va in ((y1, "bottom"), (y1, "top"), (y2, "top"), (y2, "bottom"))]
    for x, y, va, ha in corners:
        tag = ax.text(x, y, text, va=va, ha=ha, **style)
        extent = tag.get_window_extent(renderer)
        inside = frame.x0 <= extent.x0 and extent.x1 <= frame.x1 and frame.y0 <= extent.y0 and extent.y1 <= frame.y1
        if inside and not any(extent.overlaps(other) for other in placed):
            placed.append(extent)
            return
        tag.remove()
    # Every corner taken: move away from the top edge, one tag height at a time, down and up in
    # turn, to the nearest free place inside the axes (the top edge itself if there is none).
    tag = ax.text(x1, y1, text, va="top", ha="left", **style)
    to_data = ax.transData.inverted().transform
    step = abs(to_data((0, 0))[1] - to_data((0, tag.get_window_extent(renderer).height))[1])
    for k in range(1, int(abs(ax.get_ylim()[0] - ax.get_ylim()[1]) / max(step, 1e-9)) + 1):
        for y in (y1 + k * step, y1 - k * step):
            tag.set_y(y)
            extent = tag.get_window_extent(renderer)
            inside = frame.y0 <= extent.y0 and extent.y1 <= frame.y1
            if inside and not any(extent.overlaps(other) for other in placed):
                placed.append(extent)
                return
    tag.set_y(y1)
    placed.append(tag.get_window_extent(renderer))


def plot_detection_verdicts(image, detections: Mapping, kinds: Sequence[str], targets: Mapping, undetected,
                            class_names: Sequence[str] | None = None, score_threshold: float = 0.5,
                            ax: Axes | None = None, title: str | None = None) -> Axes:
    """An image with its detections above `score_threshold` drawn by verdict, and its objects by whether one was found.

    detections: dict with boxes (D, 4), labels (D,), scores (D,); kinds: (D,) the verdict of each
    (`error_analysis.classify_image`: "true positive", "ignored" or a false-positive type);
    targets: dict with boxes (G, 4) and optional difficult (G,) bool; undetected: (G,) bool, the
    objects no true positive scoring >= `score_threshold` finds.

    True positives are solid green and untagged; false positives solid in their type's colour
    (`ERROR_COLORS`) with a "type class score" tag placed where it hides no other tag; detections
    on difficult objects (ignored) thin grey. Objects: found ones dashed white (`draw_ground_truth`),
    undetected ones dashed yellow, difficult ones dotted grey. `verdict_legend` explains the styles.
    """
    ax = show_image(image, ax=ax)
    gt = _np_boxes(targets["boxes"], "targets['boxes']", "plot_detection_verdicts")
    difficult = _difficult_mask(targets, len(gt))
    undetected = _np(undetected).astype(bool).reshape(-1) & ~difficult
    draw_ground_truth(ax, gt[~difficult & ~undetected])
    draw_ground_truth(ax, gt[undetected], linewidth=1.8, color=_UNDETECTED_COLOR)
    _draw_difficult(ax, gt[difficult])
    boxes = _np_boxes(detections["boxes"], "detections['boxes']", "plot_detection_verdicts")
    scores, labels = _np(detections["scores"]).reshape(-1), _np(detections["labels"]).reshape(-1)
    kinds = np.asarray(kinds, dtype=object)
    if len(kinds) != len(boxes):
        raise ValueError(f"plot_detection_verdicts: {len(kinds)} verdicts for {len(boxes)} detections")
    shown = scores >= score_threshold
    draw_boxes(ax, boxes[shown & (kinds == "true positive")], color=_TRUE_POSITIVE_COLOR, linewidth=1.6)
    draw_boxes(ax, boxes[shown & (kinds == "ignored")], color=_IGNORED_COLOR, linewidth=1.0)
    ax.figure.canvas.draw()           # settle the layout, so that tag extents are where they will be drawn
    placed: list = []
    errors = np.flatnonzero(shown & np.isin(kinds, list(_ERROR_TAGS)))
    for i in errors[np.argsort(-scores[errors], kind="stable")]:           # the best-scoring errors tagged first
        color = ERROR_COLORS[kinds[i]]
        draw_boxes(ax, boxes[i:i + 1], color=color, linewidth=2.0)
        _place_tag(ax, boxes[i], f"{_ERROR_TAGS[kinds[i]]} {_class_name(labels[i], class_names)} {scores[i]:.2f}",
                   color, placed)
    if title is not None:
        ax.set_title(title, fontsize=SMALL_PT + 1)
    return ax


def verdict_legend(fig: Figure, ncol: int = 4) -> None:
    """The legend of `plot_detection_verdicts`' styles, below the figure's panels. Add it before the
    panels are drawn: the legend shrinks the panels, and the tags are placed on the final layout."""
    from matplotlib import patheffects

    handles = [Line2D([], [], color=_TRUE_POSITIVE_COLOR, lw=2, label="true positive")]
    handles += [Line2D([], [], color=ERROR_COLORS[kind], lw=2, label=f"{tag}: {kind} error")
                for kind, tag in _ERROR_TAGS.items()]
    outline = [patheffects.withStroke(linewidth=3.2, foreground="black", alpha=0.7)]
    handles += [Line2D([], [], color=_UNDETECTED_COLOR, lw=1.8, ls="--", label="object not found", path_effects=outline),
                Line2D([], [], color=GT_STYLE_COLOR, lw=1.8, ls="--", label="object found", path_effects=outline),
                Line2D([], [], color=_IGNORED_COLOR, lw=1.8, ls=":", label="difficult object (ignored)",
                       path_effects=outline)]
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=SMALL_PT, frameon=False)


def mark_cross_class_duplicates(ax: Axes, detections: Mapping, class_names: Sequence[str] | None = None,
                                score_threshold: float = 0.5, iou_threshold: float = 0.3) -> list[tuple[int, int, float]]:
    """Point out detections that per-class NMS lets through because their classes differ: every pair of
    detections scoring at least `score_threshold`, of different classes, whose IoU exceeds `iou_threshold`.
    The lower-scoring one of each pair gets a callout. Returns the pairs (i, j, IoU), i scoring higher."""
    from fasterrcnn_edu.boxes import box_iou

    boxes = torch.as_tensor(_np_boxes(detections["boxes"], "detections['boxes']", "mark_cross_class_duplicates")).float()
    labels = _np(detections["labels"]).reshape(-1)
    scores = _np(detections["scores"]).reshape(-1)
    shown = np.flatnonzero(scores >= score_threshold)
    shown = shown[np.argsort(-scores[shown], kind="stable")]
    iou = _np(box_iou(boxes[shown], boxes[shown]))
    pairs = [(int(shown[a]), int(shown[b]), float(iou[a, b])) for a in range(len(shown)) for b in range(a + 1, len(shown))
             if labels[shown[a]] != labels[shown[b]] and iou[a, b] > iou_threshold]
    for i, j, value in pairs:
        x1, y1, x2, y2 = boxes[j].tolist()
        ax.annotate(f"{_class_name(labels[j], class_names)} {scores[j]:.2f} survives:\nIoU {value:.2f} with "
                    f"{_class_name(labels[i], class_names)} {scores[i]:.2f},\nanother class",
                    xy=(x2, y2), xytext=(12, -6), textcoords="offset points", fontsize=SMALL_PT, va="top",
                    color="black", bbox=dict(facecolor="white", edgecolor="0.4", alpha=0.9, pad=2.0),
                    arrowprops=dict(arrowstyle="->", color="black", lw=1.0))
    return pairs


# ----------------------------------------------------------------------------------------------
# Anchors and the RPN (paper Sec. 3.1)
# ----------------------------------------------------------------------------------------------

def _group_index(values: np.ndarray, decimals: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value among the sorted distinct values (rounded). -> (index (N,), uniques)."""
    uniques, index = np.unique(np.round(values, decimals), return_inverse=True)
    return index.reshape(-1), uniques


def scale_color(side: float) -> tuple[float, float, float, float]:
    """The fixed colour of an anchor of this side (sqrt of its area, pixels), the same in every
    figure whatever the other anchors drawn with it: one tab10 colour per power of two, 32 px
    blue, 64 orange, 128 green, 256 red, 512 purple (sizes in between take the nearest)."""
    return class_color(round(np.log2(max(float(side), 1.0))) - 5)


def plot_anchors(anchors, image_size: tuple[int, int], centers=None, ax: Axes | None = None,
                 image=None, color_by: str | Sequence[int] | None = "scale") -> Axes:
    """Draw anchors (A, 4) — e.g. the k = 9 anchors of one position — over an image or a blank
    canvas of image_size (H, W). The view grows to show anchors that cross the border.

    centers: optional (C, 2) x, y points to mark (sliding-window positions).
    color_by: "scale" (sqrt of area), "ratio" (height / width), a sequence of A group indices,
    or None (one colour). A legend names the groups.
    """
    ax = _axes(ax)
    anchors = _np_boxes(anchors, "anchors", "plot_anchors").astype(np.float64)
    _show_or_blank(ax, image, image_size)
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    names = None
    if color_by == "scale":
        # colour by size, not by rank among the sizes drawn, so a 128-px anchor looks the same
        # next to 32 and 64 px ones as next to 256 and 512 px ones
        group, uniques = _group_index(np.sqrt(w * h), 1)
        names = [f"scale {u:g}" for u in uniques]
        palette = [scale_color(u) for u in uniques]
    elif color_by == "ratio":
        group, uniques = _group_index(h / np.maximum(w, 1e-9), 2)
        names = [f"ratio {u:g}" for u in uniques]
    elif color_by is None:
        group = np.zeros(len(anchors), dtype=int)
    else:
        group = np.asarray(color_by, dtype=int).reshape(-1)
    if color_by != "scale":
        palette = [class_color(g) for g in range(int(group.max(initial=0)) + 1)]
    colors = [palette[g] for g in group]
    draw_boxes(ax, anchors, color=colors, linewidth=1.5)
    if centers is not None:
        c = _np(centers).reshape(-1, 2)
        ax.scatter(c[:, 0], c[:, 1], s=12, c="k", marker="o", zorder=3)
    if names is not None:
        ax.legend(handles=[Line2D([], [], color=palette[i], label=n) for i, n in enumerate(names)],
                  fontsize=SMALL_PT, loc="upper right")
    _fit_view(ax, anchors, image_size)
    return ax


def anchor_centers(feature_size: tuple[int, int], stride: float, offset: float = 0.5) -> np.ndarray:
    """(h * w, 2) x, y image coordinates of the sliding-window positions, row-major.

    offset = 0.5 puts position (y, x) at ((x + 0.5) * stride, (y + 0.5) * stride), the centre of
    the anchors of `fasterrcnn_edu.anchors.base_anchors(base_size=stride)`.
    """
    fh, fw = int(feature_size[0]), int(feature_size[1])
    ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
    return np.stack([(xs.ravel() + offset) * stride, (ys.ravel() + offset) * stride], axis=1)


def plot_anchor_grid(feature_size: tuple[int, int], stride: float, image_size: tuple[int, int],
                     ax: Axes | None = None, image=None, offset: float = 0.5,
                     show_cells: bool = True) -> Axes:
    """The sliding-window positions of the RPN: one dot per feature-map cell (h, w) at its
    image location (stride apart), optionally with the stride x stride cell grid."""
    ax = _axes(ax)
    _show_or_blank(ax, image, image_size)
    centers = anchor_centers(feature_size, stride, offset)
    fh, fw = int(feature_size[0]), int(feature_size[1])
    if show_cells:
        # Cell borders: each cell is the stride x stride image patch of one feature position.
        xs = np.arange(fw + 1) * stride
        ys = np.arange(fh + 1) * stride
        ax.vlines(xs, 0, fh * stride, colors="0.4", linewidth=0.4)
        ax.hlines(ys, 0, fw * stride, colors="0.4", linewidth=0.4)
    ax.scatter(centers[:, 0], centers[:, 1], s=6, c="tab:red", zorder=3)
    ax.set_title(f"{fh}x{fw} positions, stride {stride:g}", fontsize=9)
    _fit_view(ax, np.zeros((0, 4)), image_size)
    return ax


def plot_anchor_labels(image, anchors, labels, gt_boxes, ax: Axes | None = None,
                       max_negatives: int = 50, seed: int = 0) -> Axes:
    """Anchor labelling for RPN training (paper Sec. 3.1.2).

    anchors: (A, 4); labels: (A,) with 1 = positive, 0 = negative, -1 = ignored; gt_boxes: (G, 4).
    Draws every positive (green), a random sample of at most max_negatives negatives (thin red)
    and the ground truth in the book's neutral style (`draw_ground_truth`). Ignored anchors are not drawn.
    """
    ax = show_image(image, ax=ax)
    anchors = _np_boxes(anchors, "anchors", "plot_anchor_labels")
    labels = _np(labels).reshape(-1)
    negatives = np.flatnonzero(labels == 0)
    if len(negatives) > max_negatives:
        negatives = np.random.default_rng(seed).choice(negatives, max_negatives, replace=False)
    draw_boxes(ax, anchors[negatives], color=NEGATIVE_COLOR, linewidth=0.6, alpha=0.7)
    # Positives before the ground truth: the dashed outline stays visible on the anchors that match it.
    draw_boxes(ax, anchors[labels == 1], color=POSITIVE_COLOR, linewidth=1.3)
    draw_ground_truth(ax, gt_boxes)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    ax.legend(handles=[Line2D([], [], color=POSITIVE_COLOR, label=f"positive ({n_pos})"),
                       Line2D([], [], color=NEGATIVE_COLOR, lw=0.6,
                              label=f"negative ({len(negatives)} of {n_neg})"),
                       Line2D([], [], color="0.35", lw=1.3, ls="--", label="ground truth")],
              fontsize=SMALL_PT, loc="upper right")
    return ax


def plot_anchor_matches(image, anchors, iou, gt_boxes, names: Sequence[str] | None = None, labels=None,
                        ax: Axes | None = None, max_negatives: int = 40, seed: int = 0) -> Axes:
    """Each object's best anchor, tagged with the object's name and that IoU, over the ground truth
    (`draw_ground_truth`). With `labels`, the anchor labels underneath, as centres (a photo has
    hundreds of positives, whose outlines would merge): every positive (green dot) and at most
    `max_negatives` negatives (red cross); ignored anchors are not drawn.

    anchors: (A, 4); iou: (G, A) IoU of each ground truth with each anchor (e.g.
    `labeling.match_anchors(...).iou[0]`; -1 marks anchors that may not match); gt_boxes: (G, 4);
    names: G object names; labels: optional (A,) 1 / 0 / -1 (`labeling.label_anchors`).
    Object g's best anchor is drawn in colour `class_color(g)`; with `labels`, all in
    `BEST_ANCHOR_COLOR`, so that no best anchor takes the positive green or the negative red.
    """
    ax = show_image(image, ax=ax)
    anchors = _np_boxes(anchors, "anchors", "plot_anchor_matches")
    iou = _np(iou).reshape(-1, len(anchors))
    handles = []
    if labels is not None:
        labels = _np(labels).reshape(-1)
        negatives = np.flatnonzero(labels == 0)
        if len(negatives) > max_negatives:
            negatives = np.random.default_rng(seed).choice(negatives, max_negatives, replace=False)
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2                       # (A, 2) x, y
        ax.scatter(*centres[negatives].T, s=14, marker="x", c=NEGATIVE_COLOR, linewidths=1.0, zorder=3)
        ax.scatter(*centres[labels == 1].T, s=12, marker="o", c=POSITIVE_COLOR, edgecolors="white",
                   linewidths=0.4, zorder=3)
        handles += [Line2D([], [], color=POSITIVE_COLOR, marker="o", ls="none",
                           label=f"positive centre ({int((labels == 1).sum())})"),
                    Line2D([], [], color=NEGATIVE_COLOR, marker="x", ls="none",
                           label=f"negative centre ({len(negatives)} of {int((labels == 0).sum())})")]
    draw_ground_truth(ax, gt_boxes)
    best = iou.argmax(axis=1) if iou.shape[1] else np.zeros(len(iou), dtype=int)
    height, width = _image_hwc(image).shape[:2]
    placed: list[tuple[float, float]] = []
    for g, a in enumerate(best):
        name = names[g] if names is not None else f"object {g}"
        color = BEST_ANCHOR_COLOR if labels is not None else class_color(g)
        draw_boxes(ax, anchors[a][None], color=[color], linewidth=2.0)
        # The tag at the anchor's top-left corner (inside the image), moved down past earlier tags it would cover.
        x1, y1 = min(max(anchors[a, 0], 0.0), 0.85 * width), min(max(anchors[a, 1], 0.0), 0.95 * height)
        while any(abs(x1 - x) < 0.14 * width and abs(y1 - y) < 0.045 * height for x, y in placed):
            y1 += 0.05 * height
        placed.append((x1, y1))
        ax.text(x1, y1, f"{name} {iou[g, a]:.2f}", fontsize=SMALL_PT, color="black" if labels is not None else "white",
                va="top", ha="left", clip_on=True, bbox=dict(facecolor=color, edgecolor="none", alpha=0.85, pad=1.0))
    handles += [Line2D([], [], color=BEST_ANCHOR_COLOR if labels is not None else "0.2", lw=2,
                       label="best anchor: object, IoU"),
                Line2D([], [], color="0.5", lw=1.3, ls="--", label="ground truth")]
    ax.legend(handles=handles, fontsize=SMALL_PT, loc="lower right")
    return ax


def plot_proposals(image, proposals, scores=None, top: int = 50, ax: Axes | None = None,
                   title: str | None = None, cmap: str = "viridis", vmin: float | None = None,
                   vmax: float | None = None, colorbar: bool = True) -> Axes:
    """The `top` best proposals (P, 4) over the image, coloured and faded by score.

    Without scores, proposals are taken to be sorted already and coloured by rank. The colour scale
    runs from the lowest to the highest score shown, unless `vmin` / `vmax` fix it (to share one scale
    between panels: pass the same values, `colorbar=False`, and add one `score_colorbar` to the figure).
    """
    ax = show_image(image, ax=ax)
    boxes = _np_boxes(proposals, "proposals", "plot_proposals")
    if scores is not None:
        s = _np(scores).reshape(-1).astype(np.float64)
        order = np.argsort(-s, kind="stable")[:top]
        boxes, s = boxes[order], s[order]
    else:
        boxes = boxes[:top]
        s = np.linspace(1.0, 0.0, len(boxes)) if len(boxes) > 1 else np.ones(len(boxes))
    lo, hi = (s.min(), s.max()) if len(s) else (0.0, 1.0)
    lo, hi = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    norm = mcolors.Normalize(lo, hi if hi > lo else lo + 1e-6)
    colormap = plt.get_cmap(cmap)
    # Draw the weakest first so the strongest end up on top.
    for box, value in list(zip(boxes, s))[::-1]:
        v = float(norm(value))
        draw_boxes(ax, box[None], color=colormap(v), linewidth=0.6 + 1.4 * v, alpha=0.35 + 0.65 * v)
    if scores is not None and len(s) and colorbar:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=colormap)
        ax.figure.colorbar(mappable, ax=ax, fraction=0.035, pad=0.02, label="score")
    ax.set_title(title if title is not None else f"top {len(boxes)} proposals")
    return ax


def score_colorbar(fig: Figure, axes, vmin: float, vmax: float, cmap: str = "viridis", label: str = "score"):
    """One colour bar for several panels drawn with the same `vmin`, `vmax` and `cmap` (e.g.
    `plot_proposals(..., vmin=, vmax=, colorbar=False)`), placed beside all of `axes`."""
    mappable = plt.cm.ScalarMappable(norm=mcolors.Normalize(vmin, vmax), cmap=plt.get_cmap(cmap))
    return fig.colorbar(mappable, ax=list(np.ravel(axes)), fraction=0.02, pad=0.01, label=label)


def plot_nms_steps(boxes, scores, keep, ax: Axes | None = None, image=None,
                   image_size: tuple[int, int] | None = None, show_index: bool = False) -> Axes:
    """The outcome of NMS: kept boxes (indices `keep`) solid and coloured, tagged with their rank and
    score ("#1 s=0.92"), suppressed ones dashed grey with their score ("s=0.81"). boxes: (N, 4),
    scores: (N,). show_index: write each box's index just outside its bottom-left corner."""
    ax = _axes(ax)
    boxes = _np_boxes(boxes, "boxes", "plot_nms_steps")
    scores = _np(scores).reshape(-1)
    keep = _np(keep).reshape(-1).astype(int)
    if image is not None:
        show_image(image, ax=ax)
        image_size = _image_hwc(image).shape[:2]
    suppressed = np.setdiff1d(np.arange(len(boxes)), keep)
    for i in suppressed:
        draw_boxes(ax, boxes[i][None], color=SUPPRESSED_COLOR, linestyle="--", linewidth=1.0)
        ax.text(boxes[i, 2] - 0.5, boxes[i, 3] - 0.5, f"s={scores[i]:.2f}", fontsize=SMALL_PT, color="0.35",
                ha="right", va="bottom")
    for rank, i in enumerate(keep):
        draw_boxes(ax, boxes[i][None], color=class_color(rank), linewidth=2.0)
        ax.text(boxes[i, 0], boxes[i, 1], f"#{rank + 1} s={scores[i]:.2f}", fontsize=SMALL_PT, color="white",
                va="bottom", bbox=dict(facecolor=class_color(rank), edgecolor="none", pad=1.0))
    if show_index:
        for i, (x1, _, _, y2) in enumerate(boxes):
            ax.text(x1, y2 + 0.5, f"box {i}", fontsize=SMALL_PT, color="black", ha="left", va="top",
                    bbox=dict(facecolor="white", edgecolor="0.6", pad=0.8, linewidth=0.5))
    if image is None:
        _fit_view(ax, boxes, image_size)
    ax.legend(handles=[Line2D([], [], color="k", lw=2, label=f"kept ({len(keep)})"),
                       Line2D([], [], color=SUPPRESSED_COLOR, ls="--",
                              label=f"suppressed ({len(suppressed)})")], fontsize=SMALL_PT, loc="best")
    return ax


# ----------------------------------------------------------------------------------------------
# RoI pooling (Fast R-CNN, Girshick 2015, Sec. 2.1)
# ----------------------------------------------------------------------------------------------

def roi_pool_bins(feature_map, roi, output_size: tuple[int, int] = (7, 7)):
    """Bins and maxima of Fast R-CNN RoI max pooling on one 2-D feature map.

    feature_map: (h, w); roi: (4,) x1,y1,x2,y2 in feature-map coordinates (already multiplied
    by the spatial scale). Follows the original Caffe layer, as ``torchvision.ops.roi_pool``
    does: the RoI is snapped to cells by rounding and counted inclusively, H = y2' - y1' + 1
    cells tall; bin k of `out_h` spans rows floor(k * H / out_h) .. ceil((k + 1) * H / out_h) - 1
    (offset by y1', clipped to the map), so neighbouring bins may share a row.

    Returns (bins (out_h, out_w, 4) int [row0, row1, col0, col1) half-open, values
    (out_h, out_w) max per bin (0 for an empty bin, as the layer does), argmax (out_h, out_w, 2)
    row, col of the max (-1 for an empty bin)).
    """
    fmap = _np(feature_map).astype(np.float64)
    fh, fw = fmap.shape
    out_h, out_w = int(output_size[0]), int(output_size[1])
    # C's round() (Caffe, torchvision) rounds halves away from zero; np.round would go to even.
    x1, y1, x2, y2 = [int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))
                      for v in _np(roi).reshape(4).astype(np.float64)]
    roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    rows0 = np.clip(np.floor(np.arange(out_h) * bin_h).astype(int) + y1, 0, fh)
    rows1 = np.clip(np.ceil((np.arange(out_h) + 1) * bin_h).astype(int) + y1, 0, fh)
    cols0 = np.clip(np.floor(np.arange(out_w) * bin_w).astype(int) + x1, 0, fw)
    cols1 = np.clip(np.ceil((np.arange(out_w) + 1) * bin_w).astype(int) + x1, 0, fw)
    bins = np.zeros((out_h, out_w, 4), dtype=int)
    values = np.zeros((out_h, out_w))
    argmax = np.full((out_h, out_w, 2), -1, dtype=int)
    for i in range(out_h):              # at most 7 x 7 bins: a readable double loop
        for j in range(out_w):
            bins[i, j] = rows0[i], rows1[i], cols0[j], cols1[j]
            patch = fmap[rows0[i]:rows1[i], cols0[j]:cols1[j]]
            if patch.size:
                r, c = np.unravel_index(np.argmax(patch), patch.shape)
                values[i, j] = patch[r, c]
                argmax[i, j] = rows0[i] + r, cols0[j] + c
    return bins, values, argmax


def plot_roi_pool(feature_map, roi, output_size: tuple[int, int] = (7, 7), ax: Axes | None = None,
                  cmap: str = "viridis") -> Axes:
    """RoI max pooling on a (h, w) feature map: the map (one square per cell), the RoI as given
    (dashed white), its grid of out_h x out_w bins on the snapped cells (solid orange), and the
    max of every bin (open red square around its cell). Adds 1 + out_h * out_w Rectangle patches. See `roi_pool_bins`.

    As in the Caffe layer, feature coordinate v is the *centre* of cell v, so cell (r, c) is
    drawn over [c - 0.5, c + 0.5) x [r - 0.5, r + 0.5) (Matplotlib's default for imshow).
    """
    ax = _axes(ax, figsize=(5, 5))
    fmap = _np(feature_map).astype(np.float64)
    fh, fw = fmap.shape
    bins, values, argmax = roi_pool_bins(fmap, roi, output_size)
    ax.imshow(fmap, cmap=cmap, extent=(-0.5, fw - 0.5, fh - 0.5, -0.5), interpolation="nearest")
    x1, y1, x2, y2 = _np(roi).reshape(4).astype(np.float64)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white",
                           linestyle="--", linewidth=1.5))
    for r0, r1, c0, c1 in bins.reshape(-1, 4):
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                               edgecolor="orange", linewidth=1.2, alpha=0.9))
    found = argmax.reshape(-1, 2)
    found = found[found[:, 0] >= 0]
    # An open red square around each maximum's cell: visible even with the value printed in the cell.
    ax.scatter(found[:, 1], found[:, 0], marker="s", s=260, facecolors="none", edgecolors="red", linewidths=2.2,
               zorder=3)
    ax.set_xlim(-0.5, fw - 0.5)
    ax.set_ylim(fh - 0.5, -0.5)
    ax.set_title(f"RoI max pooling to {output_size[0]}x{output_size[1]}", fontsize=9)
    return ax


# ----------------------------------------------------------------------------------------------
# Evaluation curves
# ----------------------------------------------------------------------------------------------

def plot_pr_curves(result, ax: Axes | None = None, max_classes: int | None = None) -> Axes:
    """Precision-recall curve of every class of a `fasterrcnn_edu.evaluation.VOCResult`,
    with its AP in the legend (classes with no ground truth are skipped)."""
    ax = _axes(ax)
    keys = [k for k in result.ap if not math.isnan(result.ap[k])][:max_classes]
    for i, k in enumerate(keys):
        label = getattr(result, "labels", {}).get(k, i + 1)
        rec, prec = np.asarray(result.recall[k]), np.asarray(result.precision[k])
        # As the devkit plots it: one point per detection; markers keep short curves visible.
        ax.plot(rec, prec, "-", marker="." if len(rec) <= 50 else None, markersize=4,
                color=class_color(label), linewidth=1.2, label=f"{k} ({100 * result.ap[k]:.1f})")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    metric = "VOC07" if getattr(result, "use_07_metric", True) else "VOC10+"
    ax.set_title(f"mAP = {100 * result.map:.1f} ({metric})")
    ax.legend(fontsize=SMALL_PT, ncol=2 if len(keys) > 10 else 1, loc="lower left")
    ax.grid(alpha=0.3)
    return ax


def plot_recall_vs_iou(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], ax: Axes | None = None,
                       title: str | None = None) -> Axes:
    """Recall vs IoU threshold, one line per method (the paper's Figure 4).

    curves: name -> (thresholds (T,), recall (T,)), e.g. from `evaluation.recall_vs_iou`.
    """
    ax = _axes(ax, figsize=(4.5, 4))
    markers = "osd^v<>p*h"
    for i, (name, (t, r)) in enumerate(curves.items()):
        ax.plot(_np(t), _np(r), marker=markers[i % len(markers)], markersize=3.5, linewidth=1.3,
                color=class_color(i), label=name)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("IoU")
    ax.set_ylabel("Recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    if title is not None:
        ax.set_title(title)
    return ax


def plot_recall_vs_proposals(per_image: Mapping[str, Sequence[float]], values: Mapping[str, Sequence[float]],
                             requested: Sequence[int], ax: Axes | None = None, ylabel: str = "average recall",
                             title: str | None = None) -> Axes:
    """A proposal method's recall against the number of boxes an image really has, one line per method.

    per_image, values: method -> (N,) mean boxes per image and the recall measure (e.g. AR) for each
    requested top-N in `requested` (N,). Each point is tagged with its requested N, so two
    requests that give the same boxes (a cap, NMS) show as one point with two tags.
    """
    ax = _axes(ax, figsize=(4.5, 4))
    markers = "osd^v<>p*h"
    for i, (name, counts) in enumerate(per_image.items()):
        x, y = np.asarray(counts, dtype=float), np.asarray(values[name], dtype=float)
        ax.plot(x, y, marker=markers[i % len(markers)], markersize=4, linewidth=1.3, color=class_color(i), label=name)
        for j, ((xi, yi), group) in enumerate(zip(*_same_points(x, y))):     # alternate heights: no overlap
            ax.annotate("N = " + ", ".join(str(requested[j]) for j in group), (xi, yi), textcoords="offset points",
                        xytext=(0, (6 + 10 * (j % 2)) if i == 0 else -(11 + 10 * (j % 2))), ha="center",
                        fontsize=SMALL_PT, color=class_color(i))
    ax.set_xlim(0, 1.1 * max(max(v) for v in per_image.values()))
    ax.set_ylim(0, 1.25 * max(max(v) for v in values.values()))
    ax.set_xlabel("proposals per image (mean)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=SMALL_PT, loc="lower right")
    if title is not None:
        ax.set_title(title)
    return ax


def _same_points(x: np.ndarray, y: np.ndarray) -> tuple[list[tuple[float, float]], list[list[int]]]:
    """Group the indices of equal (x, y) points (rounded to 6 decimals), in order: (points, index groups)."""
    points, groups = [], []
    for j, key in enumerate(zip(np.round(x, 6), np.round(y, 6))):
        if key in points:
            groups[points.index(key)].append(j)
        else:
            points.append(key)
            groups.append([j])
    return points, groups


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average, debiased like TensorBoard's smoothing. values: (T,) finite."""
    out = np.empty_like(values)
    avg, norm = 0.0, 0.0
    for i, v in enumerate(values):     # sequential by definition; logs are short
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


def _log_columns(log) -> dict[str, np.ndarray]:
    """list of records or dict of lists -> dict of equal-length arrays (NaN where missing)."""
    if isinstance(log, Mapping):
        cols = {k: list(v) for k, v in log.items()}
        n = max((len(v) for v in cols.values()), default=0)
        if "step" not in cols:
            cols["step"] = list(range(n))
        return {k: np.asarray(v, dtype=object) for k, v in cols.items()}
    keys = []
    for rec in log:
        keys += [k for k in rec if k not in keys]
    cols = {k: np.asarray([rec.get(k, np.nan) for rec in log], dtype=object) for k in keys}
    if "step" not in cols:
        cols["step"] = np.arange(len(log), dtype=object)
    return cols


def whole_run_steps(log: Sequence[dict]) -> list[dict]:
    """The records of a training log with `step` counted over the whole run: each stage counts its
    steps from 0, so stage k's steps are shifted by the steps of the stages before it."""
    offset, previous, last_step, shifted = 0, None, -1, []
    for record in log:
        if previous is not None and record["stage"] != previous:
            offset += last_step + 1
        previous, last_step = record["stage"], record["step"]
        shifted.append(dict(record, step=record["step"] + offset))
    return shifted


def plot_loss_curves(log, keys: Sequence[str] | None = None, ax: Axes | None = None,
                     smooth: float = 0.0) -> Axes:
    """Training losses vs step.

    log: list of records like {"step": 10, "loss_rpn_cls": 0.6, ..., "lr": 1e-3, "stage": "1"}
    (keys may be missing from some records, e.g. RPN-only stages of 4-step alternating
    training), or a dict of lists (with an optional "step" list). keys: what to plot; default
    every key starting with "loss". smooth: EMA weight in [0, 1) (0 = raw). When records carry a
    "stage", a dotted vertical line marks each stage change.
    """
    ax = _axes(ax, figsize=(7, 4))
    cols = _log_columns(log)
    steps = cols["step"].astype(np.float64)
    if keys is None:
        keys = [k for k in cols if k.startswith("loss")]
    for i, k in enumerate(keys):
        y = np.asarray([np.nan if v is None else v for v in cols[k]], dtype=np.float64)
        ok = np.isfinite(y)
        x, y = steps[ok], y[ok]
        if smooth > 0 and len(y):
            ax.plot(x, y, color=class_color(i), alpha=0.25, linewidth=0.8)
            y = _ema(y, smooth)
        ax.plot(x, y, color=class_color(i), linewidth=1.3, label=k)
    if "stage" in cols:
        stages = cols["stage"]
        change = np.flatnonzero(stages[1:] != stages[:-1]) + 1
        for c in change:
            ax.axvline(steps[c], color="0.5", linestyle=":", linewidth=1.0)
            ax.text(steps[c], 0.98, f" {stages[c]}", transform=ax.get_xaxis_transform(),
                    fontsize=SMALL_PT, va="top", color="0.3")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


# ----------------------------------------------------------------------------------------------
# Feature maps and image grids
# ----------------------------------------------------------------------------------------------

def image_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 4,
               size: float = 3.0) -> tuple[Figure, np.ndarray]:
    """A grid of images (any format `show_image` takes). Returns (figure, axes) with axes a
    flat array of length rows * ncols; unused cells are hidden."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    axes = axes.ravel()
    for i, ax in enumerate(axes):
        if i < n:
            show_image(images[i], ax=ax)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=9)
        else:
            ax.axis("off")
    fig.tight_layout()
    return fig, axes


def plot_feature_map(features, channels: int = 8, ncols: int = 4, cmap: str = "viridis") -> Figure:
    """The first `channels` channels of a (C, h, w) feature map, one panel each."""
    feats = _np(features)
    if feats.ndim == 4:             # (1, C, h, w) batch of one
        feats = feats[0]
    n = min(channels, feats.shape[0])
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(feats[i], cmap=cmap, interpolation="nearest")
            ax.set_title(f"channel {i}", fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Pictures of the whole: the network and the RPN head, with shapes from a real forward pass
# ----------------------------------------------------------------------------------------------
def _shape(t) -> str:
    return "×".join(str(int(s)) for s in t)


@torch.no_grad()
def network_shapes(model, image_size: tuple[int, int], seed: int = 0) -> dict[str, object]:
    """Run `model` (eval mode) stage by stage on one random image of `image_size` (H, W) and record shapes.

    Returns a dict of tensor shapes (tuples) and counts: "input", "resized" (after the transform:
    rescaled and padded to the stride), "features", "rpn_hidden", "rpn_cls", "rpn_reg" (the head's
    maps, channels first), "anchors", "proposals", "pooled", "head", "scores", "deltas",
    "detections", plus "k", "stride", "backbone", "num_classes" (K + 1).
    """
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        image = torch.rand(3, *image_size, generator=generator).to(device)
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        head = model.rpn.head
        hidden = torch.relu(head.conv(features))
        cls_map, reg_map = head.cls(hidden), head.reg(hidden)
        proposals = model.propose(batch, features)
        from fasterrcnn_edu.roi_heads import pool_rois, rois_with_batch_index

        rois = rois_with_batch_index(proposals)
        pooled = pool_rois(features, rois, model.cfg.roi_output_size, model.roi_heads.spatial_scale,
                           model.cfg.roi_pool)
        fc = model.roi_heads.box_head(pooled)
        scores, deltas = model.roi_heads.predictor(fc)
        detections = model.roi_heads.postprocess(scores, deltas, proposals, batch.image_sizes)[0]
    finally:
        model.train(was_training)
    k = model.cfg.num_anchors
    return {
        "input": (3, *image_size), "resized": tuple(batch.tensors.shape[1:]),
        "features": tuple(features.shape[1:]), "rpn_hidden": tuple(hidden.shape[1:]),
        "rpn_cls": tuple(cls_map.shape[1:]), "rpn_reg": tuple(reg_map.shape[1:]),
        "anchors": features.shape[-2] * features.shape[-1] * k,
        "proposals": tuple(proposals[0].shape), "pooled": tuple(pooled.shape), "head": tuple(fc.shape),
        "scores": tuple(scores.shape), "deltas": tuple(deltas.flatten(1).shape),
        "detections": tuple(detections["boxes"].shape), "k": k, "stride": model.backbone.stride,
        "backbone": model.cfg.backbone, "num_classes": model.cfg.num_classes,
    }


_STAGE_COLORS = {"input": "0.92", "shared": "#cfe2f3", "rpn": "#fde9c9", "detector": "#d9ead3", "output": "0.92"}


def _node(ax: Axes, x: float, y: float, title: str, detail: str, kind: str, width: float = 1.7,
          height: float = 0.9) -> tuple[float, float, float, float]:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.03,rounding_size=0.08",
                                facecolor=_STAGE_COLORS[kind], edgecolor="0.3", linewidth=1.0))
    ax.text(x, y + height * 0.17, title, ha="center", va="center", fontsize=8.5, fontweight="bold")
    ax.text(x, y - height * 0.2, detail, ha="center", va="center", fontsize=SMALL_PT, family="monospace")
    return x - width / 2, x + width / 2, y - height / 2, y + height / 2


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], text: str = "", connection: str = "arc3") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.1,
                                                          shrinkA=0, shrinkB=0, connectionstyle=connection))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.08, text, ha="center", va="bottom", fontsize=SMALL_PT,
                color="0.25")


def plot_network(model, image_size: tuple[int, int], ax: Axes | None = None, title: str | None = None,
                 shapes: Mapping | None = None) -> Axes:
    """The whole Faster R-CNN as a block diagram, top to bottom, every tensor shape computed by running `model`.

    backbone → shared feature map → RPN (3×3 conv, cls and reg 1×1 convs) → proposals (decode, clip,
    NMS) → RoI pooling on the same feature map → fully connected head → class scores and
    class-specific boxes → detections (per-class NMS). Shapes leave out the batch dimension;
    R is the number of proposals of this image, D of detections. `shapes`: a precomputed
    `network_shapes(model, image_size)`. Drawn in two columns (shared path and detector left, RPN
    right), so that it stays legible in a narrow text column.
    """
    s = dict(shapes) if shapes is not None else network_shapes(model, image_size)
    ax = _axes(ax, figsize=(4, 8.6))
    k, stride, classes = s["k"], s["stride"], s["num_classes"]
    w, step = 2.3, 1.3                         # node width; vertical distance between rows
    main, side = 0.0, 2.6                      # the columns' centres
    ys = [-step * i for i in range(8)]
    nodes = {
        "image": _node(ax, main, ys[0], "image", f"{_shape(s['resized'])}\n(input {_shape(s['input'][1:])})", "input", w),
        "backbone": _node(ax, main, ys[1], f"conv layers ({s['backbone']})", f"stride {stride}", "shared", w),
        "features": _node(ax, main, ys[2], "shared feature map", _shape(s["features"]), "shared", w),
        "rpn": _node(ax, side, ys[3], "RPN: 3×3 conv + ReLU", _shape(s["rpn_hidden"]), "rpn", w),
        "clsreg": _node(ax, side, ys[4], "cls / reg: 1×1 convs", f"{_shape(s['rpn_cls'])}\n{_shape(s['rpn_reg'])}",
                        "rpn", w),
        "proposals": _node(ax, side, ys[5], "proposals", f"{_shape(s['proposals'])} of {s['anchors']}\nanchors: decode, NMS",
                           "rpn", w),
        "pool": _node(ax, main, ys[5], "RoI pooling", _shape(s["pooled"]), "detector", w),
        "head": _node(ax, main, ys[6], "fc layers", _shape(s["head"]), "detector", w),
        "predict": _node(ax, main, ys[7], "cls_score / bbox_pred", f"{_shape(s['scores'])}\n{_shape(s['deltas'])}",
                         "detector", w),
    }
    det = _node(ax, side, ys[7], "detections", f"D×{s['detections'][-1]} boxes\n+ classes, scores", "output", w)
    bottom = lambda n: ((nodes[n][0] + nodes[n][1]) / 2, nodes[n][2])  # noqa: E731
    top = lambda n: ((nodes[n][0] + nodes[n][1]) / 2, nodes[n][3])     # noqa: E731
    middle = lambda n: (nodes[n][2] + nodes[n][3]) / 2                # noqa: E731
    _arrow(ax, bottom("image"), top("backbone"))
    _arrow(ax, bottom("backbone"), top("features"))
    _arrow(ax, (nodes["features"][1], middle("features")), top("rpn"), connection="angle,angleA=0,angleB=90,rad=0")
    _arrow(ax, bottom("rpn"), top("clsreg"))
    _arrow(ax, bottom("clsreg"), top("proposals"))
    _arrow(ax, bottom("features"), top("pool"))
    ax.text(main - 0.1, (nodes["features"][2] + nodes["pool"][3]) / 2, "the same\nfeatures", ha="right", va="center",
            fontsize=SMALL_PT, color="0.25")
    _arrow(ax, (nodes["proposals"][0], middle("proposals")), (nodes["pool"][1], middle("pool")))
    _arrow(ax, bottom("pool"), top("head"))
    _arrow(ax, bottom("head"), top("predict"))
    _arrow(ax, (nodes["predict"][1], middle("predict")), (det[0], middle("predict")))
    ax.text(side, det[2] - 0.08, "after per-class NMS", fontsize=SMALL_PT, color="0.25", ha="center", va="top")
    handles = [Rectangle((0, 0), 1, 1, facecolor=_STAGE_COLORS[kind], edgecolor="0.3") for kind in ("shared", "rpn", "detector")]
    ax.legend(handles, ["shared conv layers", f"Region Proposal\nNetwork (k = {k})", f"Fast R-CNN detector\n(K + 1 = {classes})"],
              loc="upper right", fontsize=SMALL_PT, frameon=False, ncol=1, bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(main - w / 2 - 0.9, side + w / 2 + 0.1)
    ax.set_ylim(ys[-1] - 0.9, ys[0] + 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_rpn_head(model, image_size: tuple[int, int] | None = None, ax: Axes | None = None) -> Axes:
    """The RPN head of `model` (paper Fig. 3, left): a 3×3 conv slid over the feature map, then two
    sibling 1×1 convs, `cls` (2k channels: two scores per anchor) and `reg` (4k: tx, ty, tw, th per
    anchor). Channel counts, map sizes and parameter counts come from the model itself, run on a
    feature map of the size `image_size` (default: the config's min_size × max_size) gives."""
    head = model.rpn.head
    cfg = model.cfg
    image_size = image_size or (cfg.min_size, cfg.max_size)
    stride = model.backbone.stride
    h, w = feature_map_size(image_size, stride)
    with torch.no_grad():
        device = next(model.parameters()).device
        features = torch.zeros(1, head.conv.in_channels, h, w, device=device)
        hidden = torch.relu(head.conv(features))
        cls_map, reg_map = head.cls(hidden), head.reg(hidden)
    k, per_anchor = head.num_anchors, head.scores_per_anchor
    count = lambda layer: sum(p.numel() for p in layer.parameters())  # noqa: E731
    ax = _axes(ax, figsize=(7.8, 2.9))
    # the feature map as a slab with one 3×3 window
    ax.add_patch(Rectangle((0.2, 0.6), 2.4, 2.4, facecolor=_STAGE_COLORS["shared"], edgecolor="0.3"))
    for i in range(1, 8):
        ax.plot([0.2 + i * 0.3, 0.2 + i * 0.3], [0.6, 3.0], color="0.75", lw=0.5)
        ax.plot([0.2, 2.6], [0.6 + i * 0.3, 0.6 + i * 0.3], color="0.75", lw=0.5)
    ax.add_patch(Rectangle((1.1, 1.5), 0.9, 0.9, facecolor="none", edgecolor="tab:red", lw=2))
    ax.text(1.4, 0.35, f"feature map\n{_shape(features.shape[1:])}", ha="center", va="top", fontsize=8, family="monospace")
    ax.text(1.55, 2.5, "3×3 window", color="tab:red", fontsize=SMALL_PT, ha="center", va="bottom")
    conv = _node(ax, 4.6, 1.8, "3×3 conv + ReLU",
                 f"{head.conv.in_channels} → {head.conv.out_channels} ch.\n{_shape(hidden.shape[1:])}\n{count(head.conv):,} weights",
                 "rpn", 2.3, 1.3)
    cls = _node(ax, 8.0, 2.75, "cls: 1×1 conv",
                f"{per_anchor}k = {cls_map.shape[1]} channels\n{_shape(cls_map.shape[1:])}\n{count(head.cls):,} weights",
                "rpn", 2.5, 1.3)
    reg = _node(ax, 8.0, 0.85, "reg: 1×1 conv",
                f"4k = {reg_map.shape[1]} channels\n{_shape(reg_map.shape[1:])}\n{count(head.reg):,} weights",
                "rpn", 2.5, 1.3)
    _arrow(ax, (2.0, 1.95), (conv[0], 1.8))
    _arrow(ax, (conv[1], 1.95), (cls[0], 2.75))
    _arrow(ax, (conv[1], 1.65), (reg[0], 0.85))
    score_words = "2 scores (not object, object)" if per_anchor == 2 else "1 objectness logit"
    cls_channels = "channels 2a, 2a+1" if per_anchor == 2 else "channel a"
    ax.text(9.45, 2.75, f"{cls_channels} → anchor a:\n{score_words}\nat each of the {h}×{w} positions",
            fontsize=SMALL_PT, va="center")
    ax.text(9.45, 0.85, "channels 4a … 4a+3 → anchor a:\n$t_x, t_y, t_w, t_h$ (Eq. 2)\n"
            f"k = {k} anchors per position", fontsize=SMALL_PT, va="center")
    ax.set_xlim(0, 12.2)
    ax.set_ylim(-0.3, 3.6)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax
