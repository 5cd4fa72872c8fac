"""`python -m fasterrcnn_edu bench`: our detector against torchvision's, side by side, in one process.

Every comparison runs both implementations on the same inputs, after warm-up, and reports the
median of several repeats and the ratio ours / torchvision (below 1 means we are faster):
NMS (readable, fast path, torchvision) on 6000 and 12000 proposals; anchor labeling + sampling
for ~20000 anchors vs torchvision's Matcher + sampler; the proposal stage vs torchvision's
`RegionProposalNetwork.filter_proposals`; RoI pooling of 128 and 300 RoIs; and a full training
step and single-image inference of `FasterRCNN` vs `torchvision.models.detection.FasterRCNN`
built with the same backbone, anchors, image size, proposal counts, RoI sampling and head
(weights copied), for the `book` and `paper` presets. Results go to a JSON file with the device,
versions, thread count and date. For a fair architecture match the RPN uses the k-score sigmoid
variant here (torchvision has no 2k-softmax head).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import platform
import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
from torchvision.models.detection.rpn import RPNHead as TVRPNHead

from fasterrcnn_edu.anchors import AnchorGenerator
from fasterrcnn_edu.config import Config, get_config
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.labeling import label_anchors, pad_ground_truth, sample_balanced
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.nms import nms, nms_readable
from fasterrcnn_edu.lab.profiling import synchronize
from fasterrcnn_edu.proposals import generate_proposals
from fasterrcnn_edu.roi_heads import pool_rois, roi_pool_readable, rois_with_batch_index
from fasterrcnn_edu.transforms import ImageBatch
from fasterrcnn_edu.lab.records import environment


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds, after `warmup` untimed calls."""
    return compare(fn, None, device, repeats, warmup)[0]


def compare(ours: Callable[[], object], theirs: Callable[[], object] | None, device: torch.device,
            repeats: int = 5, warmup: int = 1, min_sample_seconds: float = 0.02) -> tuple[float, float]:
    """Median wall times (seconds per call) of two functions, timed alternately (ours, theirs, ours, ...)
    so that a change in machine load affects both alike. `theirs=None` times `ours` alone (second value 0).

    A sample calls a function several times in a row when one call is shorter than
    `min_sample_seconds` (as `timeit` does): millisecond-scale calls are otherwise dominated by
    timer and scheduler noise.
    """
    functions = [f for f in (ours, theirs) if f is not None]
    slowest = 0.0
    for _ in range(warmup):
        for fn in functions:
            start = time.perf_counter()
            fn()
            synchronize(device)
            slowest = max(slowest, time.perf_counter() - start)
    calls = max(1, math.ceil(min_sample_seconds / max(slowest, 1e-6)))
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for fn, bucket in zip(functions, times):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            bucket.append((time.perf_counter() - start) / calls)
    medians = [statistics.median(t) for t in times]
    return medians[0], (medians[1] if len(medians) > 1 else 0.0)


def random_boxes(n: int, size: float, generator: torch.Generator, device) -> torch.Tensor:
    """n random boxes (n, 4) inside a size × size image, sides 8..size/2."""
    xy = torch.rand(n, 2, generator=generator) * size * 0.75
    wh = 8 + torch.rand(n, 2, generator=generator) * size / 2
    return torch.cat([xy, (xy + wh).clamp(max=size)], dim=1).to(device)


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------
def bench_nms(device, repeats: int, sizes=(6000, 12000)) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        boxes = random_boxes(n, 1000, g, device)
        scores = torch.rand(n, generator=g).to(device)
        fast, tv = compare(lambda: nms(boxes, scores, 0.7), lambda: torchvision.ops.nms(boxes, scores, 0.7),
                           device, repeats)
        readable = median_time(lambda: nms_readable(boxes, scores, 0.7), device, max(1, repeats // 2))
        rows.append(_row(f"NMS fast path, {n} boxes", fast, tv))
        rows.append(_row(f"NMS readable, {n} boxes", readable, tv))
        # What the RPN needs: only the first 300 (test) or 2000 (train) boxes NMS keeps.
        for kept in (300, 2000):
            rows.append(_row(f"NMS keeping the top {kept}, {n} boxes (early exit vs full kernel)",
                             *compare(lambda: nms(boxes, scores, 0.7, max_kept=kept),
                                      lambda: torchvision.ops.nms(boxes, scores, 0.7)[:kept], device, repeats)))
    return rows


def bench_labeling(device, repeats: int, gt_counts=(1, 10, 50)) -> list[dict]:
    """~20000 anchors (the paper's 1000×600 image, stride 16) labeled and sampled."""
    anchors = AnchorGenerator()((38, 63), device)                       # 21546 anchors
    sizes = torch.tensor([[600, 1000]], device=device)
    matcher = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    sampler = tv_utils.BalancedPositiveNegativeSampler(256, 0.5)
    rows = []
    g = torch.Generator().manual_seed(1)
    for count in gt_counts:
        gt = random_boxes(count, 600, g, device)
        padded, valid = pad_ground_truth([gt], device)

        def ours():
            labels = label_anchors(anchors, padded, valid, sizes).labels
            return sample_balanced(labels == 1, labels == 0, 256, 0.5)

        def theirs():
            iou = torchvision.ops.box_iou(gt, anchors)
            matched = matcher(iou)
            labels = (matched >= 0).to(torch.float32)
            labels[matched == matcher.BELOW_LOW_THRESHOLD] = 0.0
            labels[matched == matcher.BETWEEN_THRESHOLDS] = -1.0
            return sampler([labels])

        rows.append(_row(f"anchor labeling + sampling, {len(anchors)} anchors × {count} gt",
                         *compare(ours, theirs, device, repeats)))
    return rows


def bench_proposals(device, repeats: int, cfg: Config, feature_size=(38, 63), training: bool = False) -> list[dict]:
    """Decode + clip + min size + top-N + NMS + top-N for one 600×1000 image, test-time (or training) counts."""
    anchors = AnchorGenerator(cfg.anchor_base_size, cfg.anchor_ratios, cfg.anchor_scales)(feature_size, device)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, len(anchors), generator=g).to(device)
    deltas = (0.1 * torch.randn(1, len(anchors), 4, generator=g)).to(device)
    sizes = torch.tensor([[600, 1000]], device=device)
    pre, post = ((cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train) if training
                 else (cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test))

    def ours():
        return generate_proposals(anchors, logits, deltas, sizes, pre, post, cfg.rpn_nms_thresh, cfg.rpn_min_size)

    tv_rpn = torchvision.models.detection.rpn.RegionProposalNetwork(
        TVAnchorGenerator(), TVRPNHead(8, 9), 0.7, 0.3, 256, 0.5,
        dict(training=pre, testing=pre), dict(training=post, testing=post), cfg.rpn_nms_thresh).eval()
    tv_rpn.min_size = cfg.rpn_min_size
    coder = tv_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))

    @torch.no_grad()
    def theirs():
        boxes = coder.decode(deltas[0], [anchors]).view(1, -1, 4)
        return tv_rpn.filter_proposals(boxes, logits.reshape(-1, 1), [(600, 1000)], [len(anchors)])

    return [_row(f"proposal stage, {len(anchors)} anchors, top {pre} → NMS → {post}",
                 *compare(ours, theirs, device, repeats))]


def bench_roi_pool(device, repeats: int, counts=(128, 300)) -> list[dict]:
    features = torch.randn(1, 512, 38, 63, generator=torch.Generator().manual_seed(3)).to(device)
    rows = []
    g = torch.Generator().manual_seed(4)
    for count in counts:
        rois = torch.cat([torch.zeros(count, 1, device=device), random_boxes(count, 600, g, device)], dim=1)
        ours_t, tv = compare(lambda: pool_rois(features, rois, 7, 1 / 16, "max"),
                             lambda: torchvision.ops.roi_pool(features, rois, 7, 1 / 16), device, repeats)
        rows.append(_row(f"RoI max pooling (fast path), {count} RoIs", ours_t, tv))
        if count <= 128:
            rows.append(_row(f"RoI max pooling (readable), {count} RoIs", median_time(
                lambda: roi_pool_readable(features[:, :64], rois, 7, 1 / 16), device, max(1, repeats // 2)), tv,
                note="64 of 512 channels (memory)"))
    return rows


# ---------------------------------------------------------------------------------------------
# Whole detectors
# ---------------------------------------------------------------------------------------------
class _RoIPoolLevel(nn.Module):
    """torchvision's RoIHeads expects a pooler over a dict of feature maps: one level, our pooling op."""

    def __init__(self, output_size: int, spatial_scale: float, mode: str = "max"):
        super().__init__()
        self.output_size, self.spatial_scale, self.mode = output_size, spatial_scale, mode

    def forward(self, features: OrderedDict, proposals: list, image_shapes: list) -> torch.Tensor:
        return pool_rois(features["0"], rois_with_batch_index(proposals), self.output_size, self.spatial_scale,
                         self.mode)


def torchvision_twin(ours: FasterRCNN) -> nn.Module:
    """A `torchvision.models.detection.FasterRCNN` with our model's configuration and (copied) weights."""
    cfg = ours.cfg
    sizes = tuple(cfg.anchor_base_size * s for s in cfg.anchor_scales)
    tv = TVFasterRCNN(
        copy.deepcopy(ours.backbone), num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
        rpn_anchor_generator=TVAnchorGenerator((sizes,), (tuple(cfg.anchor_ratios),)),
        rpn_head=TVRPNHead(ours.backbone.out_channels, cfg.num_anchors),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_fg_iou_thresh=cfg.rpn_fg_iou, rpn_bg_iou_thresh=cfg.rpn_bg_iou,
        rpn_batch_size_per_image=cfg.rpn_batch_size, rpn_positive_fraction=cfg.rpn_positive_fraction,
        box_head=copy.deepcopy(ours.roi_heads.box_head),
        box_predictor=TVPredictor(ours.roi_heads.box_head.out_features, cfg.num_classes),
        box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.det_nms_thresh,
        box_detections_per_img=cfg.detections_per_img, box_fg_iou_thresh=cfg.roi_fg_iou,
        box_bg_iou_thresh=cfg.roi_bg_iou_high, box_batch_size_per_image=cfg.roi_batch_size,
        box_positive_fraction=cfg.roi_positive_fraction,
        bbox_reg_weights=tuple(1.0 / s for s in cfg.box_coder_std), size_divisible=cfg.size_divisible)
    # torchvision's constructor only accepts its multi-level RoIAlign pooler; swap in the same
    # single-level op as ours (RoI max pooling or RoIAlign, as configured) afterwards.
    tv.roi_heads.box_roi_pool = _RoIPoolLevel(cfg.roi_output_size, 1.0 / ours.backbone.stride, cfg.roi_pool)
    # Same weights where the architectures match: backbone and box head are copies; copy the RPN
    # head and the predictor too (ours has no background box deltas).
    tv.rpn.head.conv[0][0].load_state_dict(ours.rpn.head.conv.state_dict())
    if ours.rpn.head.scores_per_anchor == 1:     # torchvision has no 2k-softmax head: copy k sigmoid scores only
        tv.rpn.head.cls_logits.load_state_dict(ours.rpn.head.cls.state_dict())
    tv.rpn.head.bbox_pred.load_state_dict(ours.rpn.head.reg.state_dict())
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.load_state_dict(ours.roi_heads.predictor.cls_score.state_dict())
        tv.roi_heads.box_predictor.bbox_pred.weight.zero_()
        tv.roi_heads.box_predictor.bbox_pred.bias.zero_()
        tv.roi_heads.box_predictor.bbox_pred.weight[4:] = ours.roi_heads.predictor.bbox_pred.weight
        tv.roi_heads.box_predictor.bbox_pred.bias[4:] = ours.roi_heads.predictor.bbox_pred.bias
    return tv


def synthetic_batch(height: int, width: int, num_classes: int, device, n_images: int = 1):
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, height, width, generator=g).to(device) for _ in range(n_images)]
    targets = []
    for _ in range(n_images):
        boxes = random_boxes(4, min(height, width), g, device)
        targets.append({"boxes": boxes, "labels": torch.randint(1, num_classes, (4,), generator=g).to(device)})
    return images, targets


def bench_detectors(device, repeats: int, preset: str, image_size: tuple[int, int]) -> list[dict]:
    cfg = get_config(preset, rpn_cls_loss="sigmoid")
    torch.manual_seed(0)
    ours = FasterRCNN(cfg).to(device)
    theirs = torchvision_twin(ours).to(device)
    images, targets = synthetic_batch(*image_size, cfg.num_classes, device, cfg.images_per_batch)
    rows = []
    for name, model in (("ours", ours), ("torchvision", theirs)):
        model.train()
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    opt_tv = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)

    def step(model, opt):
        def run():
            losses = model(images, targets)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
        return run

    t_ours, t_tv = compare(step(ours, opt_ours), step(theirs, opt_tv), device, repeats)
    rows.append(_row(f"training step, {preset} preset ({cfg.backbone}, {cfg.images_per_batch}×{image_size[0]}×{image_size[1]})",
                     t_ours, t_tv, kind="model"))
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        t_ours, t_tv = compare(lambda: ours(images[:1]), lambda: theirs(images[:1]), device, repeats)
    rows.append(_row(f"inference, {preset} preset ({cfg.backbone}, 1×{image_size[0]}×{image_size[1]})",
                     t_ours, t_tv, kind="model"))
    return rows


def _row(name: str, ours: float, theirs: float, kind: str = "component", note: str = "") -> dict:
    return {"name": name, "kind": kind, "ours_ms": round(ours * 1000, 3), "torchvision_ms": round(theirs * 1000, 3),
            "ratio": round(ours / theirs, 3), "note": note}


def run_benchmarks(device: str = "cpu", repeats: int = 5, presets=("book", "paper"), tiny: bool = False) -> dict:
    """All benchmarks; `tiny=True` shrinks every size (for tests: it checks that the code runs, not speed)."""
    dev = torch.device(device)
    rows = []
    if tiny:
        rows += bench_nms(dev, 1, sizes=(200,))
        rows += bench_labeling(dev, 1, gt_counts=(3,))
        rows += bench_roi_pool(dev, 1, counts=(8,))
        rows += bench_detectors(dev, 1, "book", (128, 160))
        return {"environment": environment(dev), "rows": rows}
    rows += bench_nms(dev, repeats)
    rows += bench_labeling(dev, repeats)
    rows += bench_proposals(dev, repeats, Config.paper())
    rows += bench_proposals(dev, repeats, Config.paper(), training=True)
    rows += bench_roi_pool(dev, repeats)
    sizes = {"book": (256, 320), "paper": (600, 1000)}
    for preset in presets:
        rows += bench_detectors(dev, repeats if preset == "book" else max(1, repeats // 2 + 1), preset, sizes[preset])
    return {"environment": environment(dev), "rows": rows}


def format_table(result: dict) -> str:
    """A benchmark result (as written by this module) as a plain-text table, its environment first."""
    env = result["environment"]
    lines = [f"device {env['device']}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, torch {env['torch']}, "
             f"torchvision {env['torchvision']}, {env['threads']} threads, {env['date']}",
             f"{'benchmark':<78} {'ours ms':>10} {'tv ms':>10} {'ours/tv':>8}"]
    for row in result["rows"]:
        lines.append(f"{row['name']:<78} {row['ours_ms']:>10.2f} {row['torchvision_ms']:>10.2f} {row['ratio']:>8.2f}"
                     + (f"  ({row['note']})" if row["note"] else ""))
    return "\n".join(lines)


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("bench", formatter_class=formatter_class, help="benchmark against torchvision",
                              description=__doc__)
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda'")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--presets", nargs="+", default=["book", "paper"], choices=["book", "paper"],
                   help="presets for the whole-detector comparison")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench.json"), help="JSON output file")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.commands import pick_device
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmarks(str(pick_device(args.device)), args.repeats, tuple(args.presets), args.tiny)
    print(format_table(result))
    write_json(result, args.out, indent=2)
    print(f"wrote {args.out}")
    return 0
