"""Shared pytest configuration. Other sections (e.g. nbval hooks for the book) may be added below."""
from __future__ import annotations

import pytest
import torch


# ---------------------------------------------------------------------------------------------
# Detector-core test fixtures (tests/test_{boxes,anchors,labeling,losses,nms,proposals,roi_heads,model}.py)
# ---------------------------------------------------------------------------------------------
def _random_boxes(n: int, size: float = 100.0, min_side: float = 1.0, max_side: float = 50.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 4) float32 x1, y1, x2, y2 with top-left in [0, size) and sides in [min_side, max_side)."""
    top_left = torch.rand(n, 2, generator=generator) * size
    sides = min_side + torch.rand(n, 2, generator=generator) * (max_side - min_side)
    return torch.cat([top_left, top_left + sides], dim=1)


@pytest.fixture
def random_boxes():
    """A function `random_boxes(n, size=100, min_side=1, max_side=50, generator=None) -> (n, 4)`."""
    return _random_boxes
