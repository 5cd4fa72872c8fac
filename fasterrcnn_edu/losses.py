"""The multi-task loss of the RPN (paper Eq. 1) and of the Fast R-CNN head (Fast R-CNN Eq. 1).

    L({p_i}, {t_i}) = 1/N_cls Σ_i L_cls(p_i, p_i*) + λ 1/N_reg Σ_i p_i* L_reg(t_i, t_i*)

L_cls is the log loss over object / not object, L_reg the smooth L1 loss of Fast R-CNN on the
box parameters of Eq. 2, counted for positive anchors only (p_i* = 1). The paper normalises by
N_cls = 256 (the mini-batch) and N_reg ≈ 2400 (the number of anchor locations) with λ = 10, so
both terms weigh about the same; the simpler "minibatch" option uses N_reg = N_cls.

All losses take full fixed-shape tensors plus sampling masks, so nothing here depends on how many
anchors or RoIs were sampled (no host synchronisation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_l1(input: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Fast R-CNN Eq. 3, elementwise: 0.5 x² / β if ``|x| < β`` else ``|x| - 0.5 β``."""
    return F.smooth_l1_loss(input, target, reduction="none", beta=beta)


def rpn_losses(objectness: Tensor, deltas: Tensor, target_deltas: Tensor, sampled_pos: Tensor,
               sampled_neg: Tensor, num_locations: int, lam: float = 10.0,
               normalization: str = "locations", beta: float = 1.0) -> dict[str, Tensor]:
    """Paper Eq. 1 for a batch of images.

    objectness: (B, A, 2) logits of (not object, object) for the 2k-score softmax, or (B, A) logits
    for the k-score sigmoid variant; deltas, target_deltas: (B, A, 4); sampled_pos, sampled_neg:
    (B, A) bool masks of the mini-batch; num_locations: H * W anchor positions per image.
    Returns {"loss_objectness", "loss_rpn_box_reg"} (torchvision's names, so training loops work with either).
    """
    sampled = sampled_pos | sampled_neg
    n_cls = sampled.sum().clamp(min=1)
    target = sampled_pos.long()
    if objectness.dim() == 3:
        per_anchor = F.cross_entropy(objectness.float().flatten(0, 1), target.flatten(), reduction="none")
    else:
        per_anchor = F.binary_cross_entropy_with_logits(objectness.float().flatten(), target.float().flatten(),
                                                        reduction="none")
    loss_cls = (per_anchor * sampled.flatten()).sum() / n_cls

    if normalization == "locations":
        n_reg = float(num_locations * objectness.shape[0])
    elif normalization == "minibatch":
        n_reg = n_cls
    else:
        raise ValueError(f"normalization must be 'locations' or 'minibatch', got {normalization!r}")
    # where(), not a product: targets of non-positive anchors may be undefined (no ground truth).
    # The targets are masked too, before smooth L1: a NaN there would make its gradient 0 * NaN = NaN.
    target_deltas = torch.where(sampled_pos[..., None], target_deltas, torch.zeros_like(target_deltas))
    reg = smooth_l1(deltas.float(), target_deltas, beta).sum(dim=-1)
    loss_reg = lam * torch.where(sampled_pos, reg, torch.zeros_like(reg)).sum() / n_reg
    return {"loss_objectness": loss_cls, "loss_rpn_box_reg": loss_reg}


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, target_deltas: Tensor,
                     lam: float = 1.0, beta: float = 1.0) -> dict[str, Tensor]:
    """Fast R-CNN Eq. 1 over the sampled RoIs of a batch.

    class_logits: (R, K + 1); box_deltas: (R, K, 4) class-specific; labels: (R,) int64 with 0 =
    background, 1..K = class, -1 = an unused (padding) slot; target_deltas: (R, 4) for the true class.
    Both terms are averaged over the used RoIs, as in Fast R-CNN; the box term counts foreground only.
    Returns {"loss_classifier", "loss_box_reg"}.
    """
    used = labels >= 0
    n_used = used.sum().clamp(min=1)
    loss_cls = F.cross_entropy(class_logits.float(), labels.clamp(min=0), reduction="none")
    loss_cls = (loss_cls * used).sum() / n_used

    foreground = labels > 0
    class_index = (labels - 1).clamp(min=0)
    chosen = box_deltas[torch.arange(labels.shape[0], device=labels.device), class_index]   # (R, 4)
    # Background and unused slots have no target (it may be NaN): mask it so no NaN reaches the gradient.
    target_deltas = torch.where(foreground[:, None], target_deltas, torch.zeros_like(target_deltas))
    reg = smooth_l1(chosen.float(), target_deltas, beta).sum(dim=-1)
    loss_reg = lam * torch.where(foreground, reg, torch.zeros_like(reg)).sum() / n_used
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_reg}
