"""A four-image data set for tests that train for a few steps: a bright and a dark square per image."""
from __future__ import annotations

import torch


class TwoSquares:
    """Image i (3, 96, 128) has a bright square (class 1) moved down by `shift * i` pixels and a dark one (class 2)."""

    classes = ["bright", "dark"]

    def __init__(self, shift: int = 0):
        self.shift = shift

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        dy = self.shift * i
        image = torch.full((3, 96, 128), 0.5)
        image[:, 10 + dy:50 + dy, 10:50] = 1.0
        image[:, 40:90, 70:120] = 0.0
        boxes = torch.tensor([[10.0, 10 + dy, 50, 50 + dy], [70, 40, 120, 90]])
        return image, {"boxes": boxes, "labels": torch.tensor([1, 2])}
