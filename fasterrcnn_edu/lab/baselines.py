"""Non-learned proposal baselines: what the RPN is compared with in the book (paper §4.1, Figure 4).

* `sliding_window_proposals`: dense windows ranked by a simple contrast score, a stand-in for
  Selective Search (the paper's main comparison), because OpenCV's contrib Selective Search is
  not a dependency.
* `selective_search_proposals`: the real thing when ``cv2.ximgproc`` is installed.

Boxes are (x1, y1, x2, y2) continuous image coordinates, like the rest of the package.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

from fasterrcnn_edu.evaluation import to_cpu



def _as_float_image(image: Tensor) -> Tensor:
    """(3, H, W) uint8 or float -> float32 in [0, 1]."""
    image = to_cpu(image)
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float()


def _integral(x: Tensor) -> Tensor:
    """(C, H, W) -> (C, H + 1, W + 1) summed-area table with a zero first row/column,
    so the sum over rows y1..y2-1, cols x1..x2-1 is S[y2,x2] - S[y1,x2] - S[y2,x1] + S[y1,x1]."""
    s = x.double().cumsum(1).cumsum(2)
    return torch.nn.functional.pad(s, (1, 0, 1, 0))


def _box_sums(integral: Tensor, boxes: Tensor) -> Tensor:
    """integral: (C, H+1, W+1); boxes: (N, 4) int64 x1,y1,x2,y2 in [0, W] x [0, H] -> (N, C)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    s = integral
    return (s[:, y2, x2] - s[:, y1, x2] - s[:, y2, x1] + s[:, y1, x1]).T


def _dense_windows(height: int, width: int, scales: Sequence[int], ratios: Sequence[float],
                   stride: int) -> Tensor:
    """All windows of the given scales (sqrt of area) and ratios (h / w, as the paper's
    anchors) lying fully inside the image, top-left corners on a stride grid. -> (N, 4) int64."""
    windows = []
    for s in scales:
        for r in ratios:
            w = int(round(s / math.sqrt(r)))
            h = int(round(s * math.sqrt(r)))
            if w > width or h > height or w < 1 or h < 1:
                continue
            xs = torch.arange(0, width - w + 1, stride)
            ys = torch.arange(0, height - h + 1, stride)
            y1, x1 = torch.meshgrid(ys, xs, indexing="ij")
            x1, y1 = x1.reshape(-1), y1.reshape(-1)
            windows.append(torch.stack([x1, y1, x1 + w, y1 + h], dim=1))
    if not windows:  # image smaller than every window: propose the whole image
        return torch.tensor([[0, 0, width, height]])
    return torch.cat(windows)


def sliding_window_proposals(image: Tensor, scales: Sequence[int] = (32, 64, 128, 192),
                             ratios: Sequence[float] = (0.5, 1.0, 2.0), stride: int = 8,
                             max_proposals: int = 2000, nms_threshold: float = 0.7,
                             pre_nms_top_n: int | None = 12000,
                             return_scores: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Dense multi-scale sliding windows ranked by a hand-made centre-surround "objectness".

    A stand-in for Selective Search (the paper's baseline proposal method, Tables 1-2 and
    Figure 4), whose OpenCV implementation needs opencv-contrib. Like the RPN's anchors it
    enumerates windows of several scales and aspect ratios at every stride-th position, but
    instead of a learned score each window is scored by how different it is from its
    surroundings (the "colour contrast" cue of Alexe et al.'s objectness measure): the L2
    distance between the mean feature inside the window and in a surrounding ring (25% of the
    window size on each side, clipped to the image). Features are RGB plus the gradient
    magnitude, so both colour blobs and textured regions stand out. Means come from integral
    images, so all windows are scored at once. Windows are then de-duplicated with greedy NMS
    (IoU 0.7, as for RPN proposals) and the best max_proposals are kept. As for the RPN, only
    the pre_nms_top_n best windows enter NMS (its cost grows quadratically with their number).

    image: (3, H, W) float in [0, 1] or uint8. Returns (P, 4) float32 boxes, P <= max_proposals,
    inside the image, sorted by descending score (and their (P,) scores if return_scores).
    """
    img = _as_float_image(image)
    _, height, width = img.shape
    gray = img.mean(0)
    # Central-difference gradients; the border stays zero.
    gx = torch.zeros_like(gray)
    gy = torch.zeros_like(gray)
    gx[:, 1:-1] = (gray[:, 2:] - gray[:, :-2]) / 2
    gy[1:-1, :] = (gray[2:, :] - gray[:-2, :]) / 2
    features = torch.cat([img, torch.sqrt(gx ** 2 + gy ** 2)[None]])     # (4, H, W)
    integral = _integral(features)

    inner = _dense_windows(height, width, scales, ratios, stride)          # (N, 4) int64
    w = inner[:, 2] - inner[:, 0]
    h = inner[:, 3] - inner[:, 1]
    mx, my = (w + 3) // 4, (h + 3) // 4                                    # ring ~25% per side
    outer = torch.stack([(inner[:, 0] - mx).clamp(min=0), (inner[:, 1] - my).clamp(min=0),
                         (inner[:, 2] + mx).clamp(max=width), (inner[:, 3] + my).clamp(max=height)], 1)
    inner_area = (w * h).double()
    ring_area = ((outer[:, 2] - outer[:, 0]) * (outer[:, 3] - outer[:, 1])).double() - inner_area
    inner_sum = _box_sums(integral, inner)
    ring_sum = _box_sums(integral, outer) - inner_sum
    mean_in = inner_sum / inner_area[:, None]
    mean_ring = ring_sum / ring_area.clamp(min=1)[:, None]
    scores = (mean_in - mean_ring).norm(dim=1)
    scores[ring_area <= 0] = 0.0                     # the whole image has no surround

    scores = scores.float()
    if pre_nms_top_n is not None and len(scores) > pre_nms_top_n:
        top = scores.topk(pre_nms_top_n).indices
        inner, scores = inner[top], scores[top]
    boxes = inner.float()
    keep = nms(boxes, scores, nms_threshold)[:max_proposals]              # sorted by score
    return (boxes[keep], scores[keep]) if return_scores else boxes[keep]


def selective_search_proposals(image: Tensor, mode: str = "fast",
                               max_proposals: int | None = 2000) -> Tensor:
    """Selective Search (Uijlings et al., 2013) via ``cv2.ximgproc.segmentation``.

    image: (3, H, W) RGB float in [0, 1] or uint8. mode: "fast" or "quality" (the paper uses
    the "fast" mode). Returns (P, 4) float32 x1,y1,x2,y2 in OpenCV's output order (its
    hierarchical ranking). Requires opencv-contrib.
    """
    try:
        import cv2
        segmentation = cv2.ximgproc.segmentation
    except (ImportError, AttributeError) as err:
        raise ImportError("selective_search_proposals needs OpenCV's contrib modules "
                          "(cv2.ximgproc): `pip install opencv-contrib-python-headless` "
                          "(and uninstall plain opencv-python, which shadows it)") from err
    img = _as_float_image(image)
    rgb = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    ss = segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(rgb[:, :, ::-1]))                # OpenCV wants BGR
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality()
    else:
        raise ValueError(f"mode must be 'fast' or 'quality', got {mode!r}")
    rects = torch.as_tensor(np.asarray(ss.process()), dtype=torch.float32).reshape(-1, 4)
    boxes = torch.cat([rects[:, :2], rects[:, :2] + rects[:, 2:]], dim=1)  # xywh -> xyxy
    return boxes if max_proposals is None else boxes[:max_proposals]
