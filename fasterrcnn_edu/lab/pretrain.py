"""Step 0: pre-train the backbone as a classifier — the book's stand-in for ImageNet pre-training.

The paper never trains its conv layers from scratch: every network starts from an ImageNet
classification model (§3.1.3, §3.2 step 1: "initialized with an ImageNet-pre-trained model").
Nothing can be downloaded here, so the book pre-trains its small backbone on the same kind of
task: classify crops of the training images — each ground-truth object cut out with some
context, plus background crops that overlap no object (IoU < 0.3) — into K + 1 classes. The
crops are cut with RoIAlign, all at once. The detector training then starts from these weights.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fasterrcnn_edu.backbones import Backbone, build_backbone
from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.fileio import atomic_write
from fasterrcnn_edu.commands import DEFAULT_DATA
from fasterrcnn_edu.config import PRESETS, Config, StageSchedule, get_config
from fasterrcnn_edu.training import Stage, run_stage, trainable
from fasterrcnn_edu.transforms import normalize


class CropClassifier(nn.Module):
    """Backbone → global average pooling → linear layer with K + 1 outputs."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """crops: (N, 3, S, S) normalised -> logits (N, num_classes)."""
        return self.fc(self.backbone(crops).mean(dim=(2, 3)))


def crop_boxes(gt_boxes: torch.Tensor, image_size: tuple[int, int], num_background: int,
               generator: torch.Generator, context: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes to cut from one image: jittered objects with context, and background boxes.

    gt_boxes: (G, 4) -> boxes (G + num_background, 4), is_object (G + num_background,) bool.
    Background boxes are random squares of 24..160 px that overlap every object with IoU < 0.3
    (candidates that do not are dropped, so there may be fewer).
    """
    height, width = image_size
    sizes = gt_boxes[:, 2:] - gt_boxes[:, :2]
    jitter = (torch.rand(len(gt_boxes), 4, generator=generator) - 0.5) * 0.2
    grow = torch.cat([-sizes, sizes], dim=1) * context
    objects = gt_boxes + grow + jitter * sizes.repeat(1, 2)

    side = 24 + torch.rand(num_background * 3, 1, generator=generator) * 136
    corner = torch.rand(num_background * 3, 2, generator=generator) * (torch.tensor([width, height]) - side).clamp(min=1)
    candidates = torch.cat([corner, corner + side], dim=1)
    if len(gt_boxes):
        candidates = candidates[box_iou(candidates, gt_boxes).max(dim=1).values < 0.3]
    background = candidates[:num_background]
    is_object = torch.cat([torch.ones(len(objects), dtype=torch.bool), torch.zeros(len(background), dtype=torch.bool)])
    return torch.cat([objects, background]), is_object


class CropLoss(nn.Module):
    """The pre-training loss of one mini-batch: cut the crops of each image, classify them.

    forward(images, targets) -> {"loss_cls": cross-entropy, "accuracy": fraction right (logged only)}.
    """

    def __init__(self, classifier: CropClassifier, cfg: Config, crop_size: int, generator: torch.Generator):
        super().__init__()
        self.classifier = classifier
        self.cfg, self.crop_size, self.generator = cfg, crop_size, generator

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        crops, labels = [], []
        for image, target in zip(images, targets):                    # a loop over images
            regions, is_object = crop_boxes(target["boxes"].cpu(), tuple(image.shape[-2:]), 3, self.generator)
            normalized = normalize(image, self.cfg.image_mean, self.cfg.image_std)[None]
            crops.append(torchvision.ops.roi_align(normalized, [regions.to(image.device)], self.crop_size, 1.0, 2,
                                                   aligned=True))
            background = torch.zeros(int((~is_object).sum()), dtype=torch.int64, device=image.device)
            labels.append(torch.cat([target["labels"], background]))
        logits, labels = self.classifier(torch.cat(crops)), torch.cat(labels)
        return {"loss_cls": F.cross_entropy(logits, labels),
                "accuracy": (logits.argmax(1) == labels).float().mean().detach()}


def pretrain_backbone(dataset, cfg: Config, steps: int = 1500, images_per_step: int = 8, crop_size: int = 64,
                      lr: float = 0.05, out_path: str | Path | None = None, device="cpu", progress: bool = True,
                      seed: int = 0) -> tuple[Backbone, list[dict]]:
    """Train `cfg.backbone` to classify object crops; returns the backbone and a log of loss/accuracy.

    The loop is the detector's (`training.run_stage`): SGD with momentum, lr `lr` with a linear
    warm-up over the first 10 % of the steps and ×0.1 after 80 %, flipped images, every object kept
    (`difficult="train"`: a crop classifier has no use for ignore regions). If `out_path` is given,
    the backbone's state dict is written there (atomically), ready for `Config.backbone_weights` /
    `train --backbone-weights`.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    backbone, _ = build_backbone(cfg.backbone, cfg.roi_output_size, cfg.head_hidden)
    model = CropClassifier(backbone, cfg.num_classes).to(device).train()
    cfg = cfg.replace(seed=seed, warmup_iterations=max(1, steps // 10), difficult="train")
    loss = CropLoss(model, cfg, crop_size, torch.Generator().manual_seed(seed))
    stage = Stage("pre-train backbone", loss, trainable(model), StageSchedule(steps, lr, max(1, int(0.8 * steps))),
                  images_per_step)
    log = run_stage(stage, dataset, cfg, device, log_every=20, progress=progress)
    backbone = model.backbone.cpu()
    if out_path is not None:
        save_backbone(backbone, out_path)
    return backbone, log


def save_backbone(backbone: Backbone, path: str | Path) -> Path:
    """Write the backbone's state dict as {"state_dict": ...} (temp file + rename)."""
    return atomic_write(path, lambda f: torch.save({"state_dict": backbone.state_dict()}, f))


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("pretrain", formatter_class=formatter_class,
                              help="pre-train the backbone on object crops (the book's ImageNet stand-in)",
                              description="Step 0 (the paper starts from ImageNet): train the backbone to "
                                          "classify crops of the training objects and background; writes a "
                                          "weights file for `train --backbone-weights`.")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="VOC-layout folder")
    p.add_argument("--split", default="trainval", help="split whose objects are cropped")
    p.add_argument("--preset", choices=sorted(PRESETS), default="book", help="configuration preset (its backbone)")
    p.add_argument("--steps", type=int, default=1500, help="SGD steps (8 images' crops each)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", type=Path, default=Path("runs/backbone.pt"), help="weights file to write")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=pretrain_command)


def pretrain_command(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.commands import open_dataset, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data, args.split)
    if dataset is None:
        return 1
    cfg = get_config(args.preset, num_classes=len(dataset.classes) + 1)
    _, log = pretrain_backbone(dataset, cfg, args.steps, out_path=args.out, device=pick_device(args.device),
                               seed=args.seed)
    print(f"crop accuracy {log[-1]['accuracy']:.3f} after {args.steps} steps ({log[-1]['seconds']:.0f} s); "
          f"wrote {args.out}")
    return 0
