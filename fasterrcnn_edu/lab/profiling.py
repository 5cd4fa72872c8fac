"""Where does the time go? Per-stage timing of a `FasterRCNN` forward pass (book chapter 9).

The paper's timing table (Table 5 of the journal version) splits one test image into "conv"
(shared layers), "proposal" (the RPN's own layers) and "region-wise" (NMS, RoI pooling, fc
layers, softmax): VGG-16 on a K40 GPU takes 141 + 10 + 47 = 198 ms (5 fps), ZF
31 + 3 + 25 = 59 ms (17 fps). `profile_stages` measures the same split, finer, on any device::

    transform    resize, normalise, pad (ImageTransform)  ┐ "conv"
    backbone     shared conv layers                       ┘
    rpn_head     3×3 conv + sibling 1×1 convs, anchors    ] "proposal" (the RPN's "additional layers")
    proposals    decode, clip, top-N, NMS                 ┐ "region-wise" (Table 5's caption: "includes
    roi_pool     RoI pooling (max or RoIAlign, as set)    │ NMS, pooling, fully-connected, and softmax")
    roi_head     fc layers + class scores / box deltas    │
    postprocess  class-specific decode, score threshold,  │
                 per-class NMS, boxes back to the image   ┘

Timing: `time.perf_counter`, warm-up runs first, the median over repeats, and
`torch.cuda.synchronize` around every stage on CUDA (kernels are asynchronous). `staged_forward`
runs exactly the model's eval forward, one stage at a time; a test checks that its detections
equal `model(images)`. `time_vs_image_size` and `time_vs_num_proposals` give the scaling curves::

    python -m fasterrcnn_edu profile --model data/reference_model.pt --out data/experiments/scaling_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fasterrcnn_edu.commands import DEFAULT_DATA, DEFAULT_MODEL
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.proposals import generate_proposals
from fasterrcnn_edu.roi_heads import pool_rois, rois_with_batch_index
from fasterrcnn_edu.lab.records import command_line, environment

__all__ = ["STAGES", "PAPER_GROUPS", "PAPER_TABLE5_MS", "staged_forward", "profile_stages", "with_settings",
           "time_vs_image_size", "time_vs_num_proposals", "measure_scaling", "group_stages", "count_macs",
           "stage_color", "plot_stage_times", "plot_scaling"]

STAGES = ("transform", "backbone", "rpn_head", "proposals", "roi_pool", "roi_head", "postprocess")

# Our stages grouped as the paper's timing table groups them. Table 5's caption: "Region-wise includes NMS,
# pooling, fully-connected, and softmax layers", and the RPN's 10 ms are "computing the additional layers":
# so our `proposals` stage (decode, top-N, NMS) is region-wise, and "proposal" is the RPN head alone.
#: Our stages grouped like the columns of the paper's Table 5.
PAPER_GROUPS = {"conv": ("transform", "backbone"), "proposal": ("rpn_head",),
                "region-wise": ("proposals", "roi_pool", "roi_head", "postprocess")}

# Table 5 of the journal/arXiv version (Ren et al., TPAMI 2017), ms per image on a K40 GPU
# (Selective Search runs on the CPU). Rows: conv, proposal, region-wise; total and rate as printed.
#: Table 5 of the paper, ms per image on a K40 GPU, by system.
PAPER_TABLE5_MS = {
    "SS + Fast R-CNN (VGG-16)": {"conv": 146, "proposal": 1510, "region-wise": 174, "total": 1830, "fps": 0.5},
    "RPN + Fast R-CNN (VGG-16)": {"conv": 141, "proposal": 10, "region-wise": 47, "total": 198, "fps": 5},
    "RPN + Fast R-CNN (ZF)": {"conv": 31, "proposal": 3, "region-wise": 25, "total": 59, "fps": 17},
}


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (timings of asynchronous kernels); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def staged_forward(model: FasterRCNN, images: list[Tensor], clock: Callable[[], float] = time.perf_counter
                   ) -> tuple[list[dict], dict[str, float], dict]:
    """One eval-mode forward of `model` on `images`, stage by stage.

    images: list of (3, H, W) float tensors in [0, 1] on the model's device.
    Returns (detections as `model(images)` returns them, {stage: seconds} for the `STAGES`,
    counts {"proposals": per image, "detections": per image, "feature_size": (h, w),
    "image_size": (H, W) of the resized batch}).
    """
    if not isinstance(model, FasterRCNN):
        raise TypeError(f"staged_forward needs a FasterRCNN (shared features), got {type(model).__name__}")
    model.eval()
    device = _device_of(model)
    cfg = model.cfg
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]):
        synchronize(device)
        start = clock()
        out = fn()
        synchronize(device)
        times[name] = clock() - start
        return out

    batch, _ = timed("transform", lambda: model.transform(images))
    features = timed("backbone", lambda: model.backbone(batch.tensors))

    def rpn_head():
        objectness, deltas = model.rpn.head(features)
        return objectness, deltas, model.rpn.anchor_generator(features.shape[-2:], features.device)

    objectness, deltas, anchors = timed("rpn_head", rpn_head)
    proposals, _ = timed("proposals", lambda: generate_proposals(
        anchors, objectness, deltas, batch.image_sizes, cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test,
        cfg.rpn_nms_thresh, cfg.rpn_min_size * batch.scales))
    heads = model.roi_heads
    pooled = timed("roi_pool", lambda: pool_rois(features, rois_with_batch_index(proposals), cfg.roi_output_size,
                                                 heads.spatial_scale, cfg.roi_pool))
    logits, box_deltas = timed("roi_head", lambda: heads.predictor(heads.box_head(pooled)))

    def postprocess():
        detections = heads.postprocess(logits, box_deltas, proposals, batch.image_sizes)
        return model.transform.postprocess(detections, batch)

    detections = timed("postprocess", postprocess)
    counts = {"proposals": [len(p) for p in proposals], "detections": [len(d["boxes"]) for d in detections],
              "feature_size": tuple(features.shape[-2:]), "image_size": tuple(batch.tensors.shape[-2:])}
    return detections, times, counts


def profile_stages(model: FasterRCNN, images: list[Tensor], repeats: int = 5, warmup: int = 1,
                   whole_forward: bool = True) -> dict:
    """Median time of every stage of `staged_forward` over `repeats` runs, after `warmup` runs.

    Returns {"stages": {stage: median seconds}, "total": median of the per-run sums,
    "forward": median time of a plain `model(images)` (if `whole_forward`), "repeats", "images",
    "proposals" / "detections": mean per image, "image_size", "feature_size", "device", "threads"}.
    Medians of each stage need not add up to the median total exactly.
    """
    device = _device_of(model)
    model.eval()
    for _ in range(warmup):
        staged_forward(model, images)
    runs, counts = [], {}
    for _ in range(repeats):
        _, times, counts = staged_forward(model, images)
        runs.append(times)
    result = {
        "stages": {s: statistics.median(r[s] for r in runs) for s in STAGES},
        "total": statistics.median(sum(r.values()) for r in runs),
        "repeats": repeats, "images": len(images),
        "proposals": float(np.mean(counts["proposals"])), "detections": float(np.mean(counts["detections"])),
        "image_size": list(counts["image_size"]), "feature_size": list(counts["feature_size"]),
        "device": str(device), "threads": torch.get_num_threads(),
    }
    if whole_forward:
        with torch.no_grad():
            model(images)
            synchronize(device)
            forward = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(images)
                synchronize(device)
                forward.append(time.perf_counter() - start)
        result["forward"] = statistics.median(forward)
    return result


def with_settings(model: FasterRCNN, **overrides) -> FasterRCNN:
    """A new model with `model`'s weights and its configuration with `overrides` applied.

    Accepts any `Config` field used at test time: e.g. min_size / max_size (the image scale),
    rpn_pre_nms_top_n_test / rpn_post_nms_top_n_test / rpn_nms_thresh (the proposals),
    score_thresh / det_nms_thresh / detections_per_img. The original model is untouched (a
    `Config` is immutable; the copy is built from the changed one).
    """
    unknown = [name for name in overrides if not hasattr(model.cfg, name)]
    if unknown:
        raise AttributeError(f"Config has no field {unknown[0]!r}")
    clone = FasterRCNN(model.cfg.replace(backbone_weights=None, **overrides))
    clone.load_state_dict(model.state_dict())
    return clone.to(_device_of(model)).eval()


def time_vs_image_size(model: FasterRCNN, image: Tensor, sizes: Sequence[int] = (200, 300, 400, 500, 600, 700, 800),
                       repeats: int = 3, warmup: int = 1) -> list[dict]:
    """Per-stage times of one image rescaled so that its shorter side is each of `sizes` (paper §3.3: s = 600).

    image: (3, H, W) in [0, 1]. The longer side follows the aspect ratio (max_size does not bind).
    Returns one `profile_stages` result per size with "min_size" added.
    """
    rows = []
    for size in sizes:
        longer = math.ceil(size * max(image.shape[-2:]) / min(image.shape[-2:])) + 1
        scaled = with_settings(model, min_size=int(size), max_size=int(longer))
        row = profile_stages(scaled, [image], repeats, warmup, whole_forward=False)
        rows.append({"min_size": int(size), **row})
    return rows


def time_vs_num_proposals(model: FasterRCNN, image: Tensor, counts: Sequence[int] = (100, 300, 500, 1000, 1500, 2000),
                          min_size: int | None = 600, nms_thresh: float | None = None, repeats: int = 3,
                          warmup: int = 1, pre_nms_top_n: int | None = 6000) -> list[dict]:
    """Per-stage times as the number of test-time proposals N grows (paper: 300; Table 2 tries 100..6000).

    Sets rpn_post_nms_top_n_test = N and rpn_pre_nms_top_n_test = max(N, pre_nms_top_n) (the paper's
    6000 by default, None: the model's own value), so the NMS input is the same for every N and only
    the region-wise stages see more boxes. The image is rescaled to shorter side `min_size` (None: the
    model's own scale) so that there are enough anchors. NMS may leave fewer than N boxes: each row
    reports the real mean "proposals" next to "top_n".
    """
    cfg = model.cfg
    pre = cfg.rpn_pre_nms_top_n_test if pre_nms_top_n is None else int(pre_nms_top_n)
    base: dict = {}
    if min_size is not None:
        base["min_size"] = int(min_size)
        base["max_size"] = math.ceil(min_size * max(image.shape[-2:]) / min(image.shape[-2:])) + 1
    if nms_thresh is not None:
        base["rpn_nms_thresh"] = float(nms_thresh)
    rows = []
    for n in counts:
        scaled = with_settings(model, rpn_post_nms_top_n_test=int(n), rpn_pre_nms_top_n_test=max(int(n), pre), **base)
        rows.append({"top_n": int(n), **profile_stages(scaled, [image], repeats, warmup, whole_forward=False)})
    return rows


def measure_scaling(model: FasterRCNN, image: Tensor, sizes: Sequence[int] = (200, 300, 400, 500, 600, 700, 800),
                    counts: Sequence[int] = (100, 300, 500, 1000, 1500, 2000), proposals_min_size: int = 600,
                    repeats: int = 3, warmup: int = 1) -> dict:
    """Both scaling experiments and a profile at the model's own setting, with the environment."""
    start = time.perf_counter()
    result = {"environment": environment(),
              "default": profile_stages(model, [image], repeats, warmup),
              "image_size": time_vs_image_size(model, image, sizes, repeats, warmup),
              "num_proposals": time_vs_num_proposals(model, image, counts, proposals_min_size, None, repeats, warmup)}
    result["environment"]["seconds"] = round(time.perf_counter() - start, 1)
    result["environment"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def count_macs(build: Callable[[], torch.nn.Module], input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers in one forward pass of `build()` on an input
    of `input_shape` (e.g. (1, 3, 600, 1000)).

    A Conv2d costs (output elements) × (in_channels / groups) × (kernel area), a Linear (output elements)
    × in_features; other layers (ReLU, pooling, normalisation) are not counted. `build` is called on
    PyTorch's meta device, so the module holds no weights and the pass computes shapes only: counting
    VGG-16 at 600×1000 costs neither memory nor time.
    """
    total = 0

    def hook(layer: torch.nn.Module, _inputs, output: Tensor) -> None:
        nonlocal total
        if isinstance(layer, torch.nn.Conv2d):
            kernel = math.prod(layer.kernel_size)
            total += output.numel() * (layer.in_channels // layer.groups) * kernel
        else:
            total += output.numel() * layer.in_features

    with torch.device("meta"):
        module = build()
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.register_forward_hook(hook)
    with torch.no_grad():
        module(torch.empty(*input_shape, device="meta"))
    return int(total)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def stage_color(name: str, fallback: int = 0) -> tuple[float, ...]:
    """The one colour of a stage or group of `PAPER_GROUPS` in every timing figure: a group's own colour,
    and for a stage a shade of its group's colour (towards white, lighter for the earlier members);
    names outside the groups get the class colours after them, by `fallback`."""
    from matplotlib import colors as mcolors
    from fasterrcnn_edu.viz import class_color

    for g, (group, members) in enumerate(PAPER_GROUPS.items()):
        base = np.array(mcolors.to_rgb(class_color(g)))
        if name == group:
            return tuple(base)
        if name in members:
            # towards white, 0.45 .. 0 from the first member to the last; a group's only member: its colour
            shade = 0.45 * (1 - members.index(name) / (len(members) - 1)) if len(members) > 1 else 0.0
            return tuple(base + (1 - base) * shade)
    return class_color(len(PAPER_GROUPS) + fallback)


def group_stages(stages: Mapping[str, float], groups: Mapping[str, Sequence[str]] = PAPER_GROUPS) -> dict[str, float]:
    """Sum per-stage times into groups (default: the paper's conv / proposal / region-wise)."""
    return {name: float(sum(stages[s] for s in members)) for name, members in groups.items()}


def plot_stage_times(profiles: Mapping[str, Mapping[str, float]], ax=None, unit: str = "ms",
                     normalize: bool = False, title: str | None = None):
    """Stacked horizontal bars: one bar per profile, one segment per stage.

    profiles: name -> {stage: seconds} (e.g. `profile_stages(...)["stages"]`, or `group_stages` of it,
    or the paper's `PAPER_TABLE5_MS` rows converted to seconds). Stages are stacked in the order of
    the first profile. normalize=True shows fractions of each bar's total instead of times.
    Returns the Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.7 + 0.55 * len(profiles)))
    names = list(profiles)
    stages = list(next(iter(profiles.values())))
    scale = {"ms": 1e3, "s": 1.0}[unit]
    left = np.zeros(len(names))
    for i, stage in enumerate(stages):
        values = np.array([float(profiles[n].get(stage, 0.0)) for n in names])
        if normalize:
            totals = np.array([sum(float(v) for v in profiles[n].values()) for n in names])
            values = values / np.where(totals > 0, totals, 1.0)
        else:
            values = values * scale
        ax.barh(names, values, left=left, color=stage_color(stage, i), label=stage, edgecolor="white", linewidth=0.5)
        left += values
    if not normalize:
        for y, total in enumerate(left):
            ax.text(total, y, f" {total:.1f} {unit}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of the time" if normalize else f"time per image ({unit})")
    ax.set_xlim(0, 1.0 if normalize else (left.max() * 1.15 if len(left) else 1))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_scaling(rows: Sequence[Mapping], x: str, ax=None, stages: Sequence[str] = STAGES, unit: str = "ms",
                 xlabel: str | None = None, title: str | None = None):
    """Stacked areas of per-stage time against `x` ("min_size" or "top_n", or "proposals").

    rows: the list returned by `time_vs_image_size` / `time_vs_num_proposals` (or read from JSON).
    Returns the Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    scale = {"ms": 1e3, "s": 1.0}[unit]
    xs = np.array([float(r[x]) for r in rows])
    ys = np.array([[float(r["stages"][s]) * scale for r in rows] for s in stages])
    ax.stackplot(xs, ys, labels=list(stages), colors=[stage_color(s, i) for i, s in enumerate(stages)],
                 alpha=0.85)
    ax.plot(xs, ys.sum(axis=0), "k.-", linewidth=1, markersize=4, label="total")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(f"time per image ({unit})")
    ax.set_xlim(xs.min(), xs.max())
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def register(subparsers, formatter_class) -> None:
    parser = subparsers.add_parser("profile", formatter_class=formatter_class,
                                   help="per-stage timing and scaling of a trained detector (JSON)",
                                   description="Chapter 9's measurements: time per stage, against image size "
                                               "and against the number of proposals; writes a JSON file.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", type=int, default=0, help="which image of the split to time")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 300, 400, 500, 600, 700, 800])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 500, 1000, 1500, 2000])
    parser.add_argument("--proposals-min-size", type=int, default=600,
                        help="image scale (shorter side) for the proposal-count curve")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path("data/experiments/scaling_cpu.json"))
    parser.set_defaults(func=profile_command)


def profile_command(args: argparse.Namespace) -> int:

    from fasterrcnn_edu.data import VOCDataset
    from fasterrcnn_edu.checkpoint import load_model
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.model, args.device)
    image, _ = VOCDataset(args.data, args.split)[args.index]
    result = measure_scaling(model, image.to(args.device), args.sizes, args.counts, args.proposals_min_size,
                             args.repeats, args.warmup)
    result["environment"]["command"] = command_line()
    result["environment"]["model"] = str(args.model)
    write_json(result, args.out)
    print(f"wrote {args.out} in {result['environment']['seconds']:.0f} s")
    return 0

