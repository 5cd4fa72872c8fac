"""Greedy NMS: the readable implementation keeps exactly what torchvision's kernel keeps, in the same order,
ties included (duplicated scores, duplicated boxes, IoU exactly at the threshold)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.nms import batched_nms, batched_nms_readable, nms, nms_readable, nms_steps, nms_top

KINDS = ("continuous", "grid", "duplicate_scores", "duplicate_boxes", "exact_threshold", "degenerate")


def _case(index: int):
    """Case `index` of ~200: boxes (N, 4), scores (N,), threshold; the kind cycles through KINDS."""
    g = torch.Generator().manual_seed(index)
    kind = KINDS[index % len(KINDS)]
    n = [0, 1, 2, 3, 7, 20, 60, 150, 300][index % 9]
    threshold = [0.0, 0.3, 0.5, 0.7, 1.0, 1 / 3, 0.25, float(torch.rand((), generator=g))][index % 8]
    scores = torch.rand(n, generator=g)
    if kind in ("grid", "duplicate_scores", "duplicate_boxes"):
        # Integer boxes on a small grid: many pairs with the same, exactly representable IoU.
        top_left = torch.randint(0, 12, (n, 2), generator=g).float()
        boxes = torch.cat([top_left, top_left + torch.randint(1, 8, (n, 2), generator=g).float()], dim=1)
    else:
        top_left = torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([top_left, top_left + 1 + torch.rand(n, 2, generator=g) * 40], dim=1)
    if kind == "duplicate_scores":
        scores = torch.randint(0, 3, (n,), generator=g).float() / 2
    if kind == "duplicate_boxes" and n > 1:
        copies = torch.randint(0, n, (n // 2,), generator=g)
        boxes[torch.randint(0, n, (n // 2,), generator=g)] = boxes[copies]
        scores[: n // 3] = scores[n // 3: 2 * (n // 3)]     # some duplicated (box, score) pairs as well
    if kind == "exact_threshold" and n > 1:
        # Box i+1 is box i cut to a fraction of its height: nested, IoU = fraction.
        # Fractions 0.5, 0.25, 0.75 are exact; 0.3 gives the float32 IoU 0.3f > 0.3 (as double).
        fraction = torch.tensor([0.5, 0.25, 0.3, 0.75, 1 / 3])[torch.randint(0, 5, (n // 2,), generator=g)]
        heights = torch.randint(1, 5, (n // 2,), generator=g).float() * 12
        boxes[0:n - 1:2, 3] = boxes[0:n - 1:2, 1] + heights[: len(boxes[0:n - 1:2])]
        boxes[1::2] = boxes[0:n - 1:2][: len(boxes[1::2])]
        boxes[1::2, 3] = boxes[1::2, 1] + heights[: len(boxes[1::2])] * fraction[: len(boxes[1::2])]
        if index % 2:
            # The threshold *is* the float32 IoU of one pair: an exact tie that must not suppress.
            threshold = float(box_iou(boxes[:1], boxes[1:2])[0, 0])
    if kind == "degenerate" and n > 1:
        boxes[: n // 4, 2] = boxes[: n // 4, 0]              # zero-width boxes: IoU 0 or NaN (0 / 0)
        boxes[n // 4: n // 2] = boxes[0]
    return kind, boxes, scores, threshold


CASES = range(216)


def test_cases_exercise_ties():
    """The generated cases really contain exact-threshold IoUs and duplicated scores and boxes."""
    exact_ties = duplicate_scores = duplicate_boxes = 0
    for index in CASES:
        _, boxes, scores, threshold = _case(index)
        if len(boxes) > 1:
            iou = box_iou(boxes, boxes)
            exact_ties += int((iou.double() == threshold).sum() > 0)
            exact_ties += int((iou == torch.tensor(threshold, dtype=torch.float32)).triu(1).sum() > 0)
            duplicate_scores += int(scores.unique().numel() < len(scores))
            duplicate_boxes += int(boxes.unique(dim=0).shape[0] < len(boxes))
    assert exact_ties >= 20 and duplicate_scores >= 20 and duplicate_boxes >= 20


@pytest.mark.parametrize("index", CASES)
def test_nms_readable_equals_torchvision(index):
    kind, boxes, scores, threshold = _case(index)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    kept = nms_readable(boxes, scores, threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == expected.tolist(), kind
    assert nms(boxes, scores, threshold).tolist() == expected.tolist()


@pytest.mark.parametrize("index", CASES)
def test_nms_top_keeps_the_first_boxes_greedy_nms_keeps(index):
    """Stopping early (in blocks of 4 or 256 boxes) keeps exactly the kernel's first max_kept boxes."""
    kind, boxes, scores, threshold = _case(index)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    for max_kept in (1, 5, 40):
        for block in (4, 256):
            kept = nms_top(boxes, scores, threshold, max_kept, min_block=block)
            assert kept.tolist() == expected[:max_kept].tolist(), (kind, max_kept, block)
        assert nms(boxes, scores, threshold, max_kept=max_kept).tolist() == expected[:max_kept].tolist()


def test_nms_top_stops_early(monkeypatch):
    """2000 disjoint boxes, max_kept=10: the kernel sees one block of 256 boxes, not all 2000."""
    import fasterrcnn_edu.nms as nms_module
    seen, kernel = [], torchvision.ops.nms

    def recording_kernel(boxes, scores, threshold):
        seen.append(len(boxes))
        return kernel(boxes, scores, threshold)

    monkeypatch.setattr(nms_module.torchvision.ops, "nms", recording_kernel)
    left = torch.arange(2000, dtype=torch.float32) * 10
    boxes = torch.stack([left, torch.zeros(2000), left + 5, torch.full((2000,), 5.0)], dim=1)
    scores = torch.linspace(1, 0, 2000)
    assert nms_top(boxes, scores, 0.5, 10).tolist() == list(range(10))
    assert seen == [256]


def test_nms_edge_cases():
    empty = torch.zeros(0, 4)
    assert nms_readable(empty, torch.zeros(0), 0.5).shape == (0,)
    assert nms_readable(empty, torch.zeros(0), 0.5).dtype == torch.int64
    assert nms(empty, torch.zeros(0), 0.5).shape == (0,)
    one = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert nms_readable(one, torch.tensor([0.1]), 0.5).tolist() == [0]
    # Identical boxes and scores: the lower index survives (stable order).
    same = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert nms_readable(same, torch.ones(3), 0.5).tolist() == [0] == torchvision.ops.nms(same, torch.ones(3), 0.5).tolist()
    # IoU 0.5 exactly with threshold 0.5: kept (suppression needs IoU > threshold).
    pair = torch.tensor([[0.0, 0, 4, 4], [0.0, 0, 4, 2]])
    assert nms_readable(pair, torch.tensor([1.0, 0.5]), 0.5).tolist() == [0, 1]
    assert nms_readable(pair, torch.tensor([1.0, 0.5]), 0.49).tolist() == [0]
    # IoU 1/3 in float32 (0.33333334) is above the threshold 1/3 in double: suppressed, as torchvision does.
    third = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10]])
    assert nms_readable(third, torch.tensor([1.0, 0.5]), 1 / 3).tolist() == [0]
    assert torchvision.ops.nms(third, torch.tensor([1.0, 0.5]), 1 / 3).tolist() == [0]
    # Inputs in other dtypes work too.
    assert nms_readable(third.double(), torch.tensor([0.5, 1.0]).half(), 0.3).tolist() == [1]


@pytest.mark.parametrize("seed", range(30))
def test_batched_nms(seed, random_boxes):
    torch.manual_seed(seed)
    n = [0, 1, 5, 40, 200][seed % 5]
    boxes = random_boxes(n, size=60, max_side=40)
    scores = torch.rand(n)
    if seed % 3 == 0:
        boxes = boxes.round()                           # exact ties within categories
        scores = (scores * 4).round()
    categories = torch.randint(0, 1 + seed % 4, (n,))
    threshold = [0.3, 0.5, 0.7][seed % 3]
    readable = batched_nms_readable(boxes, scores, categories, threshold)
    fast = batched_nms(boxes, scores, categories, threshold)
    assert readable.tolist() == fast.tolist()
    # Sorted by score; each category is plain NMS on its own members.
    assert (scores[fast][1:] <= scores[fast][:-1]).all()
    for c in categories.unique():
        members = torch.nonzero(categories == c).flatten()
        expected = members[torchvision.ops.nms(boxes[members], scores[members], threshold)]
        assert set(fast[categories[fast] == c].tolist()) == set(expected.tolist())
    if seed % 3 != 0:
        # torchvision's batched_nms offsets boxes per category, which perturbs IoUs at exact ties:
        # compare as sets on continuous inputs.
        assert set(fast.tolist()) == set(torchvision.ops.batched_nms(boxes, scores, categories, threshold).tolist())


def test_batched_nms_large_input_matches_torchvision(random_boxes):
    # Above 4000 boxes on CPU torchvision loops over categories too ("vanilla"): equal as sets.
    torch.manual_seed(0)
    boxes, scores = random_boxes(4500, size=300, max_side=60), torch.rand(4500)
    categories = torch.randint(0, 5, (4500,))
    kept = batched_nms(boxes, scores, categories, 0.5)
    assert set(kept.tolist()) == set(torchvision.ops.batched_nms(boxes, scores, categories, 0.5).tolist())


def test_batched_nms_keeps_overlapping_boxes_of_different_categories():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [1.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms_readable(boxes, scores, torch.tensor([0, 1, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms_readable(boxes, scores, torch.tensor([0, 1, 2]), 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([3, 3, 3]), 0.5).tolist() == [0]


@pytest.mark.parametrize("index", range(0, 216, 7))
def test_nms_steps_consistent(index):
    _, boxes, scores, threshold = _case(index)
    steps = list(nms_steps(boxes, scores, threshold))
    kept = [best for best, _ in steps]
    assert kept == torchvision.ops.nms(boxes, scores, threshold).tolist()
    # Kept boxes come best first.
    assert all(scores[a] >= scores[b] for a, b in zip(kept, kept[1:]))
    # Every box is either kept or suppressed, exactly once.
    suppressed = [i for _, s in steps for i in s.tolist()]
    assert sorted(kept + suppressed) == list(range(len(boxes)))
    for best, gone in steps:
        if len(gone):
            # A suppressed box overlaps its suppressor by more than the threshold and scores no higher.
            assert (box_iou(boxes[best][None], boxes[gone])[0].double() > threshold).all()
            assert (scores[gone] <= scores[best]).all()
    # Kept boxes never overlap an earlier kept box by more than the threshold.
    if len(kept) > 1:
        iou = box_iou(boxes[kept], boxes[kept]).double()
        assert not (iou.triu(1) > threshold).any()
