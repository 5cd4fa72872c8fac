"""Exercises on box regression and the RPN loss: encode and decode (paper Eq. 2), the loss (Eq. 1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fasterrcnn_edu.boxes import decode, encode
from fasterrcnn_edu.exercises.core import Case, Exercise, as_tensor, boxes, fmt, random_boxes, tensor_difference
from fasterrcnn_edu.losses import rpn_losses

T_NAMES = ("t_x", "t_y", "t_w", "t_h")
T_FORMULAS = ("(x − x_a) / w_a", "(y − y_a) / h_a", "log(w / w_a)", "log(h / h_a)")


def _centres(b: Tensor) -> Tensor:
    return torch.stack(((b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0],
                        b[..., 3] - b[..., 1]), dim=-1)


def encode_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    anchors = random_boxes(g, 40, size=200, max_side=120)
    return [
        Case("a box onto itself: all four targets are 0", (boxes([[10, 20, 42, 52]]), boxes([[10, 20, 42, 52]]))),
        Case("chapter 3's exercise: anchor (0, 0, 32, 32), box (8, 8, 40, 48)",
             (boxes([[0, 0, 32, 32]]), boxes([[8, 8, 40, 48]])),
             "x, y are box centres, w, h widths and heights: t_x = (x − x_a) / w_a, t_w = log(w / w_a)."),
        Case("a shift only: t_w = t_h = 0", (boxes([[0, 0, 20, 10]]), boxes([[10, 5, 30, 15]])),
             "t_x and t_y are measured from the anchor's centre, in units of the anchor's width and height."),
        Case("a box twice as wide, same centre: t_w = log 2", (boxes([[10, 0, 30, 10]]), boxes([[0, 0, 40, 10]])),
             "t_w = log(w / w_a): a log-ratio, not (w − w_a) / w_a."),
        Case("an anchor crossing the image boundary (negative coordinates)",
             (boxes([[-30, -20, 34, 44]]), boxes([[0, 0, 40, 30]]))),
        Case("no boxes: an empty (0, 4) result", (torch.zeros(0, 4), torch.zeros(0, 4))),
        Case("40 random anchor / box pairs", (anchors, anchors + torch.randn(40, 4, generator=g) * 6)),
    ]


def compare_encode(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "an (N, 4) tensor of targets",
                                            " (N, 4): (t_x, t_y, t_w, t_h) per box")
    if problem or where is None:
        return problem
    i, j = where
    reference, box = case.args[0][i], case.args[1][i]
    r, b = _centres(reference), _centres(box)
    text = (f"for anchor {fmt(reference)} (centre ({r[0]:.4g}, {r[1]:.4g}), {r[2]:.4g} × {r[3]:.4g}) and box {fmt(box)} "
            f"(centre ({b[0]:.4g}, {b[1]:.4g}), {b[2]:.4g} × {b[3]:.4g}), {T_NAMES[j]} = {T_FORMULAS[j]} = "
            f"{expected[i, j].item():.4f}; yours is {got[i, j].item():.4f}")
    if j < 2 and abs(got[i, j].item() - (box[j] - reference[j]).item() / r[j + 2].item()) < 1e-4:
        text += ". You measured from the corners: x and x_a are the centres of the box and of the anchor"
    elif j >= 2 and abs(got[i, j].item() - (b[j] / r[j] - 1).item()) < 1e-4:
        text += ". That is (w − w_a) / w_a: the size targets are log-ratios, log(w / w_a)"
    return text


def decode_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    anchors = random_boxes(g, 40, size=200, max_side=120)
    return [
        Case("zero deltas give the anchor back", (boxes([[10, 20, 42, 52]]), torch.zeros(1, 4))),
        Case("t_x = 0.5 moves the centre by half the anchor's width", (boxes([[0, 0, 20, 10]]),
                                                                      torch.tensor([[0.5, 0.0, 0.0, 0.0]])),
             "the new centre is x_a + t_x · w_a, with x_a the anchor's *centre*; the box is centre ± w / 2."),
        Case("t_w = log 2 doubles the width around the same centre", (boxes([[10, 0, 30, 10]]),
                                                                      torch.tensor([[0.0, 0.0, math.log(2), 0.0]])),
             "w = w_a · exp(t_w), centred on the predicted centre."),
        Case("negative deltas, an anchor crossing the image boundary",
             (boxes([[-30, -20, 34, 44]]), torch.tensor([[-0.3, 0.2, -0.5, 0.4]]))),
        Case("no boxes: an empty (0, 4) result", (torch.zeros(0, 4), torch.zeros(0, 4))),
        Case("40 random anchors and deltas", (anchors, torch.randn(40, 4, generator=g) * 0.4)),
    ]


def compare_decode(case: Case, expected: Tensor, got) -> str | None:
    got, where, problem = tensor_difference(expected, got, "an (N, 4) tensor of boxes",
                                            " (N, 4): x1, y1, x2, y2 per box")
    if problem or where is None:
        return problem
    i, _ = where
    reference, delta = case.args[0][i], case.args[1][i]
    e, o = _centres(expected[i]), _centres(got[i])
    text = (f"anchor {fmt(reference)} moved by deltas {fmt(delta)} should become {fmt(expected[i])} (centre "
            f"({e[0]:.4g}, {e[1]:.4g}), {e[2]:.4g} × {e[3]:.4g}); yours is {fmt(got[i])} (centre ({o[0]:.4g}, "
            f"{o[1]:.4g}), {o[2]:.4g} × {o[3]:.4g})")
    if torch.allclose(o[2:], e[2:], atol=1e-3) and not torch.allclose(o[:2], e[:2], atol=1e-3):
        text += (". The size is right and the centre is not: the centre is x_a + t_x · w_a from the anchor's centre "
                 "x_a = (x1 + x2) / 2, and the box spans centre ± w / 2")
    elif torch.allclose(o[:2], e[:2], atol=1e-3):
        text += ". The centre is right and the size is not: w = w_a · exp(t_w), h = h_a · exp(t_h)"
    return text


# ---------------------------------------------------------------------------------------------
# The RPN loss, Eq. 1
# ---------------------------------------------------------------------------------------------
def rpn_loss_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)

    def batch(anchors: int, positives: int, negatives: int, seed_logits: float = 1.0):
        logits = torch.randn(anchors, 2, generator=g) * seed_logits
        deltas = torch.randn(anchors, 4, generator=g) * 0.5
        targets = torch.randn(anchors, 4, generator=g) * 0.5
        labels = torch.full((anchors,), -1)
        order = torch.randperm(anchors, generator=g)
        labels[order[:positives]] = 1
        labels[order[positives:positives + negatives]] = 0
        targets[labels != 1] = float("nan")          # only positives have a box to regress to
        return logits, deltas, targets, labels
    one = (torch.zeros(2, 2), torch.zeros(2, 4), torch.tensor([[0.1, -0.2, 0.3, 0.0], [float("nan")] * 4]),
           torch.tensor([1, 0]))
    return [
        Case("one positive, one negative, zero logits: L_cls = log 2", (*one, 4, 1.0, 1.0),
             "L_cls is the log loss (cross-entropy) over (not object, object), averaged over the N_cls sampled anchors; "
             "the box term is λ / N_reg · Σ smooth L1 over the positives, with N_reg = num_locations."),
        Case("the book's image: 2880 anchors, 256 sampled (20 positive), 320 locations, λ = 10, β = 1/9",
             (*batch(2880, 20, 236), 320, 10.0, 1 / 9),
             "N_cls = the number of sampled anchors (labels 1 and 0); N_reg = num_locations, the number of anchor "
             "positions H·W (not N_cls, not the number of positives); the box term is λ / N_reg · Σ smooth L1."),
        Case("anchors outside the mini-batch (-1) count in neither term, and their NaN targets must not leak",
             (*batch(500, 10, 50), 60, 10.0, 1.0),
             "select the sampled anchors (or use torch.where), do not multiply by a 0/1 mask: 0 · NaN = NaN."),
        Case("no positive anchor: the box term is 0", (*batch(300, 0, 256), 40, 10.0, 1.0)),
        Case("λ = 1 and β = 1: the smooth L1 is quadratic below 1", (*batch(400, 30, 100, 3.0), 50, 1.0, 1.0),
             "smooth L1: 0.5 x² / β where |x| < β, |x| − 0.5 β elsewhere, summed over the 4 coordinates."),
    ]


def rpn_loss_reference(objectness, deltas, target_deltas, labels, num_locations, lam, beta) -> tuple[Tensor, Tensor]:
    losses = rpn_losses(objectness[None], deltas[None], target_deltas[None], (labels == 1)[None], (labels == 0)[None],
                        num_locations, lam, "locations", beta)
    return losses["loss_objectness"], losses["loss_rpn_box_reg"]


def compare_rpn_loss(case: Case, expected: tuple[Tensor, Tensor], got) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "expected two scalars, (loss_cls, loss_reg): the two terms of Eq. 1"
    values = []
    for name, value in zip(("loss_cls", "loss_reg"), got):
        value, problem = as_tensor(value, f"a scalar {name}")
        if problem:
            return f"{name}: {problem}"
        if value.numel() != 1:
            return f"{name} should be a scalar (sum the per-anchor losses), got shape {tuple(value.shape)}"
        values.append(value.reshape(()).double())
    labels, num_locations, lam = case.args[3], case.args[4], case.args[5]
    n_cls, n_pos = int((labels >= 0).sum()), int((labels == 1).sum())
    for name, e, o in zip(("loss_cls", "loss_reg"), expected, values):
        e = e.double()
        if torch.isclose(o, e, rtol=1e-4, atol=1e-6) and not o.isnan():
            continue
        text = (f"with {n_cls} sampled anchors ({n_pos} positive), num_locations = {num_locations} and λ = {lam:g}, "
                f"{name} should be {e.item():.6g}; yours is {o.item():.6g}")
        if o.isnan():
            text += ". NaN: the targets of non-positive anchors are NaN here; leave those anchors out before the sum"
        elif name == "loss_reg" and e > 0:
            for ratio, why in ((num_locations, "not divided by N_reg: divide the box term by N_reg = num_locations"),
                               (num_locations / max(n_cls, 1), "divided by N_cls; Eq. 1 divides the box term by "
                                                               "N_reg = num_locations, the number of anchor positions"),
                               (num_locations / max(n_pos, 1), "divided by the number of positives; Eq. 1 divides it "
                                                               "by N_reg = num_locations"),
                               (1 / lam, "without λ: multiply the box term by λ")):
                if torch.isclose(o, e * ratio, rtol=1e-4):
                    text += f". Your box term is {why}"
                    break
        elif name == "loss_cls":
            if torch.isclose(o * len(labels), e * n_cls, rtol=1e-4):
                text += ". You averaged over every anchor: N_cls counts the sampled anchors (labels 1 and 0) only"
        return text
    return None


EXERCISES = {
    "encode": Exercise(encode_cases, encode, compare_encode,
                       "encode(anchors (N, 4), boxes (N, 4)) -> (N, 4) targets (t_x, t_y, t_w, t_h), Eq. 2"),
    "decode": Exercise(decode_cases, decode, compare_decode,
                       "decode(anchors (N, 4), deltas (N, 4)) -> (N, 4) boxes x1, y1, x2, y2, the inverse of Eq. 2"),
    "rpn_loss": Exercise(rpn_loss_cases, rpn_loss_reference, compare_rpn_loss,
                         "rpn_loss(logits (A, 2), deltas (A, 4), target_deltas (A, 4), labels (A,) 1 / 0 / -1, "
                         "num_locations, lam, beta) -> (loss_cls, loss_reg), Eq. 1"),
}
