"""The whole detector: losses and gradients, eval output format, the 4-step training entry points, the
backbones, and an overfit test that trains it end to end on a generated image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from fasterrcnn_edu.backbones import build_backbone
from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.model import FasterRCNN

LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def _tiny_config(**overrides) -> Config:
    """Book preset on 128×160 images (no rescaling of a 128×160 input), 2 classes + background."""
    return Config.book(**{"num_classes": 3, "min_size": 128, "max_size": 160, **overrides})


def _tiny_batch():
    images = [torch.rand(3, 128, 160), torch.rand(3, 120, 150)]     # the second is rescaled by 128 / 120
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 150.0, 110.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[30.0, 30.0, 100.0, 80.0]]), "labels": torch.tensor([2])}]
    return images, targets


def _assert_finite_gradients(model: nn.Module, modules: nn.Module | None = None) -> None:
    for name, parameter in (modules or model).named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("backbone, cls_loss", [("small", "softmax"), ("zf", "softmax"), ("small", "sigmoid")])
def test_training_losses_and_gradients(backbone, cls_loss):
    torch.manual_seed(0)
    model = FasterRCNN(_tiny_config(backbone=backbone, rpn_cls_loss=cls_loss))
    model.train()
    images, targets = _tiny_batch()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), name
    # Untrained: about log 2 for objectness and log 3 for the 3-way classifier; boxes to regress exist.
    assert 0.5 < losses["loss_objectness"].item() < 0.9
    assert 0.8 < losses["loss_classifier"].item() < 1.4
    assert losses["loss_rpn_box_reg"].item() > 0 and losses["loss_box_reg"].item() > 0
    sum(losses.values()).backward()
    _assert_finite_gradients(model)
    # The RPN's objectness layer has k (sigmoid) or 2k (softmax) outputs.
    assert model.rpn.head.cls.out_channels == (18 if cls_loss == "softmax" else 9)


def test_training_does_not_change_targets_or_need_gradients_for_images():
    torch.manual_seed(0)
    model = FasterRCNN(_tiny_config()).train()
    images, targets = _tiny_batch()
    before = [t["boxes"].clone() for t in targets]
    model(images, targets)
    assert all(torch.equal(t["boxes"], b) for t, b in zip(targets, before))
    with pytest.raises(ValueError, match="targets"):
        model(images)


def test_eval_output_in_original_image_pixels():
    """Book preset (shorter side 256): a 512×640 input is halved inside; boxes come back in input pixels."""
    torch.manual_seed(0)
    model = FasterRCNN(Config.book(num_classes=3)).eval()
    image = torch.rand(3, 512, 640)
    with torch.no_grad():
        (detection,) = model([image])
        # The same pipeline by hand, stopping before the boxes are mapped back.
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        resized, _ = model.roi_heads(features, model.propose(batch, features), batch.image_sizes)
    assert batch.image_sizes.tolist() == [[256, 320]] and batch.tensors.shape == (1, 3, 256, 320)
    assert set(detection) == {"boxes", "labels", "scores"}
    boxes, labels, scores = detection["boxes"], detection["labels"], detection["scores"]
    assert 0 < len(boxes) <= 100 and boxes.shape == (len(boxes), 4) and boxes.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == scores.shape == (len(boxes),)
    assert ((labels >= 1) & (labels <= 2)).all()
    assert (scores[1:] <= scores[:-1]).all() and (scores > 0.05).all() and (scores <= 1).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 512).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    torch.testing.assert_close(boxes, resized[0]["boxes"] * 2)
    assert boxes[:, 2].max() > 320 or boxes[:, 3].max() > 256       # really in the larger frame
    # A batch of two differently sized images: each gets its own frame back.
    with torch.no_grad():
        small, large = model([torch.rand(3, 128, 160), image])
    assert (small["boxes"][:, 2] <= 160).all() and (small["boxes"][:, 3] <= 128).all()
    assert (large["boxes"][:, 2] <= 640).all() and (large["boxes"][:, 3] <= 512).all()


def test_image_without_objects_trains():
    torch.manual_seed(0)
    model = FasterRCNN(_tiny_config()).train()
    images, targets = _tiny_batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for batch_targets in ([targets[0], empty], [empty, empty]):
        model.zero_grad()
        losses = model(images, batch_targets)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        _assert_finite_gradients(model)
    # Nothing to regress to at all: both box terms are exactly zero, the classification terms are not.
    assert losses["loss_rpn_box_reg"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_objectness"].item() > 0 and losses["loss_classifier"].item() > 0


def test_rpn_losses_and_detector_losses_with_proposer():
    torch.manual_seed(0)
    model = FasterRCNN(_tiny_config()).train()
    proposer = FasterRCNN(_tiny_config()).train()
    images, targets = _tiny_batch()
    # Steps 1 and 3: the RPN alone; the Fast R-CNN head is not touched.
    rpn = model.rpn_losses(images, targets)
    assert set(rpn) == {"loss_objectness", "loss_rpn_box_reg"} and all(torch.isfinite(v) for v in rpn.values())
    sum(rpn.values()).backward()
    _assert_finite_gradients(model, model.rpn)
    _assert_finite_gradients(model, model.backbone)
    assert all(p.grad is None for p in model.roi_heads.parameters())
    # Steps 2 and 4: the detector on another network's proposals; neither RPN gets a gradient.
    model.zero_grad(set_to_none=True)
    det = model.detector_losses(images, targets, proposer=proposer)
    assert set(det) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in det.values())
    sum(det.values()).backward()
    _assert_finite_gradients(model, model.roi_heads)
    _assert_finite_gradients(model, model.backbone)
    assert all(p.grad is None for p in model.rpn.parameters())
    assert all(p.grad is None for p in proposer.parameters())
    # Without a proposer the model's own RPN proposes.
    model.zero_grad(set_to_none=True)
    own = model.detector_losses(images, targets)
    assert set(own) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in own.values())


def test_set_generator_makes_sampling_reproducible():
    torch.manual_seed(0)
    model = FasterRCNN(_tiny_config()).train()
    images, targets = _tiny_batch()
    runs = []
    for global_seed in (1, 2):
        model.set_generator(torch.Generator().manual_seed(5))
        torch.manual_seed(global_seed)                  # must not matter: both samplers use the generator
        runs.append({k: v.item() for k, v in model(images, targets).items()})
    assert runs[0] == runs[1]


def test_channels_last_is_a_speed_setting_only():
    """Training feeds the backbone NHWC tensors (cfg.channels_last); the losses and gradients equal
    the NCHW ones up to float rounding, and eval stays NCHW."""
    images, targets = _tiny_batch()
    seen = []
    results = {}
    for channels_last in (True, False):
        torch.manual_seed(0)
        model = FasterRCNN(_tiny_config(channels_last=channels_last)).train()
        model.backbone.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        model.set_generator(torch.Generator().manual_seed(5))
        losses = model(images, targets)
        sum(losses.values()).backward()
        results[channels_last] = (losses, model.rpn.head.conv.weight.grad.clone())
        model.eval()
        with torch.no_grad():
            model(images[:1])
    assert seen == [True, False, False, False]       # train NHWC, eval NCHW; off: NCHW throughout
    for key in LOSS_KEYS:
        torch.testing.assert_close(results[True][0][key], results[False][0][key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-3, atol=1e-6)


def test_vgg16_backbone_builds_and_freezes_conv1_conv2():
    """The paper preset builds VGG-16 without downloading anything; conv1_1..conv2_2 stay fixed."""
    torch.manual_seed(0)
    model = FasterRCNN(Config.paper(min_size=64, max_size=64, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=8))
    backbone, head = model.backbone, model.roi_heads.box_head
    convs = [m for m in backbone.body if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and backbone.stride == 16 and backbone.out_channels == 512
    # conv1_1, conv1_2, conv2_1, conv2_2 fixed (released code); conv3_1 onwards trained.
    assert [c.weight.requires_grad for c in convs] == [False] * 4 + [True] * 9
    assert [c.bias.requires_grad for c in convs] == [False] * 4 + [True] * 9
    assert not isinstance(list(backbone.body)[-1], nn.MaxPool2d)     # pool5 removed: stride 16, not 32
    assert head.out_features == 4096 and model.rpn.head.conv.out_channels == 512 and model.rpn.head.num_anchors == 9
    model.eval()
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)
        assert head(torch.rand(2, 512, 7, 7)).shape == (2, 4096)
        (detection,) = model([torch.rand(3, 64, 64)])
    assert detection["boxes"].shape[1] == 4 and len(detection["boxes"]) <= 100
    assert ((detection["labels"] >= 1) & (detection["labels"] <= 20)).all()
    # build_backbone honours other frozen_layers counts.
    backbone, _ = build_backbone("zf", 6, 64, frozen_layers=2)
    assert [c.weight.requires_grad for c in backbone.body if isinstance(c, nn.Conv2d)] == [False] * 2 + [True] * 3


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        build_backbone("small", 7, 256, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("resnet", 7, 256)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_step_and_inference_on_cuda():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = FasterRCNN(_tiny_config()).to(device).train()
    model.set_generator(torch.Generator(device=device).manual_seed(0))
    images, targets = _tiny_batch()
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(v.device.type == "cuda" and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    _assert_finite_gradients(model)
    optimizer.step()
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert det["boxes"].device.type == "cuda" and det["labels"].dtype == torch.int64
        assert (det["boxes"][:, 2] <= image.shape[-1]).all() and (det["boxes"][:, 3] <= image.shape[-2]).all()


# ---------------------------------------------------------------------------------------------
# Overfitting one image: the end-to-end check that every part fits together
# ---------------------------------------------------------------------------------------------
def _shapes_image():
    """A 256×320 image with a filled rectangle (class 1) and a filled ellipse (class 2)."""
    image = Image.new("RGB", (320, 256), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 48, 135, 119], fill=(230, 60, 50))          # PIL's corners are inclusive
    draw.ellipse([176, 104, 271, 215], fill=(60, 120, 230))
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    target = {"boxes": torch.tensor([[40.0, 48.0, 136.0, 120.0], [176.0, 104.0, 272.0, 216.0]]),
              "labels": torch.tensor([1, 2])}
    return tensor, target


@pytest.mark.slow
def test_overfit_two_shapes():
    torch.manual_seed(0)
    image, target = _shapes_image()
    cfg = Config.book(num_classes=3, rpn_batch_size=128, roi_batch_size=32,
                      rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=150,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50)
    model = FasterRCNN(cfg)
    model.set_generator(torch.Generator().manual_seed(0))
    steps, warmup, lr = 120, 20, 0.02
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    model.train()
    for _ in range(steps):
        losses = model([image], [target])
        loss = sum(losses.values())
        assert math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        (detection,) = model([image])
    for gt_box, gt_label in zip(target["boxes"], target["labels"]):
        iou = box_iou(gt_box[None], detection["boxes"])[0]
        found = torch.nonzero(iou > 0.5).flatten()
        assert len(found) > 0, f"no detection overlaps object of class {int(gt_label)} with IoU > 0.5"
        best = found[detection["scores"][found].argmax()]
        assert detection["labels"][best] == gt_label, (
            f"top detection on the class-{int(gt_label)} object has class {int(detection['labels'][best])}")


# Issue 25, class 6: inputs the model would misread silently are refused, as torchvision refuses them.
@pytest.mark.parametrize("images, error, message", [
    ([torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)], TypeError,
     r"images\[0\] must be a floating-point tensor with values in \[0, 1\], got torch.uint8"),
    (torch.rand(3, 64, 80), TypeError, r"images must be a list of \(3, H, W\) tensors, got a tensor of shape \(3, 64, 80\)"),
    (torch.rand(2, 3, 64, 80), TypeError, r"list\(batch\) for a \(B, 3, H, W\) batch"),
    ([torch.rand(64, 80)], ValueError, r"images\[0\] must be an RGB image of shape \(3, H, W\).*got shape \(64, 80\)"),
    ([torch.rand(3, 64, 80), torch.rand(1, 64, 80)], ValueError, r"images\[1\] must be an RGB image.*\(1, 64, 80\)"),
    ([torch.rand(3, 0, 80)], ValueError, r"with H, W >= 1, got shape \(3, 0, 80\)"),
    ([], ValueError, r"images is an empty list"),
    ([np.zeros((3, 64, 80), dtype=np.float32)], TypeError, r"images\[0\] must be a \(3, H, W\) tensor, got ndarray"),
])
def test_eval_refuses_images_it_would_misread(images, error, message):
    model = FasterRCNN(_tiny_config()).eval()
    with torch.no_grad(), pytest.raises(error, match=message):
        model(images)
    with pytest.raises(error, match=message):
        model.proposals_for_images(images)


@pytest.mark.parametrize("change, message", [
    (lambda t: t[:1], r"targets must be a list of one dict per image \(2\), got 1 targets"),
    (lambda t: [{**t[0], "boxes": torch.cat([t[0]["boxes"], torch.ones(2, 1)], 1)}, t[1]],
     r"targets\[0\]\['boxes'\] must be a tensor of shape \(N, 4\), got a tensor of shape \(2, 5\)"),
    (lambda t: [t[0], {**t[1], "labels": torch.tensor([1, 2])}],
     r"targets\[1\]\['labels'\] must be a tensor of shape \(1,\), one per box"),
    (lambda t: [t[0], {"labels": t[1]["labels"]}], r"targets\[1\] must be a dict with 'boxes'"),
])
def test_training_refuses_targets_that_do_not_fit_the_images(change, message):
    model = FasterRCNN(_tiny_config()).train()
    images, targets = _tiny_batch()
    for call in (model, model.rpn_losses, model.detector_losses):
        with pytest.raises(ValueError, match=message):
            call(images, change(targets))


def test_zf_normalisation_is_caffes_within_channel_lrn():
    """The released ZF prototxts' norm1/norm2: x / (1 + alpha/9 · Σ x² over 3×3 in the channel)^beta."""
    from fasterrcnn_edu.backbones import WithinChannelLRN
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 1, 1] = 100.0                         # one strong response, alone in its channel
    x[0, 1, 1, 1] = 1.0                           # a weak one at the same position in the next channel
    out = WithinChannelLRN(3, 5e-5, 0.75)(x)
    # centre: 1 + 5e-5 * 100² / 9; the weak channel sees only itself (a channel-wise LRN would not)
    assert out[0, 0, 1, 1].item() == pytest.approx(100.0 / (1 + 5e-5 * 1e4 / 9) ** 0.75)
    assert out[0, 1, 1, 1].item() == pytest.approx(1.0 / (1 + 5e-5 / 9) ** 0.75)
    # a corner's window is padded with zeros, which count (Caffe's AVE pooling with pad 1)
    corner = torch.zeros(1, 1, 3, 3)
    corner[0, 0, 0, 0] = 100.0
    assert WithinChannelLRN()(corner)[0, 0, 0, 0].item() == pytest.approx(100.0 / (1 + 5e-5 * 1e4 / 9) ** 0.75)
    from fasterrcnn_edu.backbones import zf_backbone
    layers = [type(m).__name__ for m in zf_backbone().body]
    assert layers.count("WithinChannelLRN") == 2 and "LocalResponseNorm" not in layers
