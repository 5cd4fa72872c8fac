"""inference.predict_dataset_and_proposals: evaluation's one backbone pass gives exactly the two passes' results."""
from pathlib import Path

import torch
from torch.utils.data import Subset

from fasterrcnn_edu.checkpoint import load_model
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.data import VOCDataset
from fasterrcnn_edu.lab.ablations import same_weights
from fasterrcnn_edu.inference import predict_dataset, predict_dataset_and_proposals, predict_proposals
from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN

ROOT = Path(__file__).resolve().parents[1]


def _assert_same(one_pass, detections, targets, proposals):
    found, their_targets, boxes = one_pass
    assert len(found) == len(detections) and [t["image_id"] for t in their_targets] == [t["image_id"] for t in targets]
    assert all(same_weights(ours, theirs) for ours, theirs in zip(found, detections))   # dicts of tensors
    assert all(torch.equal(a, b) for a, b in zip(boxes, proposals))


def test_one_pass_equals_predict_dataset_and_predict_proposals():
    model, classes = load_model(ROOT / "data" / "reference_model.pt")
    test = Subset(VOCDataset(ROOT / "data" / "shapes", "test", classes=classes), range(6))   # batches of 4 and 2
    detections, targets = predict_dataset(model, test)
    proposals = predict_proposals(model, test, 2000)
    assert sum(len(d["boxes"]) for d in detections) > 0 and all(len(p) > 300 for p in proposals)
    _assert_same(predict_dataset_and_proposals(model, test, 2000), detections, targets, proposals)


def test_an_unshared_model_proposes_with_its_own_rpn_network():
    """UnsharedFasterRCNN's proposals come from `rpn_net`, whose backbone is not the detector's."""
    cfg = Config.book(num_classes=7)
    torch.manual_seed(0)
    model = UnsharedFasterRCNN(FasterRCNN(cfg), FasterRCNN(cfg)).eval()
    test = Subset(VOCDataset(ROOT / "data" / "shapes", "test"), range(2))
    detections, targets = predict_dataset(model, test)
    proposals = predict_proposals(model, test, 300)
    assert all(torch.equal(a, b) for a, b in zip(proposals, predict_proposals(model.rpn_net, test, 300)))
    _assert_same(predict_dataset_and_proposals(model, test, 300), detections, targets, proposals)
