"""`python -m fasterrcnn_edu capstone`: the "Build your own Faster R-CNN" chapter's training runs.

    python -m fasterrcnn_edu capstone --seeds 0 1 2 --out data/experiments/capstone.json

One short training schedule (`SETTINGS`: approximate joint training, book preset with 1000 boxes
into the training NMS instead of 2000 (ours, for the reader's NMS), from the shipped backbone weights,
on the first trainval images; evaluated on the first test images) run

- with the package's own pieces, once per seed: the spread a correct set of pieces must fall in;
- with one deliberately broken piece at a time (`BROKEN`), seed 0: what each mistake does to the
  losses, the proposals, the detections and the mAP.

`run_pieces` is the one code path: the chapter calls it with the book's solutions, this command
with the package's pieces and the broken ones. The broken pieces have the signatures of
`fasterrcnn_edu.exercises.check` and are built on the package's own functions, each changed in
one place; the right answers are in the book, not here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Subset

from fasterrcnn_edu.boxes import box_area, box_iou, decode
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.losses import rpn_losses

BACKBONE = "data/backbone_small.pt"
# "pre_nms_top_n_train": ours, the book preset's 2000 halved for this chapter only: the reader's greedy
# NMS builds an N × N IoU matrix every step, and at N = 2000 it was 37 % of the chapter's training cell.
SETTINGS = {"mode": "joint", "iterations": 300, "lr": 0.01, "lr_step": 240, "warmup_iterations": 75,
            "pre_nms_top_n_train": 1000, "train_images": 400, "test_images": 100, "example_images": [0, 1, 2],
            "top_proposals": 300}


# ---------------------------------------------------------------------------------------------
# Broken pieces: the package's, each changed in one place (signatures of `exercises.check`)
# ---------------------------------------------------------------------------------------------
def iou_without_union(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """The intersection's area, never divided by the union: (N, M) numbers in pixels², not in [0, 1]."""
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :]
    iou = box_iou(boxes1, boxes2)
    return iou * union / (1 + iou)             # inter = IoU · (a1 + a2) / (1 + IoU)


def decode_wrong_centre(anchors: Tensor, deltas: Tensor) -> Tensor:
    """Eq. 2 inverted from the anchor's top-left corner instead of its centre: every box lands
    half an anchor up and to the left of where it belongs."""
    half = (anchors[:, 2:] - anchors[:, :2]) / 2
    return decode(anchors, deltas) - torch.cat([half, half], dim=1)


def nms_never_suppresses(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Every box kept, best first: the sort without the suppression."""
    return torch.sort(scores, descending=True, stable=True).indices


def rpn_loss_without_n_reg(logits, deltas, target_deltas, labels, num_locations, lam, beta):
    """Eq. 1 with the box term summed instead of divided by N_reg (the number of anchor locations)."""
    losses = rpn_losses(logits[None], deltas[None], target_deltas[None], (labels == 1)[None], (labels == 0)[None],
                        1, lam, "locations", beta)
    return losses["loss_objectness"], losses["loss_rpn_box_reg"]


BROKEN: dict[str, tuple[str, Callable, str]] = {
    "iou_without_union": ("iou", iou_without_union, "IoU without the union"),
    "decode_wrong_centre": ("decode", decode_wrong_centre, "decode with the wrong centre"),
    "nms_never_suppresses": ("nms", nms_never_suppresses, "NMS that never suppresses"),
    "loss_without_n_reg": ("rpn_loss", rpn_loss_without_n_reg, "the loss without N_reg normalisation"),
}


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def capstone_config(seed: int = 0, settings: dict = SETTINGS, root: Path = Path(".")) -> Config:
    """The book preset with the capstone's short schedule and pre-NMS count, from the shipped backbone weights."""
    n = settings["iterations"]
    return Config.book(joint=StageSchedule(n, settings["lr"], settings["lr_step"]),
                       warmup_iterations=settings["warmup_iterations"], seed=seed,
                       rpn_pre_nms_top_n_train=settings["pre_nms_top_n_train"],
                       backbone_weights=str(Path(root) / BACKBONE))


def capstone_data(root: Path = Path("."), settings: dict = SETTINGS):
    """(train subset, test subset, class names): the first images of shapes/trainval and shapes/test."""
    from fasterrcnn_edu.data import VOCDataset
    trainval = VOCDataset(Path(root) / "data" / "shapes", "trainval")
    test = VOCDataset(Path(root) / "data" / "shapes", "test", classes=trainval.classes)
    return (Subset(trainval, range(settings["train_images"])), Subset(test, range(settings["test_images"])),
            trainval.classes)


def _examples(detections: list[dict], proposals: list[Tensor], indices: list[int], top: int = 50) -> list[dict]:
    """What the chapter's figures draw for a few test images: the top proposals and the detections."""
    return [{"image": i, "proposals": proposals[i][:top].tolist(),
             "boxes": detections[i]["boxes"].tolist(), "labels": detections[i]["labels"].tolist(),
             "scores": detections[i]["scores"].tolist()} for i in indices]


def run_pieces(pieces: dict[str, Callable], seed: int = 0, settings: dict = SETTINGS, root: Path = Path("."),
               device: str = "cpu") -> dict:
    """Train with `pieces` (names and signatures of `exercises.check`) in the detector, predict the test
    subset with them, and measure with the package's evaluation. Returns a JSON-ready summary."""
    from fasterrcnn_edu.evaluation import evaluate_voc, recall_vs_iou
    from fasterrcnn_edu.exercises import use
    from fasterrcnn_edu.inference import predict_dataset, predict_proposals
    from fasterrcnn_edu.training import NonFiniteLossError, train

    train_set, test_set, classes = capstone_data(root, settings)
    cfg = capstone_config(seed, settings, root).replace(num_classes=len(classes) + 1)
    start = time.perf_counter()
    summary: dict = {"seed": seed, "pieces": sorted(pieces)}
    with use(**pieces):
        try:
            result = train(train_set, cfg, settings["mode"], device=device, progress=False, classes=classes)
        except NonFiniteLossError as error:
            summary.update(diverged=str(error), voc07_map=0.0, seconds=time.perf_counter() - start)
            return summary
        train_seconds = time.perf_counter() - start
        model = result.model.eval()
        detections, targets = predict_dataset(model, test_set, device)
        proposals = predict_proposals(model, test_set, settings["top_proposals"], device)
    voc = evaluate_voc(detections, targets, len(classes) + 1, class_names=classes)
    gt = [t["boxes"] for t in targets]
    thresholds, recall = recall_vs_iou(proposals, gt, settings["top_proposals"], (0.5, 0.7))
    last = result.log[-1]
    summary.update(
        voc07_map=voc.map, per_class_ap=voc.ap,
        final_losses={k: last[k] for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
                      if k in last},
        proposals_per_image=sum(len(p) for p in proposals) / len(proposals),
        proposal_recall={f"{t:g}": float(r) for t, r in zip(thresholds.tolist(), recall.tolist())},
        detections_per_image=sum(len(d["boxes"]) for d in detections) / len(detections),
        examples=_examples(detections, proposals, settings["example_images"]),
        train_seconds=train_seconds, seconds=time.perf_counter() - start)
    return summary


def run_capstone(seeds: list[int], broken: list[str], root: Path = Path("."), device: str = "cpu",
                 log=print) -> dict:
    """The package's pieces for every seed, then each broken piece (seed of the first), as `capstone.json`."""
    from fasterrcnn_edu.lab.records import environment
    from fasterrcnn_edu.lab.reproduce import _std
    report: dict = {"settings": SETTINGS, "package": {}, "broken": {}}
    for seed in seeds:
        report["package"][str(seed)] = run = run_pieces({}, seed, root=root, device=device)
        log(f"package pieces, seed {seed}: mAP {run['voc07_map']:.4f} ({run['seconds']:.0f} s)")
    maps = [run["voc07_map"] for run in report["package"].values()]
    report["package_summary"] = {"mean": sum(maps) / len(maps), "std": _std(maps), "min": min(maps), "max": max(maps),
                                 "seeds": seeds}
    for name in broken:
        piece, fn, what = BROKEN[name]
        report["broken"][name] = run = {"piece": piece, "what": what, **run_pieces({piece: fn}, seeds[0], root=root,
                                                                                  device=device)}
        log(f"{what}: mAP {run['voc07_map']:.4f} ({run['seconds']:.0f} s){' diverged' if 'diverged' in run else ''}")
    report["environment"] = environment(device)
    return report


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("capstone", formatter_class=formatter_class,
                              help="the build-your-own chapter's runs: the package's pieces per seed, each broken piece",
                              description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run with the package's pieces per seed")
    p.add_argument("--broken", nargs="*", default=list(BROKEN), choices=list(BROKEN),
                   help="the broken pieces to train with (seed: the first of --seeds)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("runs/capstone.json"), help="JSON output file")
    p.set_defaults(func=capstone_command)


def capstone_command(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.fileio import write_json
    from fasterrcnn_edu.lab.records import command_line, round_floats
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run_capstone(args.seeds, args.broken)
    report["command"] = command_line()
    report["environment"]["seconds"] = time.perf_counter() - start
    write_json(round_floats(report), args.out)
    print(f"wrote {args.out}", file=sys.stdout)
    return 0
