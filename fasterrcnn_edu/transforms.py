"""Image preparation inside the model: rescale, normalise, batch — and the way back.

The paper rescales every image so its shorter side is s = 600 pixels with the longer side at
most 1000 (§3.3, released code); boxes scale with it. Images are normalised with the backbone's
statistics and zero-padded into one batch tensor whose sides are multiples of the stride. After
detection, boxes are scaled back to the caller's original image size. As in torchvision's
detection models, callers pass plain [0, 1] RGB tensors of any size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fasterrcnn_edu.boxes import check_boxes


@dataclass
class ImageBatch:
    """tensors: (B, 3, H, W) padded; image_sizes: (B, 2) int64 (height, width) of each resized image
    inside the padding; scales: (B,) float32 resize factors; original_sizes: [(height, width)]."""

    tensors: Tensor
    image_sizes: Tensor
    scales: Tensor
    original_sizes: list[tuple[int, int]]

# Target keys that hold boxes (N, 4) in input-image pixels, rescaled with the image.
BOX_KEYS = ("boxes", "proposals")


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor that makes the shorter side `min_size`, unless the longer would exceed `max_size`."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(H * scale), round(W * scale)), each at least 1 pixel: an extreme aspect ratio
    (1×1000, 20000×4) would otherwise round its short side to 0 and leave nothing to detect on."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: Tensor, scale: float) -> Tensor:
    """image: ``(3, H, W)`` -> ``(3, *resized_size(H, W, scale))``, bilinear. No-op at scale 1."""
    if scale == 1.0:
        return image
    size = resized_size(image.shape[-2], image.shape[-1], scale)
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def normalize(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(image - mean) / std per channel; image: (3, H, W) in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - mean_t) / std_t


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes (N, 4) of an image `width` pixels wide, mirrored left-right: x1' = W - x2, x2' = W - x1."""
    check_boxes(boxes, ndim=2, where="hflip_boxes")
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror image: (3, H, W) and boxes: (N, 4) left-right (`hflip_boxes`)."""
    return image.flip(-1), hflip_boxes(boxes, image.shape[-1])


def batch_images(images: list[Tensor], size_divisible: int = 16) -> tuple[Tensor, Tensor]:
    """Zero-pad images (3, H_b, W_b) into (B, 3, H, W) with H, W multiples of `size_divisible`.

    Returns the batch and image_sizes (B, 2) int64.
    """
    # Shapes are host numbers: no tensor (and no host synchronisation) is needed to pad.
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    height = -(-max(h for h, _ in sizes) // size_divisible) * size_divisible
    width = -(-max(w for _, w in sizes) // size_divisible) * size_divisible
    batch = images[0].new_zeros(len(images), 3, height, width)
    for img, slot in zip(images, batch):                          # a loop over images
        slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch, torch.tensor(sizes, dtype=torch.int64, device=images[0].device)


def check_inputs(images, targets: list[dict] | None = None) -> None:
    """Refuse (ValueError / TypeError) inputs that the model would otherwise misread silently.

    images must be a list (or tuple) of float (3, H, W) tensors in [0, 1], as for torchvision's
    detection models: a bare (3, H, W) tensor would be iterated as three one-channel "images" and a
    (H, W) or (1, H, W) one broadcast against the three channel means; a uint8 image, taken as
    [0, 1], would be almost all white and give no detections. targets, if given: one dict per image
    with "boxes" (N, 4) and "labels" (N,). Only shapes and dtypes are looked at (no GPU sync).
    """
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        what = f"a tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images must be a list of (3, H, W) tensors, got {what}; pass [image] for one "
                        "image, or list(batch) for a (B, 3, H, W) batch")
    if not images:
        raise ValueError("images is an empty list; pass at least one (3, H, W) tensor")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise TypeError(f"images[{i}] must be a (3, H, W) tensor, got {type(image).__name__}")
        if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"images[{i}] must be an RGB image of shape (3, H, W) with H, W >= 1, "
                             f"got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"images[{i}] must be a floating-point tensor with values in [0, 1], got {image.dtype}; "
                            "convert a uint8 image with image.float() / 255")
    if targets is None:
        return
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        what = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list of one dict per image ({len(images)}), got {what}")
    for i, target in enumerate(targets):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' (N, 4) and 'labels' (N,)")
        for key in BOX_KEYS:
            if key in target:
                check_boxes(target[key], f"targets[{i}][{key!r}]", ndim=2)
        labels = target["labels"]
        if not isinstance(labels, Tensor) or labels.shape != target["boxes"].shape[:1]:
            got = f"shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"targets[{i}]['labels'] must be a tensor of shape ({len(target['boxes'])},), "
                             f"one per box, got {got}")


class ImageTransform:
    """Resize + normalise + batch on the way in (`__call__`), scale boxes back on the way out."""

    def __init__(self, min_size: int, max_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 size_divisible: int = 16):
        self.min_size, self.max_size = min_size, max_size
        self.mean, self.std = mean, std
        self.size_divisible = size_divisible

    def __call__(self, images: list[Tensor], targets: list[dict] | None = None
                 ) -> tuple[ImageBatch, list[dict] | None]:
        check_inputs(images, targets)
        prepared, scales, original_sizes = [], [], []
        for image in images:
            height, width = image.shape[-2:]
            scale = resize_scale(height, width, self.min_size, self.max_size)
            prepared.append(resize_image(normalize(image, self.mean, self.std), scale))
            scales.append(scale)
            original_sizes.append((int(height), int(width)))
        tensors, image_sizes = batch_images(prepared, self.size_divisible)
        scales_t = torch.tensor(scales, dtype=torch.float32, device=tensors.device)
        if targets is not None:
            # Sizes were rounded, so each axis gets its own exact factor. Every box-valued key moves:
            # the ground truth and, in the detector steps of 4-step training, the stored proposals.
            targets = [dict(t, **{k: t[k].float() * _xy_factors(size, orig).to(t[k].device)
                                  for k in BOX_KEYS if k in t})
                       for t, size, orig in zip(targets, [p.shape[-2:] for p in prepared], original_sizes)]
        return ImageBatch(tensors, image_sizes, scales_t, original_sizes), targets

    def postprocess(self, detections: list[dict], batch: ImageBatch) -> list[dict]:
        """Map detection boxes from resized-image pixels back to each original image."""
        out = []
        for det, size, orig in zip(detections, batch.image_sizes.tolist(), batch.original_sizes):
            out.append(dict(det, boxes=det["boxes"] / _xy_factors(size, orig).to(det["boxes"].device)))
        return out


def _xy_factors(resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """(4,) factors (sx, sy, sx, sy) from original to resized pixels."""
    sy, sx = resized[0] / original[0], resized[1] / original[1]
    return torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
