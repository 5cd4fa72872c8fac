"""Command-line sub-commands of the detector: `train`, `eval`, `detect`.

    python -m fasterrcnn_edu train --data data/shapes --preset book --mode alternating --out runs/book
    python -m fasterrcnn_edu eval  --model data/reference_model.pt --data data/shapes --split test --out runs/eval
    python -m fasterrcnn_edu detect --model data/reference_model.pt IMAGE [IMAGE ...] --out runs/detect
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fasterrcnn_edu.config import PRESETS

DEFAULT_MODEL = "data/reference_model.pt"
DEFAULT_DATA = "data/shapes"


def save_figure(ax, path: Path) -> None:
    """Write the figure of `ax` as a PNG and close it."""
    import matplotlib.pyplot as plt
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)


def open_dataset(root: Path, split: str, classes: list[str] | None = None):
    """`VOCDataset(root, split)`, or None after printing why not (missing folder or split, bad file) on stderr."""
    from fasterrcnn_edu.data import DataError, VOCDataset
    try:
        return VOCDataset(root, split, classes=classes)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def pick_device(name: str) -> torch.device:
    """"auto" means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("train", formatter_class=formatter_class, help="train a detector",
                              description="Train Faster R-CNN: the paper's 4-step alternating scheme (§3.2), "
                                          "approximate joint training, or unshared (steps 1-2).")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="VOC-layout folder (e.g. VOCdevkit/VOC2007)")
    p.add_argument("--split", default="trainval", help="split to train on (ImageSets/Main/SPLIT.txt)")
    p.add_argument("--mode", choices=("alternating", "joint", "unshared"), default="alternating",
                   help="training scheme")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint.pt of an interrupted run to continue")
    add_config_arguments(p)
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1'")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="mixed precision: autocast the networks (boxes and losses stay fp32; fp16 adds loss scaling)")
    p.set_defaults(func=train_command)

    p = subparsers.add_parser("eval", formatter_class=formatter_class, help="evaluate a trained detector",
                              description="VOC mAP per class (11-point VOC07 and area AP), COCO AP@[.5:.95] and "
                                          "recall vs IoU of the proposals; writes metrics.json and PNG plots.")
    p.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL), help="model.pt or checkpoint.pt")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="VOC-layout folder")
    p.add_argument("--split", default="test", help="split to evaluate")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0: all)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="run the networks under autocast in this precision (boxes stay fp32)")
    p.set_defaults(func=eval_command)

    p = subparsers.add_parser("detect", formatter_class=formatter_class, help="detect objects in images",
                              description="Run a trained detector on image files; writes IMAGE.png (boxes drawn) "
                                          "and detections.json.")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL), help="model.pt or checkpoint.pt")
    p.add_argument("--out", type=Path, default=Path("runs/detect"), help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw and report detections above this score")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.set_defaults(func=detect_command)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The options that make a training Config: preset, seed, schedule scale, backbone weights, --set."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="book", help="configuration preset")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, data order, sampling)")
    p.add_argument("--iterations-scale", type=float, default=1.0,
                   help="multiply every stage's iterations (and lr step) by this factor")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="local ImageNet weights file for the backbone (e.g. vgg16-397923af.pth)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set roi_pool=align --set rpn_lambda=1 (repeatable)")


def config_from_arguments(args: argparse.Namespace, num_classes: int):
    """The Config of `add_config_arguments`' options; ValueError names a bad --set."""
    from fasterrcnn_edu.config import get_config
    overrides = {"seed": args.seed, "num_classes": num_classes}
    if args.backbone_weights:
        overrides["backbone_weights"] = str(args.backbone_weights)
    overrides.update(parse_overrides(args.set))
    return get_config(args.preset, **overrides).scaled(args.iterations_scale)


def parse_overrides(items: list[str]) -> dict:
    """["roi_pool=align", "rpn_lambda=1"] -> {"roi_pool": "align", "rpn_lambda": 1.0}, typed like the Config field."""
    import ast
    import dataclasses
    from fasterrcnn_edu.config import Config
    fields = {f.name: f for f in dataclasses.fields(Config)}
    defaults = Config()
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(defaults, name)
        if isinstance(current, str) or current is None:
            value = None if text == "None" else text
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"--set {item!r}: {text!r} is not a valid value for {name}") from None
            if isinstance(current, float) and isinstance(value, int):
                value = float(value)
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
        out[name] = value
    return out


def train_command(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.checkpoint import CheckpointError
    from fasterrcnn_edu.training import NonFiniteLossError, train

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data, args.split)
    if dataset is None:
        return 1
    try:
        cfg = config_from_arguments(args, num_classes=len(dataset.classes) + 1)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    print(f"training {args.mode} ({args.preset} preset) on {len(dataset)} images of {args.data} [{args.split}], "
          f"{len(dataset.classes)} classes, device {device}; output in {args.out}")
    try:
        result = train(dataset, cfg, args.mode, args.out, device, args.resume,
                       checkpoint_every=args.checkpoint_every, classes=list(dataset.classes), amp=args.amp)
    except (CheckpointError, NonFiniteLossError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {result.seconds:.0f} s: {args.out / 'model.pt'}, log in {args.out / 'log.csv'}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")             # files only, no window: before anything draws
    from torch.utils.data import Subset

    from fasterrcnn_edu.checkpoint import CheckpointError
    from fasterrcnn_edu.data import DataError, VOCDataset
    from fasterrcnn_edu.inference import evaluate_model
    from fasterrcnn_edu.checkpoint import load_model
    from fasterrcnn_edu.training import AMP_DTYPES
    from fasterrcnn_edu.viz import plot_pr_curves, plot_recall_vs_iou

    device = pick_device(args.device)
    try:
        model, classes = load_model(args.model, device)
        dataset = VOCDataset(args.data, args.split, classes=classes)
    except (CheckpointError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    subset = Subset(dataset, range(min(args.limit, len(dataset)))) if args.limit else dataset
    dtype = AMP_DTYPES[args.amp]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        result = evaluate_model(model, subset, classes, device, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print(result["voc07"].table())
    print(f"VOC2010+ area mAP: {result['voc12'].map:.4f}   COCO AP@[.5:.95]: {result['coco']['AP']:.4f}")
    metrics = {
        "model": str(args.model), "data": str(args.data), "split": args.split, "images": len(subset),
        "amp": args.amp,
        "voc07_map": result["voc07"].map, "voc07_ap": result["voc07"].ap,
        "voc12_map": result["voc12"].map, "voc12_ap": result["voc12"].ap,
        "coco": result["coco"], "recall_vs_iou": {str(k): v for k, v in result["recall_vs_iou"].items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_figure(plot_pr_curves(result["voc07"]), args.out / "pr_curves.png")
    curves = {f"RPN top-{n}": (np.asarray(v["iou"]), np.asarray(v["recall"]))
              for n, v in result["recall_vs_iou"].items()}
    save_figure(plot_recall_vs_iou(curves), args.out / "recall_vs_iou.png")
    print(f"wrote {args.out / 'metrics.json'}, pr_curves.png, recall_vs_iou.png")
    return 0


def detect_command(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")             # files only, no window: before anything draws

    from fasterrcnn_edu.checkpoint import CheckpointError
    from fasterrcnn_edu.data import DataError, read_image_tensor
    from fasterrcnn_edu.checkpoint import load_model
    from fasterrcnn_edu.viz import plot_detections

    device = pick_device(args.device)
    try:
        model, classes = load_model(args.model, device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    report, failures = {}, 0
    for path in args.images:
        try:
            image = read_image_tensor(path)
        except (DataError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        with torch.no_grad():
            det = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        keep = det["scores"] >= args.score_threshold
        report[str(path)] = [{"label": classes[int(l) - 1], "score": round(float(s), 4),
                              "box": [round(float(v), 1) for v in b]}
                             for b, l, s in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]
        save_figure(plot_detections(image, det, ["__background__", *classes], score_threshold=args.score_threshold),
                    args.out / f"{path.stem}.png")
        print(f"{path}: {len(report[str(path)])} detections")
    (args.out / "detections.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'detections.json'}")
    return 1 if failures else 0
