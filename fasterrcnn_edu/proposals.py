"""From RPN outputs to region proposals (paper §3.3, "Implementation Details").

decode the predicted deltas on every anchor → clip to the image → drop boxes smaller than a
minimum size (scaled with the image) → keep the top-N by objectness (12000 train / 6000 test)
→ NMS at IoU 0.7 → keep the top-N again (2000 train / 300 test).

Proposals are treated as constants by whatever consumes them: the paper's alternating training
fixes them, and its approximate joint training ignores their gradient w.r.t. box coordinates.

`generate_proposals` does it for a batch; `proposal_steps` is its readable twin for one image,
yielding each step's survivors (chapter 4 unrolls it; a test checks the two agree).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from fasterrcnn_edu.boxes import check_boxes, clip_boxes, decode, small_box_mask
from fasterrcnn_edu.nms import nms
from fasterrcnn_edu.pieces import piece


def objectness_scores(objectness: Tensor) -> Tensor:
    """Probability of "object" from either RPN variant: (B, A, 2) softmax logits or (B, A) sigmoid logits -> (B, A)."""
    if objectness.dim() == 3:
        return torch.softmax(objectness.float(), dim=-1)[..., 1]
    return torch.sigmoid(objectness.float())


@torch.no_grad()
def generate_proposals(anchors: Tensor, objectness: Tensor, deltas: Tensor, image_sizes: Tensor,
                       pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float = 0.7,
                       min_size: float | Tensor = 16.0) -> tuple[list[Tensor], list[Tensor]]:
    """Turn RPN predictions for B images into at most `post_nms_top_n` proposals each.

    anchors: (A, 4); objectness: (B, A, 2) or (B, A) logits; deltas: (B, A, 4);
    image_sizes: (B, 2) (height, width) of the resized images; min_size: a float or (B,) per-image
    minimum side in resized-image pixels. Returns per image boxes (P_b, 4) and scores (P_b,),
    sorted by descending objectness.
    """
    check_boxes(anchors, "anchors", ndim=2, where="generate_proposals")
    check_boxes(deltas, "deltas", ndim=3, where="generate_proposals")
    scores = objectness_scores(objectness)                                   # (B, A)
    boxes = clip_boxes(piece("decode", decode)(anchors[None], deltas), image_sizes)   # (B, A, 4)
    min_size = torch.as_tensor(min_size, dtype=boxes.dtype, device=boxes.device).reshape(-1, 1)
    # Small boxes are dropped by giving them a score below any real one, keeping shapes fixed.
    scores = torch.where(small_box_mask(boxes, min_size), scores, torch.full_like(scores, -1.0))

    # A stable sort, not topk(): equal scores (common once the RPN saturates) keep anchor order, so the
    # pre-NMS top-N does not depend on topk's unspecified tie order, which differs between devices.
    # (After it, torchvision's CUDA NMS kernel sorts again without the stable flag: on CUDA the
    # proposals of equal score may still come out in another order than on the CPU; see nms.py.)
    top_scores, top_index = torch.sort(scores, dim=1, descending=True, stable=True)
    top_scores, top_index = top_scores[:, :pre_nms_top_n], top_index[:, :pre_nms_top_n]    # (B, N)
    top_boxes = boxes.gather(1, top_index[..., None].expand(-1, -1, 4))

    proposals, proposal_scores = [], []
    for image_boxes, image_scores in zip(top_boxes, top_scores):             # a loop over images
        valid = image_scores >= 0
        image_boxes, image_scores = image_boxes[valid], image_scores[valid]
        keep = piece("nms", nms)(image_boxes, image_scores, nms_thresh, max_kept=post_nms_top_n)
        proposals.append(image_boxes[keep])
        proposal_scores.append(image_scores[keep])
    return proposals, proposal_scores


class ProposalStep(NamedTuple):
    """What survives one step of `proposal_steps`: index (n,) into the A anchors (best first from the
    top-N step on) and boxes (n, 4) x1,y1,x2,y2 in resized-image pixels."""
    name: str
    index: Tensor
    boxes: Tensor


def proposal_steps(anchors: Tensor, objectness: Tensor, deltas: Tensor, image_size, pre_nms_top_n: int,
                   post_nms_top_n: int, nms_thresh: float = 0.7, min_size: float | Tensor = 16.0
                   ) -> Iterator[ProposalStep]:
    """`generate_proposals` for one image, one step at a time: decoded, clipped, min size,
    top-N before NMS, NMS, top-N after NMS. The last step's boxes are exactly what
    `generate_proposals` returns for the image.

    anchors: (A, 4); objectness: (A, 2) or (A,) logits; deltas: (A, 4); image_size: (height, width)
    of the resized image; min_size: the minimum side in resized-image pixels.
    """
    check_boxes(anchors, "anchors", ndim=2, where="proposal_steps")
    check_boxes(deltas, "deltas", ndim=2, where="proposal_steps")
    scores = objectness_scores(objectness[None])[0]                          # (A,)
    index = torch.arange(anchors.shape[0], device=anchors.device)
    decoded = piece("decode", decode)(anchors, deltas)
    yield ProposalStep("decoded", index, decoded)
    boxes = clip_boxes(decoded, image_size)
    yield ProposalStep("clipped", index, boxes)
    index = torch.nonzero(small_box_mask(boxes, min_size)).flatten()
    yield ProposalStep("min size", index, boxes[index])
    # The same stable sort as generate_proposals: equal scores keep anchor order.
    index = index[torch.sort(scores[index], descending=True, stable=True).indices][:pre_nms_top_n]
    yield ProposalStep("top-N before NMS", index, boxes[index])
    index = index[piece("nms", nms)(boxes[index], scores[index], nms_thresh)]
    yield ProposalStep("NMS", index, boxes[index])
    index = index[:post_nms_top_n]
    yield ProposalStep("top-N after NMS", index, boxes[index])
