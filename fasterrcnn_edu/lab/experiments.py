"""Short experiments for the book: train the RPN alone, measure its proposals, sweep λ (chapter 3).

The paper weighs the two terms of the RPN loss (Eq. 1) with λ = 10 and reports that detection mAP
hardly moves for λ between 1 and 100 (Table 9 of the journal version). `lambda_sweep` asks the same
question of the book's small setting, with a cheaper yardstick than mAP: the recall of the RPN's
top-N proposals at IoU 0.7 and their average recall (AR, Hosang et al.) on a validation subset,
after a short RPN-only training (step 1 of the 4-step scheme) for each λ.

    python -m fasterrcnn_edu lambda-sweep --data data/shapes --out data/experiments/lambda.json

Everything is seeded: weights (`torch.manual_seed`), data order and flips
(`training.load_batch`), and the anchor mini-batches (a `torch.Generator` given to the model).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Subset

from fasterrcnn_edu.commands import DEFAULT_DATA, DEFAULT_MODEL
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.evaluation import average_recall, recall_vs_iou
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.inference import predict_proposals
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.training import Stage, StageLoss, run_stage, trainable
from fasterrcnn_edu.lab.records import command_line, environment

__all__ = ["RPNRun", "train_rpn", "proposal_recall", "lambda_sweep", "loss_weights", "subset",
           "regression_loss_curves", "plot_regression_losses", "plot_lambda_sweep", "objectness_map",
           "plot_objectness"]


@dataclass
class RPNRun:
    """The result of `train_rpn`.

    model: the network (eval mode) whose backbone + RPN were trained; log: one record per
    `log_every` steps, {"step", "lr", "seconds", "loss_objectness", "loss_rpn_box_reg"} with the
    losses averaged over those steps (the format `viz.plot_loss_curves` reads); seconds: wall time.
    """

    model: FasterRCNN
    log: list[dict]
    seconds: float


def subset(dataset, count: int | None):
    """The first `count` items of `dataset` (all of them if count is None or 0)."""
    if not count or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


def train_rpn(dataset, cfg: Config | None = None, steps: int = 200, lr: float | None = None,
              warmup: int | None = None, log_every: int = 10, seed: int = 0,
              device: str | torch.device = "cpu", model: FasterRCNN | None = None) -> RPNRun:
    """Train the backbone and RPN of a `FasterRCNN` on `dataset` with the RPN loss only (Eq. 1).

    dataset: items (image (3, H, W) in [0, 1], target dict with "boxes" (G, 4) and "labels" (G,)).
    cfg: the configuration (default `Config.book()`); its `rpn_lambda`, `rpn_reg_normalization`,
    `rpn_cls_loss`, `images_per_batch`, `momentum`, `weight_decay` and `flip` apply.
    steps: SGD mini-batches of `cfg.images_per_batch` images; lr: base learning rate (default
    `cfg.stage_rpn1.lr`), multiplied by 0.1 after 80 % of the steps; warmup: linear warm-up steps
    (default min(cfg.warmup_iterations, steps // 4)). model: start from this network instead of a
    fresh one (it is trained in place). Data order, flips and anchor sampling follow `seed`.
    """
    cfg = cfg if cfg is not None else Config.book()
    warmup = min(cfg.warmup_iterations, steps // 4) if warmup is None else warmup
    cfg = cfg.replace(seed=seed, warmup_iterations=warmup)
    device = torch.device(device)
    if model is None:
        torch.manual_seed(seed)
        model = FasterRCNN(cfg)
    model.to(device).train()
    model.set_generator(torch.Generator(device=device).manual_seed(seed))
    base_lr = cfg.stage_rpn1.lr if lr is None else lr
    stage = Stage("rpn", StageLoss(model, "rpn"), trainable(model.backbone, model.rpn),
                  StageSchedule(steps, base_lr, max(1, int(0.8 * steps))), cfg.images_per_batch)
    start = time.perf_counter()
    log = run_stage(stage, dataset, cfg, device, log_every=log_every)
    return RPNRun(model.eval(), log, time.perf_counter() - start)


def proposal_recall(model: FasterRCNN, dataset, top_n: int | Sequence[int] = 300,
                    device: str | torch.device = "cpu", batch_size: int = 4) -> dict:
    """Recall of the model's top-`top_n` proposals against the ground truth of `dataset`.

    Returns {"top_n", "recall@0.5", "recall@0.7", "AR" (average recall over IoU 0.5..1),
    "iou" (11 thresholds), "recall" (11 values), "proposals_per_image"} — the paper's recall-vs-IoU
    analysis (§4, Fig. 4). Difficult objects, when marked, are left out. With a list of top-N values
    the proposals are computed once (the top-n of greedy NMS are a prefix of the top-N, n < N) and
    a dict {n: result} is returned.
    """
    counts = [top_n] if isinstance(top_n, int) else list(top_n)
    proposals = predict_proposals(model, dataset, top_n=max(counts), device=device, batch_size=batch_size)
    targets = [dataset[i][1] for i in range(len(dataset))]
    gt = [t["boxes"] for t in targets]
    difficult = [t.get("difficult", torch.zeros(len(t["boxes"]), dtype=torch.bool)) for t in targets]
    results = {}
    for n in counts:
        thresholds, recall = recall_vs_iou(proposals, gt, n, difficult=difficult)
        at = {f"{t:.2f}": float(r) for t, r in zip(thresholds, recall)}
        results[n] = {"top_n": n, "recall@0.5": at["0.50"], "recall@0.7": at["0.70"],
                      "AR": average_recall(thresholds, recall), "iou": [float(t) for t in thresholds],
                      "recall": [float(r) for r in recall],
                      "proposals_per_image": float(np.mean([min(len(p), n) for p in proposals]))
                      if proposals else 0.0}
    return results[counts[0]] if isinstance(top_n, int) else results


def loss_weights(cfg: Config, feature_size: tuple[int, int]) -> dict:
    """How Eq. 1 weighs its two terms for one image with a `feature_size` (H, W) feature map.

    Returns {"N_cls", "N_reg", "lambda", "reg_weight_per_anchor" (λ / N_reg), "cls_weight_per_anchor"
    (1 / N_cls), "ratio" (their quotient: 1 means a positive anchor's box error counts as much as a
    classification error, the paper's "roughly equally weighted")}.
    """
    n_cls = cfg.rpn_batch_size
    n_reg = feature_size[0] * feature_size[1] if cfg.rpn_reg_normalization == "locations" else n_cls
    reg, cls = cfg.rpn_lambda / n_reg, 1.0 / n_cls
    return {"N_cls": n_cls, "N_reg": n_reg, "lambda": cfg.rpn_lambda, "reg_weight_per_anchor": reg,
            "cls_weight_per_anchor": cls, "ratio": reg / cls}


def lambda_sweep(train_set, val_set, lambdas: Sequence[float] = (0.1, 1, 3, 10, 100), steps: int = 400,
                 seeds: Sequence[int] = (0,), top_ns: Sequence[int] = (50, 300), cfg: Config | None = None,
                 device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """For each λ and seed: `train_rpn` for `steps` steps, then `proposal_recall` on `val_set`.

    Returns a JSON-ready dict: {"settings": {...}, "runs": [one record per (λ, seed) with the final
    losses, the training log, and per top-N recall@0.5/0.7 and AR], "summary": [per λ, means over
    seeds of recall@0.7 and AR for each top-N]}. Every run starts from the same initial weights
    (for a given seed) and sees the same images in the same order: only λ changes.
    """
    cfg = cfg if cfg is not None else Config.book()
    runs = []
    for lam in lambdas:
        for seed in seeds:
            run = train_rpn(train_set, dataclasses.replace(cfg, rpn_lambda=float(lam)), steps=steps, seed=seed,
                            device=device)
            record = {"lambda": float(lam), "seed": int(seed), "train_seconds": round(run.seconds, 1),
                      "final_losses": {k: v for k, v in run.log[-1].items() if k.startswith("loss")},
                      "log": run.log, "recall": {}}
            recalls = proposal_recall(run.model, val_set, top_n=list(top_ns), device=device)
            for top_n in top_ns:
                record["recall"][str(top_n)] = {k: recalls[top_n][k] for k in ("recall@0.5", "recall@0.7", "AR",
                                                                                "proposals_per_image")}
            runs.append(record)
            if progress:
                print(f"lambda={lam:g} seed={seed}: {run.seconds:.0f} s, "
                      + ", ".join(f"top-{n}: R@0.7={record['recall'][str(n)]['recall@0.7']:.3f} "
                                  f"AR={record['recall'][str(n)]['AR']:.3f}" for n in top_ns), flush=True)
    summary = []
    for lam in lambdas:
        mine = [r for r in runs if r["lambda"] == float(lam)]
        row = {"lambda": float(lam)}
        for top_n in top_ns:
            for key in ("recall@0.7", "AR"):
                values = [r["recall"][str(top_n)][key] for r in mine]
                row[f"{key} top-{top_n}"] = float(np.mean(values))
                if len(values) > 1:
                    row[f"{key} top-{top_n} std"] = float(np.std(values))
        summary.append(row)
    settings = {"lambdas": [float(x) for x in lambdas], "steps": steps, "seeds": list(seeds),
                "images_per_batch": cfg.images_per_batch, "train_images": len(train_set),
                "val_images": len(val_set), "top_ns": list(top_ns), "preset_overrides": "rpn_lambda only",
                "rpn_reg_normalization": cfg.rpn_reg_normalization, "rpn_smooth_l1_beta": cfg.rpn_smooth_l1_beta,
                "lr": cfg.stage_rpn1.lr}
    return {"settings": settings, "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------------------------
# Figures of chapter 3
# ---------------------------------------------------------------------------------------------
def regression_loss_curves(x: Tensor, betas: Sequence[float] = (1.0,)) -> dict[str, tuple[Tensor, Tensor]]:
    """Loss and gradient of L2 (0.5 x²) and of smooth L1 (`losses.smooth_l1`) for each β at errors `x`.

    x: (N,) errors t - t*. Returns name -> (loss (N,), d loss / d x (N,)), gradients by autograd.
    """
    from fasterrcnn_edu.losses import smooth_l1

    curves = {}
    functions = {"L2: 0.5 x²": lambda v: 0.5 * v ** 2}
    for beta in betas:
        label = f"smooth L1, β = {beta:g}" if beta in (1.0, 0.5, 2.0) else f"smooth L1, β = {beta:.3g}"
        functions[label] = lambda v, b=beta: smooth_l1(v, torch.zeros_like(v), b)
    for name, fn in functions.items():
        v = x.detach().clone().float().requires_grad_(True)
        loss = fn(v)
        (grad,) = torch.autograd.grad(loss.sum(), v)
        curves[name] = (loss.detach(), grad.detach())
    return curves


def plot_regression_losses(betas: Sequence[float] = (1.0, 1.0 / 9.0), limit: float = 3.0, axes=None):
    """Two panels: L2 and smooth L1 (Fast R-CNN Eq. 3) against the error x, and their gradients.

    Returns the Figure. The gradient of L2 grows with the error; smooth L1's is capped at ±1.
    """
    import matplotlib.pyplot as plt
    from fasterrcnn_edu.viz import class_color

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(7.8, 3.3), layout="constrained")
    fig = axes[0].figure
    x = torch.linspace(-limit, limit, 601)
    for i, (name, (loss, grad)) in enumerate(regression_loss_curves(x, betas).items()):
        style = "--" if name.startswith("L2") else "-"
        axes[0].plot(x, loss, style, color=class_color(i), label=name, linewidth=1.6)
        axes[1].plot(x, grad, style, color=class_color(i), label=name, linewidth=1.6)
    axes[0].set_ylim(0, 0.5 * limit ** 2 * 0.8)
    axes[0].set_title("loss", fontsize=10)
    axes[1].set_title("gradient (what backpropagation sees)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("error  $t_i - t_i^*$")
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.axvline(0, color="0.6", linewidth=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center")
    return fig


@torch.no_grad()
def objectness_map(model: FasterRCNN, image: Tensor) -> Tensor:
    """Where the RPN sees objects: for each feature-map position, the highest objectness probability of
    its k anchors. image: (3, H, W) in [0, 1] -> (h, w) in [0, 1], h × w the feature map of the resized image."""
    from fasterrcnn_edu.proposals import objectness_scores

    model.eval()
    device = next(model.parameters()).device
    batch, _ = model.transform([image.to(device)])
    features = model.backbone(batch.tensors)
    objectness, _ = model.rpn.head(features)
    height, width = features.shape[-2:]
    return objectness_scores(objectness)[0].reshape(height, width, -1).amax(dim=-1).cpu()


def plot_objectness(probability: Tensor, ax=None, title: str | None = None, stride: int = 16,
                    boxes: Tensor | None = None):
    """An objectness map (h, w) in [0, 1] drawn in image coordinates: position (i, j) as the
    stride × stride cell [16 j, 16 j + 16) × [16 i, 16 i + 16), colour scale fixed to [0, 1];
    `boxes` (N, 4), e.g. the ground truth, dashed on top. Returns the Axes."""
    import matplotlib.pyplot as plt
    from fasterrcnn_edu.viz import draw_boxes

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    h, w = probability.shape
    shown = ax.imshow(probability.numpy(), extent=(0, w * stride, h * stride, 0), cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest")
    if boxes is not None:
        draw_boxes(ax, boxes, color="white", linestyle="--", linewidth=1.0)
    ax.set_xlim(0, w * stride)
    ax.set_ylim(h * stride, 0)
    ax.axis("off")
    ax.figure.colorbar(shown, ax=ax, fraction=0.035, pad=0.02, label="objectness")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_lambda_sweep(result: dict, top_ns: Sequence[int] | None = None, ax=None):
    """Proposal recall against λ from `lambda_sweep`: recall at IoU 0.7 for each top-N (solid, dashed)
    and the AR of the largest top-N (dotted). λ values are placed evenly (λ = 0 may be among them),
    one marker per run (seed), a line through the means. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from fasterrcnn_edu.viz import class_color

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    lambdas = [row["lambda"] for row in result["summary"]]
    position = {lam: i for i, lam in enumerate(lambdas)}
    top_ns = sorted(top_ns if top_ns is not None else result["settings"]["top_ns"], reverse=True)
    series = [(f"recall@0.7", n, "-" if i == 0 else "--") for i, n in enumerate(top_ns)] + [("AR", top_ns[0], ":")]
    for i, (key, n, style) in enumerate(series):
        xs = [position[r["lambda"]] for r in result["runs"]]
        ys = [r["recall"][str(n)][key] for r in result["runs"]]
        ax.scatter(xs, ys, s=14, color=class_color(i), alpha=0.5)
        means = [row[f"{key} top-{n}"] for row in result["summary"]]
        ax.plot(range(len(lambdas)), means, style, marker="o", color=class_color(i), markersize=4,
                label=f"{key}, top-{n}")
    ax.set_xticks(range(len(lambdas)))
    ax.set_xticklabels([f"{v:g}" for v in lambdas])
    ax.set_xlabel("λ")
    ax.set_ylabel("recall of the proposals")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------------
# Command line: python -m fasterrcnn_edu lambda-sweep ...
# ---------------------------------------------------------------------------------------------
def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("lambda-sweep", formatter_class=formatter_class,
                              help="RPN-only training for several λ (paper Table 9), recall of the proposals",
                              description="Chapter 3's experiment: train the RPN alone with several λ and "
                                          "measure the recall of its proposals; writes a JSON file.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VOC-layout folder")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--val-images", type=int, default=200, help="first N images of the val split (0: all)")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 1, 3, 10, 100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=400, help="SGD steps per run (book preset: 2 images each)")
    p.add_argument("--top-n", type=int, nargs="+", default=[50, 300], help="proposal counts to evaluate")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--out", type=Path, default=Path("data/experiments/lambda.json"))
    p.set_defaults(func=lambda_sweep_command)


def lambda_sweep_command(args: argparse.Namespace) -> int:

    from fasterrcnn_edu.data import VOCDataset
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = VOCDataset(args.data, args.train_split)
    val_set = subset(VOCDataset(args.data, args.val_split), args.val_images)
    cfg = Config.book(num_classes=len(train_set.classes) + 1)
    env = environment()
    start = time.perf_counter()
    result = lambda_sweep(train_set, val_set, args.lambdas, args.steps, args.seeds, args.top_n, cfg,
                          progress=True)
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["command"] = command_line()
    result = {"environment": env, **result}
    write_json(result, args.out)
    print(f"wrote {args.out} in {env['seconds']:.0f} s")
    return 0

