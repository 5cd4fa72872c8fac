"""Data augmentation: the paper's only one, horizontal flipping (Ren et al. 2015, Sec. 4).

Transforms take and return `(image, target)` so that the boxes move with the pixels. Resizing
and normalisation are not augmentation; they belong to the model (`fasterrcnn_edu.transforms`).
"""
from __future__ import annotations

import torch

from fasterrcnn_edu.transforms import hflip


def hflip_target(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror an image left-right and its boxes with it: `fasterrcnn_edu.transforms.hflip` on a target dict.

    image: (C, H, W); target["boxes"]: (N, 4) x1, y1, x2, y2 in continuous pixel coordinates.
    With W the image width, a pixel column at [x, x + 1) moves to [W - x - 1, W - x), so
    x1' = W - x2 and x2' = W - x1 (no "- 1": that belongs to the 1-based inclusive convention).
    The caller's dict is never modified (it may be cached).
    """
    image, boxes = hflip(image, target["boxes"])
    return image, dict(target, boxes=boxes)


class RandomHorizontalFlip:
    """Flip (image, target) left-right with probability `p`.

    generator: an optional `torch.Generator` for reproducible flips. Leave it None with a
    multi-worker DataLoader: each worker would get a copy of the same generator and flip the
    same way, while torch's global RNG is seeded differently per worker.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if torch.rand(1, generator=self.generator).item() < self.p:
            return hflip_target(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"
