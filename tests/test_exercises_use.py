"""`exercises.use`: the reader's pieces run inside the real detector, in training and in evaluation, and the
package's own are back afterwards, also after an error (issue 22 items 2 and 5)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from fasterrcnn_edu import Config, StageSchedule, exercises, pieces, train
from fasterrcnn_edu.boxes import box_iou, decode, encode
from fasterrcnn_edu.data import VOCDataset
from fasterrcnn_edu.evaluation import evaluate_voc, voc_ap
from fasterrcnn_edu.inference import evaluate_model, predict_dataset
from fasterrcnn_edu.nms import nms_readable

sys.path.insert(0, str(Path(__file__).parent))
from book_solutions import SOLUTIONS  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "shapes"
TINY = Config.book(joint=StageSchedule(2, 0.001, 2), warmup_iterations=0, rpn_pre_nms_top_n_train=200,
                   rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20)


@pytest.fixture(scope="module")
def data():
    trainval = VOCDataset(DATA, "trainval")
    return Subset(trainval, range(4)), Subset(VOCDataset(DATA, "test", classes=trainval.classes), range(2)), trainval.classes


def counting(calls: Counter, name: str, fn):
    def counted(*args):
        calls[name] += 1
        return fn(*args)
    return counted


def test_use_routes_training_and_evaluation_to_the_readers_pieces(data):
    train_set, test_set, classes = data
    calls = Counter()
    mine = {name: counting(calls, name, SOLUTIONS[name]) for name in
            ("iou", "label_anchors", "sample_anchors", "encode", "decode", "rpn_loss", "nms", "proposals",
             "roi_pool", "sample_rois", "average_precision", "base_anchors", "grid_anchors")}
    with exercises.use(**mine):
        model = train(train_set, TINY, "joint", progress=False, classes=classes).model
        trained = Counter(calls)
        metrics = evaluate_model(model.eval(), test_set, classes, proposal_counts=(20,))
    # Training: 2 steps of 2 images. Every piece the training path uses was the reader's.
    for name in ("label_anchors", "sample_anchors", "rpn_loss", "proposals", "sample_rois", "roi_pool", "encode"):
        assert trained[name] >= 2, (name, trained)
    assert trained["label_anchors"] == 4 and trained["rpn_loss"] == 2           # per image, per step
    assert trained["base_anchors"] >= 1 and trained["grid_anchors"] >= 1
    # Evaluation: proposals and detections of the 2 test images, then one AP per class and metric.
    evaluated = calls - trained
    for name in ("proposals", "decode", "roi_pool", "nms", "average_precision"):
        assert evaluated[name] >= 1, (name, evaluated)
    assert evaluated["proposals"] == 4            # 2 images: once for the detections, once for the proposal recall
    assert evaluated["average_precision"] >= len(classes)
    assert "label_anchors" not in evaluated and "rpn_loss" not in evaluated
    assert pieces.overrides() == {}
    # Outside the block the package's own pieces are back: nothing counts any more.
    before = Counter(calls)
    predict_dataset(model, test_set)
    evaluate_voc(metrics["detections"], metrics["targets"], len(classes) + 1)
    assert calls == before


def test_use_restores_the_package_after_an_error():
    with pytest.raises(RuntimeError, match="inside the block"):
        with exercises.use(nms=lambda b, s, t: torch.arange(len(b)), iou=box_iou):
            assert set(pieces.overrides()) == {"nms", "iou"}
            raise RuntimeError("inside the block")
    assert pieces.overrides() == {}


def test_use_restores_the_package_after_the_readers_piece_fails(data):
    train_set, _, classes = data

    def broken(*args):
        raise ValueError("my rpn_loss is broken")
    with pytest.raises(ValueError, match="my rpn_loss is broken"):
        with exercises.use(rpn_loss=broken):
            train(train_set, TINY, "joint", progress=False, classes=classes)
    assert pieces.overrides() == {}


def test_nested_use_blocks_stack():
    def first(b, s, t):
        return nms_readable(b, s, t)

    def second(b, s, t):
        return nms_readable(b, s, t)
    with exercises.use(nms=first):
        outer = pieces.overrides()["nms"]
        with exercises.use(nms=second, decode=decode):
            assert pieces.overrides()["nms"] is not outer and "decode" in pieces.overrides()
        assert pieces.overrides() == {"nms": outer}
    assert pieces.overrides() == {}


def test_use_with_the_packages_own_functions_trains_the_same_detector(data):
    """Pieces that compute what the package computes give the same losses, step by step: the seams
    and adapters change nothing but who does the work (deterministic pieces only; the samplers
    would draw other random numbers)."""
    train_set, _, classes = data
    package = train(train_set, TINY, "joint", progress=False, classes=classes, log_every=1).log
    with exercises.use(iou=box_iou, encode=encode, decode=decode, nms=nms_readable,
                       average_precision=lambda r, p, m: voc_ap(r.numpy(), p.numpy(), m)):
        ours = train(train_set, TINY, "joint", progress=False, classes=classes, log_every=1).log
    for a, b in zip(package, ours):
        for key in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_use_refuses_unknown_pieces_and_non_functions():
    with pytest.raises(ValueError, match="unknown piece"):
        with exercises.use(nsm=nms_readable):
            pass
    with pytest.raises(TypeError, match="expected a function"):
        with exercises.use(nms=3):
            pass
    assert pieces.overrides() == {}
