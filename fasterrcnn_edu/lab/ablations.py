"""Experiments of the book's chapters 6-8: what trains when, test-time ablations, anchors, one stage.

Everything here drives the package's own pieces (`training`, `proposals`, `roi_heads`,
`evaluation`, `inference`); nothing re-implements the detector.

* `stage_table` / `plot_training_stages` (chapter 6): for each stage of a training mode, which
  parts of which network run, which of them train, and how many parameters move — measured by
  running each stage's loss once with forward hooks, not read off a hand-written list.
* `ProposalVariant`, `variant_proposals`, `detect_variants`, `evaluate_variants` (chapter 8):
  the paper's test-time ablations of Table 2 (arXiv v3 / TPAMI numbering) — RPN proposals with
  NMS and different top-N, top-ranked proposals *without* NMS, "no cls" (random ranking of the
  regressed anchors) and "no reg" (the anchors themselves, ranked by cls) — and the one-stage
  detector of Table 10: the Fast R-CNN head applied to *dense sliding windows* (every anchor,
  clipped to the image) instead of proposals. All variants reuse one backbone pass per batch.
* `recall_experiment` (chapter 7): recall vs IoU of the top-N RPN proposals and of the
  non-learned `lab.baselines.sliding_window_proposals` baseline (the paper's Figure 4).
* `anchor_variant`, `finetune_steps_3_4`, `anchor_experiment` (chapter 8): other anchor scales and
  ratios (the paper's Table 8) on a CPU budget — a new RPN head for each setting, trained with
  the Fast R-CNN head on the reference model's frozen conv layers (steps 3-4 of the 4-step
  scheme), evaluated by mAP and proposal recall.

Command line (writes the JSON files under data/experiments/ that chapters 7 and 8 read):

    python -m fasterrcnn_edu ablation recall     --model M --data D --out recall_iou.json
    python -m fasterrcnn_edu ablation test-time  --model M --data D --out test_time_ablations.json
    python -m fasterrcnn_edu ablation anchors    --model M --data D --out anchors.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fasterrcnn_edu.commands import DEFAULT_DATA, DEFAULT_MODEL
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.evaluation import average_recall, evaluate_voc, recall_vs_iou
from fasterrcnn_edu.lab.baselines import sliding_window_proposals
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.lab.records import command_line, file_sha256, round_floats
from fasterrcnn_edu.inference import predict_dataset, predict_proposals
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.proposals import generate_proposals
from fasterrcnn_edu.training import (STEPS, StageState, build_networks, run_stage, step3_rpn_frozen,
                                     step4_detector_frozen)

__all__ = [
    "PARTS", "PART_NAMES", "part_parameters", "stage_table", "plot_training_stages", "same_weights",
    "ProposalVariant", "DEFAULT_VARIANTS", "variant_proposals", "proposals_for_image", "detect_variants",
    "evaluate_variants", "PAPER_TABLE2", "plot_against_paper",
    "recall_experiment", "ANCHOR_SETTINGS", "anchors_at_scale", "anchor_variant", "finetune_steps_3_4", "anchor_experiment",
    "read_log", "file_sha256",
]

# ---------------------------------------------------------------------------------------------
# Chapter 6: which weights train in which stage
# ---------------------------------------------------------------------------------------------
PARTS = ("backbone", "rpn", "roi_heads")
#: Display names of the model parts in the training-stage figure.
PART_NAMES = {"backbone": "conv layers", "rpn": "RPN head", "roi_heads": "Fast R-CNN head"}


def _count(params) -> int:
    return int(sum(p.numel() for p in params))


def part_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameters of each part of a `FasterRCNN` (`PARTS`), counted without running it:
    {part: {"total", "frozen" (requires_grad False, e.g. VGG-16's first four conv layers)}}."""
    return {part: {"total": _count(getattr(model, part).parameters()),
                   "frozen": _count(p for p in getattr(model, part).parameters() if not p.requires_grad)}
            for part in PARTS}


def stage_table(mode: str, cfg: Config, images: list[Tensor], targets: list[dict]) -> list[dict]:
    """Run every stage of training `mode` once (forward + backward, no optimiser step) and report it.

    images: a small batch, (3, H, W) floats in [0, 1]; targets: dicts with boxes (G, 4), labels (G,).
    Returns one row per stage, ``{"stage", "network", "losses", "parts": {"rpn.backbone": {...}, ...}}``,
    where each part (network name + "." + one of `PARTS`) has:

    - ``used``: its forward ran in this stage's loss (measured with forward hooks);
    - ``trainable``: number of parameters the stage's optimiser updates;
    - ``frozen``: number of parameters that ran but do not move;
    - ``total``: all its parameters.

    Stages are built in order by the training step functions (`training.STEPS`), exactly as
    `training.train` builds them: step 3 freezes the shared conv layers and starts a fresh RPN head
    (or copies step 1's with `alt_reinit_heads=False`), steps 2 and 4 train on stored proposals.
    """
    nets = build_networks(mode, cfg)
    for net in nets.values():
        net.train()
    rows = []
    for make in STEPS[mode]:
        stage = make(nets, cfg)                                  # freezes / re-initialises, as `train` does
        trainable_ids = {id(p) for _, p in stage.params}
        used: set[str] = set()
        handles = []
        for net_name, net in nets.items():
            for part in PARTS:
                key = f"{net_name}.{part}"
                handles.append(getattr(net, part).register_forward_hook(
                    lambda module, inputs, output, key=key: used.add(key)))
        try:
            stage_targets = targets
            if stage.proposal_source is not None:
                # Stored proposals, as in training: the proposing network runs (frozen) for this
                # stage's data, once before it rather than at every step.
                stored = stage.proposal_source.proposals_for_images(
                    images, cfg.alt_proposal_pre_nms_top_n or 10 ** 9, cfg.alt_proposal_post_nms_top_n)
                stage.proposal_source.train()
                stage_targets = [dict(t, proposals=p) for t, p in zip(targets, stored)]
            losses = stage.loss(images, stage_targets)
            sum(losses.values()).backward()
        finally:
            for handle in handles:
                handle.remove()
        parts = {}
        for net_name, net in nets.items():
            for part in PARTS:
                key = f"{net_name}.{part}"
                params = list(getattr(net, part).parameters())
                n_train = _count(p for p in params if id(p) in trainable_ids)
                parts[key] = {"used": key in used, "trainable": n_train,
                              "frozen": _count(params) - n_train if key in used else 0,
                              "total": _count(params)}
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        network = next(name for name, net in nets.items() if net is stage.loss.network)
        rows.append({"stage": stage.name, "network": network, "parts": parts,
                     "losses": sorted(losses)})
    return rows


def plot_training_stages(rows: list[dict], ax=None, title: str | None = None):
    """A stage × part grid: green = trains (with its parameter count), blue = runs frozen,
    white = not used. rows: the output of `stage_table`. Returns the Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    keys = [k for k in rows[0]["parts"]]
    keys = [k for k in keys if any(r["parts"][k]["used"] for r in rows)]
    if ax is None:
        # at most ~8 inches wide, so that 8-pt text stays >= 9 CSS px in the book's column
        _, ax = plt.subplots(figsize=(min(1.3 * len(keys) + 1.3, 8.0), 0.75 * len(rows) + 1.1))
    colours = {"train": "#8fd18f", "frozen": "#9cc3e6", "unused": "white"}
    for i, row in enumerate(rows):
        for j, key in enumerate(keys):
            part = row["parts"][key]
            if part["used"] and part["trainable"]:
                state, text = "train", f"trains\n{part['trainable']:,}"
            elif part["used"]:
                state, text = "frozen", "frozen"
            else:
                state, text = "unused", "–"
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=colours[state], edgecolor="0.3", linewidth=0.8))
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8)
    ax.set_xlim(0, len(keys))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks([j + 0.5 for j in range(len(keys))])
    net_label = {"rpn": "RPN net", "shared": "final net"}
    ax.set_xticklabels([f"{net_label.get(k.split('.')[0], k.split('.')[0])}:\n{PART_NAMES[k.split('.')[1]]}"
                        for k in keys], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels([f"step {r['stage']}" if r["stage"][0].isdigit() else r["stage"] for r in rows], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.legend(handles=[Patch(facecolor=colours["train"], edgecolor="0.3", label="trains (parameters)"),
                       Patch(facecolor=colours["frozen"], edgecolor="0.3", label="runs, frozen"),
                       Patch(facecolor="white", edgecolor="0.3", label="not used")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10, pad=28)
    return ax


def same_weights(before: dict[str, Tensor], after: dict[str, Tensor]) -> bool:
    """True if two state dicts hold bit-identical tensors under the same keys."""
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def read_log(path: str | Path) -> list[dict]:
    """A training log written by `training.write_log` (log.jsonl): one dict per logged step."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# Chapter 8: test-time ablations (paper Table 2) and the one-stage detector (Table 10)
# ---------------------------------------------------------------------------------------------
KINDS = ("rpn", "no_nms", "no_cls", "no_reg", "dense")


@dataclass(frozen=True)
class ProposalVariant:
    """How the boxes that enter the Fast R-CNN head are made at test time.

    ``kind`` is one of:

    - ``"rpn"``: the normal pipeline: top ``pre_nms_top_n`` (default: the config's
      ``rpn_pre_nms_top_n_test``) by objectness, NMS (0.7), top ``top_n``;
    - ``"no_nms"``: the top ``top_n`` regressed anchors by objectness, no NMS (the paper's Table 2
      row uses 6000: NMS "does not harm the detection mAP");
    - ``"no_cls"``: the cls output is ignored: ``top_n`` regressed anchors in random order, no NMS
      (the paper "randomly sample[s] N proposals from the unscored regions");
    - ``"no_reg"``: the reg output is ignored: the anchors themselves, ranked by objectness, NMS,
      top ``top_n`` (pre-NMS cap as for ``"rpn"``);
    - ``"dense"``: no RPN at all (one-stage): every anchor clipped to the image is a "proposal"
      (dense sliding windows of the anchors' scales and ratios); ``top_n`` is ignored.
    """

    name: str
    kind: str
    top_n: int = 300
    #: Boxes kept by objectness before NMS (kinds "rpn" and "no_reg"), or None for the
    #: config's ``rpn_pre_nms_top_n_test``. The paper's Table 2 rows are N of a 6000-box
    #: pre-NMS list.
    pre_nms_top_n: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown proposal variant kind {self.kind!r}; choose one of {KINDS}")
        if self.pre_nms_top_n is not None and self.pre_nms_top_n < self.top_n:
            raise ValueError(f"proposal variant {self.name!r}: pre_nms_top_n {self.pre_nms_top_n} "
                             f"is below top_n {self.top_n}")

    def pre_nms_list(self, cfg: Config) -> int | None:
        """How many boxes, best by objectness, enter NMS ("rpn", "no_reg"); None for the kinds without
        NMS, which take their boxes another way."""
        if self.kind not in ("rpn", "no_reg"):
            return None
        return self.pre_nms_top_n or cfg.rpn_pre_nms_top_n_test


#: The paper's pre-NMS list at test time (§3.3; released TEST.RPN_PRE_NMS_TOP_N): Table 2's
#: "RPN N" rows are N of these 6000, whatever the book preset's own cap.
PAPER_PRE_NMS_TEST = 6000

#: The test-time variants of chapters 7-8 (the paper's Table 2 and Table 10), in their printed order.
DEFAULT_VARIANTS = (
    ProposalVariant("RPN 300", "rpn", 300, PAPER_PRE_NMS_TEST),
    ProposalVariant("RPN 100", "rpn", 100, PAPER_PRE_NMS_TEST),
    ProposalVariant("RPN 50", "rpn", 50, PAPER_PRE_NMS_TEST),
    ProposalVariant("RPN 1000", "rpn", 1000, PAPER_PRE_NMS_TEST),
    ProposalVariant("RPN (no NMS) 300", "no_nms", 300),
    ProposalVariant("RPN (no NMS) 1000", "no_nms", 1000),
    # The paper's Table 2 row: the top-ranked 6000 without NMS, to show that NMS does not hurt.
    ProposalVariant("RPN (no NMS) 6000", "no_nms", 6000),
    ProposalVariant("RPN (no cls) 100", "no_cls", 100),
    ProposalVariant("RPN (no cls) 300", "no_cls", 300),
    ProposalVariant("RPN (no cls) 1000", "no_cls", 1000),
    ProposalVariant("RPN (no reg) 300", "no_reg", 300, PAPER_PRE_NMS_TEST),
    ProposalVariant("RPN (no reg) 1000", "no_reg", 1000, PAPER_PRE_NMS_TEST),
    ProposalVariant("one-stage: dense windows", "dense", 0),
)


def variant_proposals(variant: ProposalVariant, cfg: Config, anchors: Tensor, objectness: Tensor,
                      deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                      generator: torch.Generator | None = None) -> list[Tensor]:
    """Boxes per image (P_b, 4), resized-image pixels, for one `ProposalVariant`.

    anchors: (A, 4); objectness: (B, A, 2) or (B, A) RPN logits; deltas: (B, A, 4); image_sizes:
    (B, 2); scales: (B,) resize factors (the minimum box size is `cfg.rpn_min_size` original pixels).
    Every variant goes through `proposals.generate_proposals` (decode, clip, drop small boxes, rank,
    NMS, top-N); the ablations only change its inputs: an NMS threshold of 1.0 suppresses nothing,
    zero deltas leave the anchors as they are, random scores give a random ranking.
    """
    num_anchors = anchors.shape[0]
    batch = deltas.shape[0]
    min_size = cfg.rpn_min_size * scales
    no_nms = 1.0                    # suppress if IoU > 1.0: never
    if variant.kind == "rpn":
        pre, post, thresh = variant.pre_nms_list(cfg), variant.top_n, cfg.rpn_nms_thresh
    elif variant.kind == "no_nms":
        pre, post, thresh = variant.top_n, variant.top_n, no_nms
    elif variant.kind == "no_cls":
        random_scores = torch.rand(batch, num_anchors, generator=generator)
        objectness = random_scores.to(deltas.device)         # (B, A): read as sigmoid logits
        pre, post, thresh = num_anchors, variant.top_n, no_nms
    elif variant.kind == "no_reg":
        deltas = torch.zeros_like(deltas)
        pre, post, thresh = variant.pre_nms_list(cfg), variant.top_n, cfg.rpn_nms_thresh
    else:  # dense: all anchors, in anchor order (equal scores and a stable sort)
        deltas = torch.zeros_like(deltas)
        objectness = torch.zeros(batch, num_anchors, device=deltas.device)
        pre, post, thresh = num_anchors, num_anchors, no_nms
    proposals, _ = generate_proposals(anchors, objectness, deltas, image_sizes, pre, post, thresh, min_size)
    return proposals


@torch.no_grad()
def proposals_for_image(model: FasterRCNN, image: Tensor, variants: Sequence[ProposalVariant],
                        seed: int = 0) -> dict[str, Tensor]:
    """The boxes each variant feeds to the Fast R-CNN head for one image (3, H, W) in [0, 1]:
    name -> (P, 4) in the image's own pixels, in the variant's order (best first, except "no_cls"
    and "dense")."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    batch, _ = model.transform([image])
    features = model.backbone(batch.tensors)
    objectness, deltas = model.rpn.head(features)
    anchors = model.rpn.anchor_generator(features.shape[-2:], features.device)
    out = {}
    for variant in variants:
        boxes = variant_proposals(variant, model.cfg, anchors, objectness, deltas, batch.image_sizes,
                                  batch.scales, generator)
        out[variant.name] = model.transform.postprocess([{"boxes": boxes[0]}], batch)[0]["boxes"].cpu()
    return out


@torch.no_grad()
def detect_variants(model: FasterRCNN, dataset, variants: Sequence[ProposalVariant] = DEFAULT_VARIANTS,
                    device="cpu", batch_size: int = 4, seed: int = 0, progress: bool = False
                    ) -> tuple[dict[str, list[dict]], list[dict], dict[str, float]]:
    """Detections of `model` on every image of `dataset` for each proposal variant.

    The backbone and the RPN head run once per batch; each variant then makes its boxes
    (`variant_proposals`) and runs the model's own Fast R-CNN head (`roi_heads`, with its
    score threshold, per-class NMS and top-100). The "rpn" variant with the model's
    `rpn_post_nms_top_n_test` gives exactly `model(images)`.
    Returns (detections: name -> list of per-image dicts (boxes in original pixels, labels, scores),
    targets, mean number of boxes per image that entered the head: name -> float).
    """
    if not isinstance(model, FasterRCNN):
        raise TypeError("detect_variants needs a FasterRCNN with shared features (not UnsharedFasterRCNN)")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    detections = {v.name: [] for v in variants}
    boxes_in = {v.name: 0 for v in variants}
    targets: list[dict] = []
    starts = range(0, len(dataset), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="ablations")
    for start in starts:
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = [image.to(device) for image, _ in items]
        targets += [target for _, target in items]
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        objectness, deltas = model.rpn.head(features)
        anchors = model.rpn.anchor_generator(features.shape[-2:], features.device)
        for variant in variants:
            proposals = variant_proposals(variant, model.cfg, anchors, objectness, deltas,
                                          batch.image_sizes, batch.scales, generator)
            boxes_in[variant.name] += sum(len(p) for p in proposals)
            dets, _ = model.roi_heads(features, proposals, batch.image_sizes)
            detections[variant.name] += [{k: v.cpu() for k, v in d.items()}
                                         for d in model.transform.postprocess(dets, batch)]
    mean_boxes = {name: n / max(len(targets), 1) for name, n in boxes_in.items()}
    return detections, targets, mean_boxes


def evaluate_variants(model: FasterRCNN, dataset, classes: Sequence[str],
                       variants: Sequence[ProposalVariant] = DEFAULT_VARIANTS, device="cpu",
                       batch_size: int = 4, seed: int = 0, progress: bool = False) -> dict:
    """VOC07 mAP@0.5 of each proposal variant: {name: {"kind", "top_n", "voc07_map", "voc12_map",
    "ap": {class: AP}, "boxes_per_image", "pre_nms_top_n"}} (APs as fractions; pre_nms_top_n: the
    boxes that entered NMS, `ProposalVariant.pre_nms_list`, None for the kinds without NMS)."""
    detections, targets, mean_boxes = detect_variants(model, dataset, variants, device, batch_size, seed, progress)
    results = {}
    for variant in variants:
        voc07 = evaluate_voc(detections[variant.name], targets, len(classes) + 1, use_07_metric=True,
                             class_names=classes)
        voc12 = evaluate_voc(detections[variant.name], targets, len(classes) + 1, use_07_metric=False,
                             class_names=classes)
        results[variant.name] = {"kind": variant.kind, "top_n": variant.top_n, "voc07_map": voc07.map,
                                 "voc12_map": voc12.map, "ap": voc07.ap,
                                 "boxes_per_image": round(mean_boxes[variant.name], 2),
                                 "pre_nms_top_n": variant.pre_nms_list(model.cfg)}
    return results


# The paper's Table 2 (journal / arXiv v3 numbering): ZF, VOC 2007 test, a Fast R-CNN detector trained on
# Selective Search proposals and an unshared RPN; mAP in %. None: the paper has no such row.
#: The rows of the paper's Table 2 that the test-time ablations reproduce.
PAPER_TABLE2 = {
    "RPN 300": 56.8, "RPN 100": 55.1, "RPN 50": None, "RPN 1000": 56.3,
    "RPN (no NMS) 300": None, "RPN (no NMS) 1000": None, "RPN (no NMS) 6000": 55.2,
    "RPN (no cls) 100": 44.6, "RPN (no cls) 300": 51.4, "RPN (no cls) 1000": 55.8,
    "RPN (no reg) 300": 52.1, "RPN (no reg) 1000": 51.3,
}


def plot_against_paper(results: dict, paper: dict = PAPER_TABLE2, reference: str = "RPN 300", ax=None):
    """Each test-time variant's mAP change against `reference`, in points, ours beside the paper's.

    The absolute numbers cannot be compared (another network, data set and detector), the direction and
    rough size of each change can. results: name -> {"voc07_map": fraction}, as in
    test_time_ablations.json; paper: name -> mAP in % or None. Only rows both have are drawn.
    Returns the Axes."""
    import matplotlib.pyplot as plt

    names = [n for n, value in paper.items() if value is not None and n in results and n != reference]
    ours = [100 * (results[n]["voc07_map"] - results[reference]["voc07_map"]) for n in names]
    theirs = [paper[n] - paper[reference] for n in names]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), layout="constrained")
    rows = np.arange(len(names))
    ax.barh(rows - 0.2, ours, height=0.4, color="tab:blue", label="ours (shapes, reference model)")
    ax.barh(rows + 0.2, theirs, height=0.4, color="0.6", label="paper (ZF, VOC 2007, Table 2)")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(rows)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"mAP change against {reference} (points)")
    ax.legend(fontsize=8, loc="lower left")
    return ax


# ---------------------------------------------------------------------------------------------
# Chapter 7: recall vs IoU (paper Figure 4)
# ---------------------------------------------------------------------------------------------
def recall_experiment(model: nn.Module, dataset, counts: Sequence[int] = (300, 1000, 2000), device="cpu",
                      batch_size: int = 4, sliding_window: dict | None = None, progress: bool = False,
                      pre_nms_top_n: int = PAPER_PRE_NMS_TEST) -> dict:
    """Recall vs IoU of the top-N RPN proposals and of `sliding_window_proposals`, for each N.

    Returns {"counts": [...], "methods": {"RPN": {str(N): {"iou": [...], "recall": [...],
    "average_recall": AR}}, "sliding windows": {...}}, "proposals_per_image": {method: {str(N):
    mean number of boxes per image among the top N}}, "ground_truth": number of non-difficult
    objects, "pre_nms_top_n"}. As in the paper's Figure 4 (released TEST.RPN_PRE_NMS_TOP_N), the
    `pre_nms_top_n` boxes best by objectness enter NMS and the top N of what NMS keeps are the
    "RPN N" proposals, the same list for every N (Table 2's rows in chapter 8 take the same 6000).
    Difficult objects are left out, as in the VOC metric.
    """
    top = max(counts)
    rpn = predict_proposals(model, dataset, top, device, batch_size, pre_nms_top_n=pre_nms_top_n)
    indices = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="sliding windows")
    sliding, gt, difficult = [], [], []
    for i in indices:
        image, target = dataset[i]
        sliding.append(sliding_window_proposals(image, max_proposals=top, **(sliding_window or {})))
        gt.append(target["boxes"])
        difficult.append(target.get("difficult", torch.zeros(len(target["boxes"]), dtype=torch.bool)))
    # Boxes per image actually ranked for each N (NMS can leave fewer than N).
    out = {"counts": list(counts), "methods": {},
           "proposals_per_image": {name: {str(n): float(np.mean([min(len(p), n) for p in boxes])) for n in counts}
                                   for name, boxes in (("RPN", rpn), ("sliding windows", sliding))},
           "ground_truth": int(sum(int((~d.bool()).sum()) for d in difficult)), "pre_nms_top_n": pre_nms_top_n}
    for name, proposals in (("RPN", rpn), ("sliding windows", sliding)):
        out["methods"][name] = {}
        for n in counts:
            thresholds, recall = recall_vs_iou(proposals, gt, n, difficult=difficult)
            out["methods"][name][str(n)] = {"iou": thresholds.tolist(), "recall": recall.tolist(),
                                            "average_recall": average_recall(thresholds, recall)}
    return out


# ---------------------------------------------------------------------------------------------
# Chapter 8: anchor settings (paper Table 8), new RPN heads on frozen conv layers
# ---------------------------------------------------------------------------------------------
# Anchor settings at the shapes images' native scale (the book preset, 256-pixel shorter side): the
# default 32², 64², 128² are scales 2, 4, 8 of the 16-pixel base, the paper's 128², 256², 512² at
# s = 600 divided by 4. `anchors_at_scale` converts them for a model that resizes the images (the
# reference model works at 512 pixels: the same anchors relative to the objects). Ratios are h / w.
#: Anchor settings of the anchor experiment, by name, each with ``anchor_scales`` and ``anchor_ratios``.
ANCHOR_SETTINGS = {
    "1 scale (32²), 1 ratio": {"anchor_scales": (2,), "anchor_ratios": (1.0,)},
    "1 scale (64²), 1 ratio": {"anchor_scales": (4,), "anchor_ratios": (1.0,)},
    "1 scale (32²), 3 ratios": {"anchor_scales": (2,), "anchor_ratios": (0.5, 1.0, 2.0)},
    "1 scale (64²), 3 ratios": {"anchor_scales": (4,), "anchor_ratios": (0.5, 1.0, 2.0)},
    "3 scales, 1 ratio": {"anchor_scales": (2, 4, 8), "anchor_ratios": (1.0,)},
    "3 scales, 3 ratios": {"anchor_scales": (2, 4, 8), "anchor_ratios": (0.5, 1.0, 2.0)},
}


def anchors_at_scale(setting: dict, cfg: Config) -> dict:
    """The Config overrides of an `ANCHOR_SETTINGS` entry for a model whose images are resized to
    `cfg.min_size`: the scales grow with the image, so the anchors cover the same objects."""
    factor = cfg.min_size / Config.book().min_size
    return {"anchor_scales": tuple(scale * factor for scale in setting["anchor_scales"]),
            "anchor_ratios": tuple(setting["anchor_ratios"])}


def scaled_config(cfg: Config, iterations_scale: float) -> Config:
    """`cfg` with every stage's iterations and lr step multiplied by `iterations_scale`
    (what `python -m fasterrcnn_edu train --iterations-scale` does)."""
    return cfg.scaled(iterations_scale)


def anchor_variant(reference: FasterRCNN, **overrides) -> FasterRCNN:
    """A copy of `reference` with other anchors: same (frozen) conv layers and Fast R-CNN head,
    a *new* RPN head (randomly initialised, paper §3.1.3) sized for the new k anchors per position.

    overrides: Config fields, e.g. anchor_scales=(4,), anchor_ratios=(1.0,).
    """
    import dataclasses
    # The weights come from `reference`; a backbone weights file named in its config is not needed.
    cfg = dataclasses.replace(reference.cfg, **{"backbone_weights": None, **overrides})
    torch.manual_seed(cfg.seed)
    model = FasterRCNN(cfg)
    model.backbone.load_state_dict(reference.backbone.state_dict())
    model.roi_heads.load_state_dict(reference.roi_heads.state_dict())
    model.backbone.requires_grad_(False)
    return model


def finetune_steps_3_4(model: FasterRCNN, dataset, device="cpu", progress: bool = False,
                       log_every: int = 20) -> tuple[list[dict], float]:
    """Steps 3 and 4 of the 4-step scheme on `model`'s frozen conv layers: train the RPN head
    (`cfg.stage_rpn2`), then the Fast R-CNN head on the new RPN's proposals (`cfg.stage_det2`),
    with the step functions and the loop of `training.train` (`step3_rpn_frozen`,
    `step4_detector_frozen`, `run_stage`). Returns (log records like `training.train`'s, seconds)."""
    cfg = model.cfg
    device = torch.device(device)
    model.to(device).train()
    model.set_generator(torch.Generator(device=device).manual_seed(cfg.seed))
    nets = {"shared": model}
    log, t0 = [], time.perf_counter()
    for stage_index, make in ((2, step3_rpn_frozen), (3, step4_detector_frozen)):
        stage = make(nets, cfg)
        log = run_stage(stage, dataset, cfg, device, state=StageState(stage_index, log=log),
                           log_every=log_every, progress=progress)
    model.eval()
    return log, time.perf_counter() - t0


def anchor_experiment(reference: FasterRCNN, train_set, test_set, classes: Sequence[str],
                      settings: dict | None = None, iterations_scale: float = 1.0, device="cpu",
                      out: str | Path | None = None, progress: bool = False) -> dict:
    """The paper's Table 8 question on a CPU budget: for each anchor setting, give the reference
    model a new RPN head for those anchors (`anchor_variant`), train it and then the Fast R-CNN
    head on its proposals with the conv layers frozen (`finetune_steps_3_4`, the reference
    schedule's steps 3-4 times `iterations_scale`), and evaluate on `test_set`: VOC07 mAP@0.5 and
    recall of the top-300 proposals at IoU 0.5 / 0.7.

    The conv layers are the reference model's (trained with its own anchors, `model.cfg`) for
    every setting; the paper retrained everything. settings: name -> Config overrides (default
    `ANCHOR_SETTINGS`). If `out` is given, the JSON is rewritten after every setting.
    Returns {"iterations_scale", "results": {name: {"anchor_scales", "anchor_ratios",
    "anchor_sides", "k", "voc07_map", "ap", "recall_300_at_0.5", "recall_300_at_0.7",
    "average_recall_300", "train_seconds", "iterations": {stage: n}, "final_losses"}}}.
    """
    settings = ANCHOR_SETTINGS if settings is None else settings
    report = {"iterations_scale": iterations_scale, "results": {}}
    for name, overrides in settings.items():
        scaled = scaled_config(reference.cfg, iterations_scale)
        model = anchor_variant(reference, **anchors_at_scale(overrides, reference.cfg),
                               stage_rpn2=scaled.stage_rpn2, stage_det2=scaled.stage_det2)
        log, seconds = finetune_steps_3_4(model, train_set, device, progress)
        cfg = model.cfg
        detections, targets = predict_dataset(model, test_set, device)
        voc07 = evaluate_voc(detections, targets, len(classes) + 1, use_07_metric=True, class_names=classes)
        proposals = predict_proposals(model, test_set, 300, device)
        gts = [t["boxes"] for t in targets]
        difficult = [t.get("difficult", torch.zeros(len(t["boxes"]), dtype=torch.bool)) for t in targets]
        thresholds, recall = recall_vs_iou(proposals, gts, 300, difficult=difficult)
        at = {round(float(t), 2): float(r) for t, r in zip(thresholds, recall)}
        report["results"][name] = {
            "anchor_scales": list(cfg.anchor_scales), "anchor_ratios": list(cfg.anchor_ratios),
            "anchor_sides": [cfg.anchor_base_size * s for s in overrides["anchor_scales"]],   # native pixels
            "image_scale": cfg.min_size / Config.book().min_size, "k": cfg.num_anchors,
            "voc07_map": voc07.map, "ap": voc07.ap,
            "recall_300_at_0.5": at[0.5], "recall_300_at_0.7": at[0.7],
            "average_recall_300": average_recall(thresholds, recall),
            "train_seconds": round(seconds, 1),
            "iterations": {"3-rpn-frozen": cfg.stage_rpn2.iterations, "4-detector-frozen": cfg.stage_det2.iterations},
            "final_losses": {stage: {k: v for k, v in [r for r in log if r["stage"] == stage][-1].items()
                                     if k.startswith("loss")} for stage in ("3-rpn-frozen", "4-detector-frozen")},
        }
        if out is not None:
            write_json(report, out)
    return report


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def register(subparsers, formatter_class) -> None:
    parser = subparsers.add_parser("ablation", formatter_class=formatter_class,
                                   help="the book's ablations of a trained detector (JSON)", description=__doc__)
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name in ("recall", "test-time", "anchors"):
        p = sub.add_parser(name, formatter_class=formatter_class, help=f"the {name} ablation")
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VOC-layout folder")
        p.add_argument("--split", default="test", help="evaluation split")
        p.add_argument("--out", type=Path, required=True, help="JSON file to write")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--limit", type=int, default=0, help="use only the first N evaluation images (0: all)")
        p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
        if name == "anchors":
            p.add_argument("--train-split", default="trainval")
            p.add_argument("--iterations-scale", type=float, default=1.0,
                           help="multiply the reference schedule's steps 3-4 iterations by this")
            p.add_argument("--only", nargs="*", default=None, help="names of ANCHOR_SETTINGS to run")
        p.set_defaults(func=ablation_command)


def ablation_command(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.utils.data import Subset

    from fasterrcnn_edu.data import VOCDataset
    from fasterrcnn_edu.checkpoint import load_model

    t0 = time.perf_counter()
    model, classes = load_model(args.model)
    data = VOCDataset(args.data, args.split, classes=classes)
    data = Subset(data, range(min(args.limit, len(data)))) if args.limit else data
    if args.experiment == "anchors":
        train_set = VOCDataset(args.data, args.train_split, classes=classes)
        settings = ANCHOR_SETTINGS if not args.only else {k: ANCHOR_SETTINGS[k] for k in args.only}
        report = anchor_experiment(model, train_set, data, classes, settings, args.iterations_scale,
                                   out=args.out, progress=True)
    elif args.experiment == "recall":
        report = recall_experiment(model, data, progress=True)
    else:
        report = {"results": evaluate_variants(model, data, classes, progress=True)}
    report.update({"model": str(args.model), "model_sha256": file_sha256(args.model)})
    report.update({"data": str(args.data), "split": args.split, "images": len(data),
                   "command": command_line(),
                   "seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()})
    write_json(round_floats(report), args.out)
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0

