"""Running a trained detector over a dataset: detections, proposals, and the paper's measurements.

`evaluate_model` gives what the paper reports: VOC07 mAP@0.5 (11-point) and the area-AP of
VOC2010+, a COCO-style AP@[.5:.95] cross-check, and recall vs IoU of the RPN's proposals (§4).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fasterrcnn_edu.fileio import CheckpointError, atomic_write, read_torch_file
from fasterrcnn_edu.evaluation import evaluate_coco, evaluate_voc, recall_vs_iou

DETECTIONS_FORMAT = "fasterrcnn_edu-detections/1"


def _batches(dataset, batch_size: int, progress: bool = False):
    """Lists of up to `batch_size` (image, target) pairs, in dataset order (with a progress bar)."""
    batches = ([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
               for start in range(0, len(dataset), batch_size))
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, total=-(-len(dataset) // batch_size), desc="detect")
    return batches


def _on_cpu(outputs: list[dict]) -> list[dict]:
    return [{k: v.cpu() for k, v in out.items()} for out in outputs]


def _pre_nms_count(cfg, top_n: int, pre_nms_top_n: int | None = None) -> int:
    """Boxes entering NMS when `top_n` proposals are asked for: `pre_nms_top_n` (None: the config's
    test count), raised to `top_n` so that a smaller pre-NMS count never caps the request."""
    return max(pre_nms_top_n or cfg.rpn_pre_nms_top_n_test, top_n)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, device="cpu", batch_size: int = 4, progress: bool = False
                    ) -> tuple[list[dict], list[dict]]:
    """Detections (on CPU) and targets for every image of `dataset`, in dataset order."""
    model.eval()
    detections, targets = [], []
    for batch in _batches(dataset, batch_size, progress):
        detections += _on_cpu(model([image.to(device) for image, _ in batch]))
        targets += [target for _, target in batch]
    return detections, targets


@torch.no_grad()
def predict_proposals(model: nn.Module, dataset, top_n: int = 2000, device="cpu", batch_size: int = 4,
                      pre_nms_top_n: int | None = None) -> list[Tensor]:
    """The RPN's top-`top_n` proposals per image, sorted by objectness, in original image pixels.

    `pre_nms_top_n` boxes, best by objectness, enter NMS; None: the config's
    `rpn_pre_nms_top_n_test`. Either is raised to `top_n` if smaller, so asking for 2000 proposals
    is not silently limited by a smaller pre-NMS count; NMS may still leave fewer. The model's
    configuration is not changed.
    """
    rpn_net = getattr(model, "rpn_net", model)          # an UnsharedFasterRCNN proposes with its RPN network
    rpn_net.eval()
    pre = _pre_nms_count(rpn_net.cfg, top_n, pre_nms_top_n)
    proposals = []
    for batch in _batches(dataset, batch_size):
        images = [image.to(device) for image, _ in batch]
        proposals += [b.cpu() for b in rpn_net.proposals_for_images(images, pre, top_n)]
    return proposals


@torch.no_grad()
def predict_dataset_and_proposals(model: nn.Module, dataset, top_n: int, device="cpu", batch_size: int = 4,
                                  progress: bool = False) -> tuple[list[dict], list[dict], list[Tensor]]:
    """`predict_dataset` and `predict_proposals(top_n)` at once: (detections, targets, proposals), equal
    to what the two return. A shared model runs its backbone once per batch for both (half the
    conv work of calling them in turn); an `UnsharedFasterRCNN`, whose RPN has its own backbone,
    runs the two in turn."""
    if not hasattr(model, "detect_and_propose"):
        detections, targets = predict_dataset(model, dataset, device, batch_size, progress)
        return detections, targets, predict_proposals(model, dataset, top_n, device, batch_size)
    model.eval()
    pre = _pre_nms_count(model.cfg, top_n)
    detections, targets, proposals = [], [], []
    for batch in _batches(dataset, batch_size, progress):
        found, boxes = model.detect_and_propose([image.to(device) for image, _ in batch], pre, top_n)
        detections += _on_cpu(found)
        proposals += [b.cpu() for b in boxes]
        targets += [target for _, target in batch]
    return detections, targets, proposals


def evaluate_model(model: nn.Module, dataset, classes: list[str], device="cpu", batch_size: int = 4,
                   proposal_counts=(300, 1000, 2000), progress: bool = False) -> dict:
    """mAP (VOC07 11-point and area), COCO AP, and recall-vs-IoU curves of the proposals."""
    detections, targets, proposals = predict_dataset_and_proposals(model, dataset, max(proposal_counts), device,
                                                                   batch_size, progress)
    voc07 = evaluate_voc(detections, targets, len(classes) + 1, use_07_metric=True, class_names=classes)
    voc12 = evaluate_voc(detections, targets, len(classes) + 1, use_07_metric=False, class_names=classes)
    coco = evaluate_coco(detections, targets, classes, num_classes=len(classes) + 1)
    gt = [t["boxes"] for t in targets]
    difficult = [t.get("difficult", torch.zeros(len(t["boxes"]), dtype=torch.bool)) for t in targets]
    recall = {}
    for n in proposal_counts:
        thresholds, values = recall_vs_iou(proposals, gt, n, difficult=difficult)
        recall[n] = {"iou": thresholds.tolist(), "recall": values.tolist()}
    return {"voc07": voc07, "voc12": voc12, "coco": coco, "recall_vs_iou": recall,
            "detections": detections, "targets": targets, "proposals": proposals}


def save_detections(detections: list[dict], image_ids: list[str], path: str | Path) -> Path:
    """Write the detections of a data set (one dict of boxes (D, 4), labels (D,), scores (D,) per image,
    in `image_ids` order) atomically, as plain tensors: what `eval` measured, reusable without the model."""
    state = {"format": DETECTIONS_FORMAT, "image_ids": list(image_ids),
             "detections": [{k: d[k].detach().cpu() for k in ("boxes", "labels", "scores")} for d in detections]}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_detections(path: str | Path) -> tuple[list[str], list[dict]]:
    """(image ids, detections) written by `save_detections`; CheckpointError names a file of another kind."""
    state = read_torch_file(path, "detections file")
    if not isinstance(state, dict) or state.get("format") != DETECTIONS_FORMAT:
        raise CheckpointError(f"{path} is not a detections file (expected format {DETECTIONS_FORMAT!r})")
    return list(state["image_ids"]), list(state["detections"])
