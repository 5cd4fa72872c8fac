"""The RPN loss (paper Eq. 1) and the Fast R-CNN loss with hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from fasterrcnn_edu.losses import fast_rcnn_losses, rpn_losses, smooth_l1


def _rpn_case(batch=1, anchors=6):
    """Anchor 0 positive, anchors 1-3 negative, 4 positive-but-unsampled, 5 ignored (per image)."""
    pos = torch.zeros(batch, anchors, dtype=torch.bool)
    neg = torch.zeros_like(pos)
    pos[:, 0] = True
    neg[:, 1:4] = True
    return pos, neg


def test_smooth_l1_hand_values():
    x = torch.tensor([0.0, 0.5, -0.5, 1.0, 3.0, -2.0])
    torch.testing.assert_close(smooth_l1(x, torch.zeros(6)), torch.tensor([0.0, 0.125, 0.125, 0.5, 2.5, 1.5]))
    beta = 1 / 9
    torch.testing.assert_close(smooth_l1(x, torch.zeros(6), beta),
                               torch.tensor([0.0, 0.5 - beta / 2, 0.5 - beta / 2, 1 - beta / 2, 3 - beta / 2, 2 - beta / 2]))


@pytest.mark.parametrize("sigmoid", [False, True])
def test_rpn_classification_log2_at_zero_logits(sigmoid):
    pos, neg = _rpn_case(batch=2)
    objectness = torch.zeros(2, 6) if sigmoid else torch.zeros(2, 6, 2)
    # Unsampled anchors carry absurd logits: they must not count.
    if sigmoid:
        objectness[:, 4:] = -50.0
    else:
        objectness[:, 4:, 1] = -50.0
    losses = rpn_losses(objectness, torch.zeros(2, 6, 4), torch.zeros(2, 6, 4), pos, neg, num_locations=3)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    torch.testing.assert_close(losses["loss_objectness"], torch.tensor(math.log(2.0)))
    assert losses["loss_rpn_box_reg"].item() == 0.0


def test_rpn_classification_hand_values():
    pos, neg = _rpn_case()
    # Softmax logits (not object, object): positive anchor p = sigmoid(2), negatives p = sigmoid(-1), 0.5, sigmoid(1).
    softmax = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(1))) / 4
    losses = rpn_losses(softmax, torch.zeros(1, 6, 4), torch.zeros(1, 6, 4), pos, neg, num_locations=6)
    torch.testing.assert_close(losses["loss_objectness"], torch.tensor(expected))
    # The k-score sigmoid variant with the logit difference gives the same probabilities.
    sigmoid = softmax[..., 1] - softmax[..., 0]
    losses = rpn_losses(sigmoid, torch.zeros(1, 6, 4), torch.zeros(1, 6, 4), pos, neg, num_locations=6)
    torch.testing.assert_close(losses["loss_objectness"], torch.tensor(expected))


def test_rpn_regression_normalisations_and_lambda():
    pos, neg = _rpn_case(batch=2)
    deltas = torch.zeros(2, 6, 4)
    targets = torch.zeros(2, 6, 4)
    targets[:, 0, 0] = 0.5          # positive: smooth L1 (beta 1) = 0.125 per image
    targets[:, 0, 2] = -3.0         #           + 2.5
    targets[:, 1:, :] = 7.0         # negatives, unsampled and ignored anchors: never regressed
    per_image = 0.125 + 2.5
    objectness = torch.zeros(2, 6, 2)
    # "locations" (paper Eq. 1): N_reg = H * W anchor locations per image, times the images.
    loc = rpn_losses(objectness, deltas, targets, pos, neg, num_locations=20, lam=10.0)
    torch.testing.assert_close(loc["loss_rpn_box_reg"], torch.tensor(10.0 * 2 * per_image / (20 * 2)))
    # "minibatch": N_reg = N_cls = the 8 sampled anchors of the batch.
    mb = rpn_losses(objectness, deltas, targets, pos, neg, num_locations=20, lam=10.0, normalization="minibatch")
    torch.testing.assert_close(mb["loss_rpn_box_reg"], torch.tensor(10.0 * 2 * per_image / 8))
    # λ scales the term linearly; beta changes smooth L1.
    lam1 = rpn_losses(objectness, deltas, targets, pos, neg, num_locations=20, lam=1.0)
    torch.testing.assert_close(lam1["loss_rpn_box_reg"] * 10, loc["loss_rpn_box_reg"])
    beta = rpn_losses(objectness, deltas, targets, pos, neg, num_locations=20, lam=1.0, beta=1 / 9)
    torch.testing.assert_close(beta["loss_rpn_box_reg"], torch.tensor(2 * (0.5 - 1 / 18 + 3 - 1 / 18) / 40))
    # The classification term ignores the normalisation choice.
    torch.testing.assert_close(loc["loss_objectness"], mb["loss_objectness"])
    with pytest.raises(ValueError, match="normalization"):
        rpn_losses(objectness, deltas, targets, pos, neg, 20, normalization="anchors")


def test_rpn_regression_counts_positives_only():
    torch.manual_seed(0)
    pos, neg = _rpn_case()
    deltas = torch.randn(1, 6, 4, requires_grad=True)
    targets = torch.randn(1, 6, 4)
    losses = rpn_losses(torch.zeros(1, 6, 2), deltas, targets, pos, neg, num_locations=1, lam=1.0)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], smooth_l1(deltas[0, 0], targets[0, 0]).sum())
    losses["loss_rpn_box_reg"].backward()
    assert deltas.grad[0, 0].abs().sum() > 0 and (deltas.grad[0, 1:] == 0).all()


@pytest.mark.parametrize("sigmoid", [False, True])
def test_rpn_losses_finite_with_undefined_targets(sigmoid):
    pos, neg = _rpn_case()
    objectness = torch.zeros(1, 6, requires_grad=True) if sigmoid else torch.zeros(1, 6, 2, requires_grad=True)
    deltas = torch.zeros(1, 6, 4, requires_grad=True)
    targets = torch.zeros(1, 6, 4)
    targets[0, 1] = float("nan")     # a negative anchor: no ground truth to regress to
    targets[0, 2] = float("inf")
    targets[0, 4] = float("-inf")    # positive but unsampled
    targets[0, 5] = float("nan")     # ignored
    for normalization in ("locations", "minibatch"):
        losses = rpn_losses(objectness, deltas, targets, pos, neg, 4, normalization=normalization)
        total = sum(losses.values())
        assert torch.isfinite(total)
        deltas.grad = objectness.grad = None
        total.backward()
        assert torch.isfinite(deltas.grad).all() and torch.isfinite(objectness.grad).all()


def test_rpn_losses_empty_minibatch():
    # No sampled anchor at all: zero, not 0/0.
    none = torch.zeros(1, 6, dtype=torch.bool)
    losses = rpn_losses(torch.zeros(1, 6, 2), torch.zeros(1, 6, 4), torch.zeros(1, 6, 4), none, none, 3,
                        normalization="minibatch")
    assert losses["loss_objectness"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0


def test_fast_rcnn_losses_hand_values():
    # 3 classes + background; RoI 0: class 2, RoI 1: background, RoI 2: unused slot, RoI 3: class 1.
    labels = torch.tensor([2, 0, -1, 1])
    logits = torch.zeros(4, 4)
    logits[2] = torch.tensor([-100.0, 100.0, 0.0, 0.0])     # would cost ~200 if the slot counted
    targets = torch.tensor([[0.1, 0.2, 0.3, 0.4], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.0, 2.0]])
    deltas = torch.full((4, 3, 4), 5.0)                      # wrong everywhere ...
    deltas[0, 1] = torch.tensor([0.1, 0.2, 0.3, 0.4])         # ... except RoI 0's class-2 slot (exact)
    deltas[3, 0] = torch.tensor([0.0, 0.0, 0.0, 0.5])         # ... and RoI 3's class-1 slot (off by 1.5)
    losses = fast_rcnn_losses(logits, deltas, labels, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    torch.testing.assert_close(losses["loss_classifier"], torch.tensor(math.log(4.0)))   # 3 used RoIs, uniform
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor((0.0 + 1.0) / 3))    # |1.5| - 0.5 = 1.0
    torch.testing.assert_close(fast_rcnn_losses(logits, deltas, labels, targets, lam=2.0)["loss_box_reg"],
                               torch.tensor(2.0 / 3))
    torch.testing.assert_close(fast_rcnn_losses(logits, deltas, labels, targets, beta=0.5)["loss_box_reg"],
                               torch.tensor((1.5 - 0.25) / 3))


def test_fast_rcnn_losses_gradients_and_undefined_targets():
    torch.manual_seed(0)
    labels = torch.tensor([1, 0, -1, 2])
    logits = torch.randn(4, 3, requires_grad=True)
    deltas = torch.randn(4, 2, 4, requires_grad=True)
    targets = torch.randn(4, 4)
    targets[1] = float("nan")
    targets[2] = float("inf")
    losses = fast_rcnn_losses(logits, deltas, labels, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(deltas.grad).all() and torch.isfinite(logits.grad).all()
    # Only the true-class slots of foreground RoIs receive a box gradient; unused slots no class gradient.
    has_grad = deltas.grad.abs().sum(-1) > 0
    assert has_grad.tolist() == [[True, False], [False, False], [False, False], [False, True]]
    assert (logits.grad[2] == 0).all() and (logits.grad[1] != 0).all()
    # Only unused slots: zero, not NaN.
    empty = fast_rcnn_losses(torch.zeros(2, 3), torch.zeros(2, 2, 4), torch.tensor([-1, -1]), torch.zeros(2, 4))
    assert empty["loss_classifier"].item() == 0.0 and empty["loss_box_reg"].item() == 0.0
