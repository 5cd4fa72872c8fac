"""Every checker of fasterrcnn_edu.exercises: the package's own function and the book's solution pass, known-wrong
implementations are caught with the right explanation, and nothing a reader's function does can crash,
hang, fool or change the checker (issue 22 item 1, issue 25 item 8)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import fasterrcnn_edu.boxes
import fasterrcnn_edu.nms
from fasterrcnn_edu import exercises, pieces
from fasterrcnn_edu.anchors import base_anchors, grid_anchors
from fasterrcnn_edu.boxes import box_iou, decode, encode
from fasterrcnn_edu.evaluation import voc_ap
from fasterrcnn_edu.labeling import pad_ground_truth, sample_balanced
from fasterrcnn_edu.lab import capstone
from fasterrcnn_edu.losses import rpn_losses
from fasterrcnn_edu.nms import nms, nms_readable
from fasterrcnn_edu.proposals import generate_proposals
from fasterrcnn_edu.roi_heads import pool_rois, roi_pool_readable, sample_rois

sys.path.insert(0, str(Path(__file__).parent))
from book_solutions import SOLUTIONS  # noqa: E402


# --- the package's own functions, in the checkers' signatures ----------------------------------
def package_sampler(labels, batch_size, fraction, generator):
    pos, neg = sample_balanced((labels == 1)[None], (labels == 0)[None], batch_size, fraction, generator)
    return pos[0], neg[0]


def package_rpn_loss(logits, deltas, targets, labels, num_locations, lam, beta):
    out = rpn_losses(logits[None], deltas[None], targets[None], (labels == 1)[None], (labels == 0)[None],
                     num_locations, lam, "locations", beta)
    return out["loss_objectness"], out["loss_rpn_box_reg"]


def package_proposals(anchors, scores, deltas, image_size, pre, post, thresh, min_size):
    logits = torch.log(scores) - torch.log1p(-scores)          # the sigmoid variant takes log-odds
    boxes, kept = generate_proposals(anchors, logits[None], deltas[None], torch.tensor([list(image_size)]), pre, post,
                                     thresh, min_size)
    return boxes[0], kept[0]


def package_sample_rois(proposals, gt, gt_labels, batch_size, fraction, fg, low, high, generator):
    padded, valid = pad_ground_truth([gt])
    labels = torch.zeros(valid.shape, dtype=torch.long)
    labels[valid] = gt_labels
    rois, roi_labels, _ = sample_rois([proposals], padded, labels, valid, batch_size, fraction, fg, low, high,
                                      generator=generator)
    used = roi_labels[0] >= 0
    return rois[0][used], roi_labels[0][used]


PACKAGE = {
    "iou": box_iou, "base_anchors": base_anchors, "grid_anchors": grid_anchors, "sample_anchors": package_sampler,
    "encode": encode, "decode": decode, "rpn_loss": package_rpn_loss, "nms": lambda b, s, t: nms(b, s, t),
    "proposals": package_proposals, "roi_pool": lambda f, r, p, s: pool_rois(f, r, p, s),
    "sample_rois": package_sample_rois, "average_precision": lambda r, p, m: voc_ap(r.numpy(), p.numpy(), m),
}


@pytest.mark.parametrize("name", sorted(PACKAGE))
def test_package_function_passes(name):
    result = exercises.check(name, PACKAGE[name], verbose=False)
    assert result.ok, result
    assert result.total >= 4


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_book_solution_passes(name):
    assert exercises.check(name, SOLUTIONS[name], verbose=False).ok


# --- wrong answers, two or more per checker ------------------------------------------------------
def base_ratio_inverted(base_size, ratios, scales):
    return base_anchors(base_size, [1 / r for r in ratios], scales)


def base_at_origin(base_size, ratios, scales):
    return base_anchors(base_size, ratios, scales) - base_size / 2


def base_scale_major(base_size, ratios, scales):
    a = base_anchors(base_size, ratios, scales).reshape(len(ratios), len(scales), 4)
    return a.transpose(0, 1).reshape(-1, 4)


def grid_anchor_major(base, feature_size, stride):
    return grid_anchors(base, feature_size, stride).reshape(-1, len(base), 4).transpose(0, 1).reshape(-1, 4)


def grid_xy_swapped(base, feature_size, stride):
    height, width = feature_size
    ys, xs = torch.meshgrid(torch.arange(height) * stride, torch.arange(width) * stride, indexing="ij")
    shifts = torch.stack([ys, xs, ys, xs], dim=-1).reshape(-1, 1, 4).float()
    return (shifts + base[None]).reshape(-1, 4)


def sampler_first_k(labels, batch_size, fraction, generator):
    pos, neg = labels == 1, labels == 0
    pos = pos & (pos.cumsum(0) <= int(batch_size * fraction))
    neg = neg & (neg.cumsum(0) <= batch_size - int(pos.sum()))
    return pos, neg


def sampler_no_cap(labels, batch_size, fraction, generator):
    """Takes every positive, not at most half the batch."""
    return package_sampler(labels, batch_size, 1.0, generator)


def sampler_global_rng(labels, batch_size, fraction, generator):
    return package_sampler(labels, batch_size, fraction, None)


def encode_from_corners(anchors, boxes):
    t = encode(anchors, boxes)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    t[:, 0], t[:, 1] = (boxes[:, 0] - anchors[:, 0]) / w, (boxes[:, 1] - anchors[:, 1]) / h
    return t


def encode_without_log(anchors, boxes):
    t = encode(anchors, boxes)
    return torch.cat([t[:, :2], t[:, 2:].exp() - 1], dim=1)


def decode_without_exp(anchors, deltas):
    return decode(anchors, torch.cat([deltas[:, :2], torch.log1p(deltas[:, 2:].clamp(min=-0.99))], dim=1))


def loss_over_n_cls(logits, deltas, targets, labels, num_locations, lam, beta):
    return package_rpn_loss(logits, deltas, targets, labels, int((labels >= 0).sum()), lam, beta)


def loss_with_mask_product(logits, deltas, targets, labels, num_locations, lam, beta):
    cls, _ = package_rpn_loss(logits, deltas, targets, labels, num_locations, lam, beta)
    x = (deltas - targets).abs()
    per_anchor = torch.where(x < beta, 0.5 * x ** 2 / beta, x - 0.5 * beta).sum(dim=1)
    return cls, lam * (per_anchor * (labels == 1)).sum() / num_locations       # 0 · NaN = NaN


def loss_cls_over_all_anchors(logits, deltas, targets, labels, num_locations, lam, beta):
    cls, reg = package_rpn_loss(logits, deltas, targets, labels, num_locations, lam, beta)
    return cls * int((labels >= 0).sum()) / len(labels), reg


def proposals_without_clip(anchors, scores, deltas, image_size, pre, post, thresh, min_size):
    return package_proposals(anchors, scores, deltas, (10 ** 6, 10 ** 6), pre, post, thresh, min_size)


def proposals_without_nms(anchors, scores, deltas, image_size, pre, post, thresh, min_size):
    return package_proposals(anchors, scores, deltas, image_size, pre, post, 1.0, min_size)


def roi_pool_wrong_image(features, rois, output_size, scale):
    return roi_pool_readable(features, torch.cat([torch.zeros(len(rois), 1), rois[:, 1:]], dim=1), output_size, scale)


def roi_pool_half_even(features, rois, output_size, scale):
    snapped = torch.round(rois[:, 1:] * scale)
    return roi_pool_readable(features, torch.cat([rois[:, :1], snapped], dim=1), output_size, 1.0)


def sample_rois_without_gt(proposals, gt, gt_labels, batch_size, fraction, fg, low, high, generator):
    """The ground-truth boxes are not added to the candidates."""
    rois, labels = package_sample_rois(proposals, gt, gt_labels, batch_size, fraction, fg, low, high, generator)
    keep = ~(rois[:, None, :] == gt[None]).all(dim=2).any(dim=1) if len(gt) else torch.ones(len(rois), dtype=torch.bool)
    return rois[keep], labels[keep]


def sample_rois_any_background(proposals, gt, gt_labels, batch_size, fraction, fg, low, high, generator):
    return package_sample_rois(proposals, gt, gt_labels, batch_size, fraction, fg, 0.0, high, generator)


def ap_over_ten(recall, precision, metric):
    ap = voc_ap(recall.numpy(), precision.numpy(), metric)
    return ap * 11 / 10 if metric else ap


def ap_without_envelope(recall, precision, metric):
    if metric:
        return voc_ap(recall.numpy(), precision.numpy(), metric)
    r = torch.cat([torch.zeros(1, dtype=torch.float64), recall, torch.ones(1, dtype=torch.float64)])
    p = torch.cat([torch.zeros(1, dtype=torch.float64), precision, torch.zeros(1, dtype=torch.float64)])
    change = torch.nonzero(r[1:] != r[:-1]).flatten() + 1
    return float(((r[change] - r[change - 1]) * p[change]).sum())


@pytest.mark.parametrize("name, fn, words", [
    ("iou", capstone.iou_without_union, "intersection alone"),
    ("base_anchors", base_ratio_inverted, "height / width"),
    ("base_anchors", base_at_origin, "centre every anchor on the first stride cell"),
    ("base_anchors", base_scale_major, "ratio-major"),
    ("grid_anchors", grid_anchor_major, "k anchors of one position"),
    ("grid_anchors", grid_xy_swapped, "x and y are swapped"),
    ("sample_anchors", sampler_first_k, "random sample"),
    ("sample_anchors", sampler_no_cap, "128 positives and 128 negatives"),
    ("sample_anchors", sampler_global_rng, "draw the random numbers from the `generator`"),
    ("encode", encode_from_corners, "measured from the corners"),
    ("encode", encode_without_log, "log-ratios"),
    ("decode", capstone.decode_wrong_centre, "the centre is not"),
    ("decode", decode_without_exp, "exp(t_w)"),
    ("rpn_loss", capstone.rpn_loss_without_n_reg, "not divided by N_reg"),
    ("rpn_loss", loss_over_n_cls, "divided by N_cls"),
    ("rpn_loss", loss_with_mask_product, "NaN"),
    ("rpn_loss", loss_cls_over_all_anchors, "averaged over every anchor"),
    ("nms", capstone.nms_never_suppresses, "should be suppressed"),
    ("proposals", proposals_without_clip, "clip the boxes"),
    ("proposals", proposals_without_nms, "NMS should have removed"),
    ("roi_pool", roi_pool_wrong_image, "come from image"),
    ("roi_pool", roi_pool_half_even, "half away from zero"),
    ("sample_rois", sample_rois_without_gt, "ground truth added to the candidates"),
    ("sample_rois", sample_rois_any_background, "below bg_iou_low"),
    ("average_precision", ap_over_ten, "11 recall points"),
    ("average_precision", ap_without_envelope, "envelope"),
])
def test_wrong_implementation_is_caught_and_explained(name, fn, words):
    result = exercises.check(name, fn, verbose=False)
    assert not result.ok and result.passed < result.total
    assert "differs" in repr(result) and words in repr(result), repr(result)


# --- issue 25, item 8: no hang, no fooling, no crash ---------------------------------------------
def test_a_hanging_function_is_stopped():
    def hangs(boxes, scores, threshold):
        while True:
            pass
    start = time.perf_counter()
    result = exercises.check("nms", hangs, verbose=False, timeout=0.5)
    assert time.perf_counter() - start < 5
    assert not result and "did not finish within 0.5 s" in repr(result)


def test_a_sleeping_function_is_stopped():
    start = time.perf_counter()
    result = exercises.check("iou", lambda a, b: time.sleep(60), verbose=False, timeout=0.3)
    assert time.perf_counter() - start < 5 and "did not finish" in repr(result)


def test_the_timeout_works_outside_the_main_thread():
    found = {}

    def hangs(boxes1, boxes2):
        while True:
            pass
    thread = threading.Thread(target=lambda: found.update(r=exercises.check("iou", hangs, verbose=False, timeout=0.5)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and "did not finish" in repr(found["r"])


def test_catching_exception_does_not_swallow_the_timeout():
    def stubborn(boxes1, boxes2):
        while True:
            try:
                time.sleep(10)
            except Exception:
                pass
    assert "did not finish" in repr(exercises.check("iou", stubborn, verbose=False, timeout=0.3))


def test_a_function_that_patches_the_package_fails_and_the_patch_is_undone():
    real_iou, real_readable = fasterrcnn_edu.boxes.box_iou, fasterrcnn_edu.nms.nms_readable

    def cheat(boxes, scores, threshold):
        answer = real_readable(boxes, scores, threshold)
        # From now on the package's NMS would suppress nothing: a cheat that keeps every box would pass.
        fasterrcnn_edu.nms.box_iou = lambda a, b: torch.zeros(a.shape[-2], b.shape[-2])
        return answer
    result = exercises.check("nms", cheat, verbose=False)
    assert not result and "changed the package" in repr(result) and "fasterrcnn_edu.nms.box_iou" in repr(result)
    assert fasterrcnn_edu.nms.box_iou is real_iou and fasterrcnn_edu.boxes.box_iou is real_iou
    assert not exercises.check("nms", capstone.nms_never_suppresses, verbose=False)     # the patch did not persist
    assert exercises.check("nms", real_readable, verbose=False)


def test_a_code_swap_is_undone():
    code = nms_readable.__code__

    def cheat(boxes, scores, threshold):
        answer = nms_readable(boxes, scores, threshold)
        nms_readable.__code__ = capstone.nms_never_suppresses.__code__
        return answer
    result = exercises.check("nms", cheat, verbose=False)
    assert not result and "nms_readable.__code__" in repr(result)
    assert nms_readable.__code__ is code


def test_a_patch_made_before_the_check_cannot_fool_it(monkeypatch):
    monkeypatch.setattr(fasterrcnn_edu.nms, "nms_steps", lambda boxes, scores, t: iter([(i, boxes[:0]) for i in
                                                                                       range(len(boxes))]))
    result = exercises.check("nms", capstone.nms_never_suppresses, verbose=False)
    assert not result and "had been replaced" in repr(result)


def test_a_use_block_cannot_change_the_reference():
    with exercises.use(nms=capstone.nms_never_suppresses):
        assert not exercises.check("nms", capstone.nms_never_suppresses, verbose=False)
        assert exercises.check("nms", nms_readable, verbose=False)


def test_a_function_that_mutates_its_input_is_told():
    def mutates(boxes1, boxes2):
        answer = box_iou(boxes1, boxes2)
        boxes1[:, 2] += 1
        return answer
    result = exercises.check("iou", mutates, verbose=False)
    assert not result and "changed its input `boxes1` in place" in repr(result)


@pytest.mark.parametrize("name, fn, words", [
    ("iou", lambda a, b: box_iou(a, b).to("meta"), "on device meta"),
    ("nms", lambda b, s, t: torch.full((2,), float("nan")), "whole-number indices"),
    ("nms", lambda b, s, t: torch.ones(len(b), dtype=torch.bool), "boolean mask"),
    ("nms", lambda b, s, t: [10 ** 6], "every index must be in"),
    ("rpn_loss", lambda *args: "a string", "two scalars"),
    ("proposals", lambda *args: (torch.zeros(3, 4, device="meta"), torch.zeros(3)), "on device meta"),
    ("average_precision", lambda r, p, m: torch.zeros(3), "expected a number"),
    ("label_anchors", lambda a, g, f, b: torch.full((len(a),), float("nan")), "NaN"),
])
def test_strange_results_are_explained_not_crashed(name, fn, words):
    result = exercises.check(name, fn, verbose=False)
    assert not result and words in repr(result), repr(result)


def test_every_piece_has_a_checker():
    assert set(pieces.NAMES) <= set(exercises.EXERCISES)


def test_the_table_of_references_is_read_only():
    import dataclasses
    with pytest.raises(TypeError):
        exercises.EXERCISES["nms"] = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        exercises.EXERCISES["nms"].reference = capstone.nms_never_suppresses


def test_the_chapters_stub_messages_are_unchanged():
    """Chapters 1-7 store the message of their exercise stubs (nbval compares it): one stub for every piece."""
    import json
    import re

    def stub(*args):
        raise NotImplementedError
    book = Path(__file__).resolve().parents[1] / "book"
    seen = []
    for notebook in sorted(book.glob("0*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and "exercises.check(" in source and "raise NotImplementedError" in source:
                names = re.findall(r'exercises\.check\("(\w+)"', source)
                stored = "".join("".join(o.get("text", "")) for o in cell["outputs"]).strip()
                assert stored == "\n".join(repr(exercises.check(n, stub, verbose=False)) for n in names), notebook.name
                seen += names
    assert sorted(seen) == sorted(exercises.EXERCISES)
