"""Backbones: the shared convolutional layers, and the fc layers the RoI head stacks on them.

- `vgg16`: torchvision's VGG-16 definition (Simonyan & Zisserman), conv1_1..conv5_3, stride 16,
  512 channels; head fc6/fc7 (4096). Paper §4 uses it with 13 shared conv layers.
- `zf`: the Zeiler & Fergus net the paper also reports (5 conv layers, stride 16, 256 channels).
- `small`: the book's CPU net — 6 conv layers with GroupNorm, stride 16, 128 channels — trained
  from scratch on the shipped shapes data in minutes.

Nothing is downloaded: ImageNet weights, when wanted, come from a local file (`weights=`) holding a
torchvision VGG-16 state dict (e.g. `vgg16-397923af.pth`). Every backbone reports `stride` and
`out_channels`; `build_backbone` returns it with its matching box head.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from fasterrcnn_edu.fileio import CheckpointError, file_kind, load_weights, read_torch_file


class Backbone(nn.Module):
    """Conv layers `body` with the facts the RPN and RoI pooling need: `stride`, `out_channels`."""

    def __init__(self, body: nn.Module, stride: int, out_channels: int):
        super().__init__()
        self.body = body
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> features (B, out_channels, H / stride, W / stride)."""
        return self.body(images)


class BoxHead(nn.Module):
    """Flatten pooled RoIs (R, C, P, P) and apply fully connected layers -> (R, out_features)."""

    def __init__(self, layers: nn.Sequential, out_features: int):
        super().__init__()
        self.layers = layers
        self.out_features = out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled.flatten(1))


def _conv_gn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    # GroupNorm, not BatchNorm: one or two images per batch, and alternating training freezes layers.
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True)]


def small_backbone() -> Backbone:
    """The book's CPU backbone: stride 16, 128 channels, ~0.3 GMAC for a 320×256 image."""
    body = nn.Sequential(
        *_conv_gn(3, 24, stride=2), nn.MaxPool2d(2),          # stride 4
        *_conv_gn(24, 48), nn.MaxPool2d(2),                   # stride 8
        *_conv_gn(48, 96), *_conv_gn(96, 96), nn.MaxPool2d(2),  # stride 16
        *_conv_gn(96, 128), *_conv_gn(128, 128),
    )
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return Backbone(body, stride=16, out_channels=128)


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with `norm_region: WITHIN_CHANNEL`, as in the released ZF prototxts.

    x: (B, C, H, W) -> same shape, x / (1 + alpha * mean of x² over a size × size window of the same
    channel)^beta. Caffe averages over the window with zero padding counted (its AVE pooling with
    pad (size - 1) / 2), so does `avg_pool2d(count_include_pad=True)`.
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        if size % 2 != 1:
            raise ValueError(f"WithinChannelLRN: size must be odd, got {size}")
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = nn.functional.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2,
                                               count_include_pad=True)
        return x * (1 + self.alpha * mean_square).pow(-self.beta)


def zf_backbone() -> Backbone:
    """Zeiler & Fergus (ECCV 2014), the paper's smaller net: conv1..conv5, stride 16, 256 channels.

    The layers and strides are those of the released code's ZF prototxts
    (py-faster-rcnn 781a917, models/pascal_voc/ZF/faster_rcnn_alt_opt/*.pt and
    faster_rcnn_end2end/*.prototxt).
    norm1/norm2 are those prototxts' LRN layers, `norm_region: WITHIN_CHANNEL` with local_size 3,
    alpha 5e-5, beta 0.75 (`WithinChannelLRN`), not torch's `nn.LocalResponseNorm`, which
    normalises across channels.
    """
    body = nn.Sequential(
        nn.Conv2d(3, 96, 7, 2, 3), nn.ReLU(inplace=True), WithinChannelLRN(3, 5e-5, 0.75),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(96, 256, 5, 2, 2), nn.ReLU(inplace=True), WithinChannelLRN(3, 5e-5, 0.75),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(inplace=True),
    )
    return Backbone(body, stride=16, out_channels=256)


def vgg16_backbone(weights: str | Path | None = None) -> tuple[Backbone, nn.Sequential]:
    """torchvision's VGG-16 without its last max-pool (stride 16), and its fc6/fc7 for the head.

    `weights`: path to a local torchvision VGG-16 state dict; None leaves random initialisation.
    """
    vgg = torchvision.models.vgg16(weights=None)
    if weights is not None:
        load_backbone_weights(vgg, weights, "torchvision's VGG-16 (vgg16-397923af.pth)")
    body = nn.Sequential(*list(vgg.features)[:-1])
    fc6_fc7 = nn.Sequential(*list(vgg.classifier)[:-1])   # fc6, ReLU, Dropout, fc7, ReLU, Dropout
    return Backbone(body, stride=16, out_channels=512), fc6_fc7


def load_state_dict(path: str | Path) -> dict:
    """Read a backbone weights file safely (`weights_only=True`): a state dict name -> tensor, possibly
    under "state_dict" (what `pretrain` writes). CheckpointError names the file and says what it holds
    instead: a fasterrcnn_edu model or training checkpoint, something else, or corrupt bytes."""
    state = read_torch_file(path, "weights file")
    kind = file_kind(state)
    if kind != "backbone":
        what = {"model": "a fasterrcnn_edu model file: pass it as --model",
                "training": "a fasterrcnn_edu training checkpoint: pass it as --resume or --model"}
        raise CheckpointError(f"{path}: not backbone weights; it holds "
                              + what.get(kind, "no state dict (a dict of name -> tensor)"))
    return dict(state.get("state_dict", state))


def load_backbone_weights(module: nn.Module, path: str | Path, what: str) -> None:
    """Load the weights file `path` into `module` (a torchvision VGG-16 or one of our backbones),
    checking every tensor's name, shape and values first; CheckpointError says which differ."""
    load_weights(module, load_state_dict(path), path, what)


def freeze_first_convs(backbone: Backbone, count: int) -> None:
    """Fix the first `count` conv layers (released code: VGG-16 trains from conv3_1 up, so count = 4)."""
    convs = [m for m in backbone.body if isinstance(m, nn.Conv2d)][:count]
    for conv in convs:
        conv.requires_grad_(False)


def build_backbone(name: str, pooled_size: int, head_hidden: int, weights: str | None = None,
                   frozen_layers: int = 0) -> tuple[Backbone, BoxHead]:
    """A backbone and the fc box head that takes its (C, P, P) pooled RoIs."""
    if name == "vgg16":
        backbone, fc_layers = vgg16_backbone(weights)
        if pooled_size != 7 or head_hidden != 4096:
            fc_layers = _fc_head(512 * pooled_size**2, head_hidden, dropout=True)
        head = BoxHead(fc_layers, head_hidden)
    elif name in ("zf", "small"):
        backbone = zf_backbone() if name == "zf" else small_backbone()
        if weights is not None:
            load_backbone_weights(backbone, weights, f"the {name!r} backbone")
        head = BoxHead(_fc_head(backbone.out_channels * pooled_size**2, head_hidden, dropout=name == "zf"),
                       head_hidden)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose 'vgg16', 'zf' or 'small'")
    freeze_first_convs(backbone, frozen_layers)
    return backbone, head


def _fc_head(in_features: int, hidden: int, dropout: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
    if dropout:
        layers.append(nn.Dropout())
    layers += [nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
    if dropout:
        layers.append(nn.Dropout())
    return nn.Sequential(*layers)
