"""Real photographs with boxes drawn by us: scikit-image's sample images, annotated in VOC layout.

The detector of this book is trained on the synthetic shapes set; these photographs only make
anchors, IoU and anchor labeling concrete on real images (book chapters 1 and 2). The pixels are not
copied into this repository: they ship inside scikit-image (`skimage.data`, no download), under
the licences in `CREDITS`. Only our annotations are shipped, as a PASCAL VOC annotation set::

    data/photos/Annotations/<id>.xml         one VOC XML file per photograph (boxes drawn by us)
    data/photos/ImageSets/Main/test.txt      the photograph ids
    data/photos/classes.txt                  the class names, one per line
    data/photos/README.md                    credits and licences

    from fasterrcnn_edu.data.photos import load_photo, photo_ids
    image, target = load_photo("coffee")     # as `VOCDataset`: (3, H, W) float in [0, 1], target dict

The XML is read by the package's own VOC parser (`voc.parse_voc_xml`), so the boxes follow the
same convention as every other box here (continuous pixel coordinates, see `voc.py`).
scikit-image is needed only here: `pip install scikit-image` (it is in requirements.txt).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fasterrcnn_edu.anchors import AnchorGenerator, feature_map_size
from fasterrcnn_edu.data.errors import DataError
from fasterrcnn_edu.data.voc import parse_voc_xml, read_classes, read_split
from fasterrcnn_edu.transforms import _xy_factors, resize_image, resize_scale, resized_size

__all__ = ["PHOTOS", "SOURCES", "CREDITS", "ScaledPhoto", "photo_ids", "photo_classes", "photo_pixels", "load_photo",
           "scaled_photo"]

_REPOSITORY = Path(__file__).resolve().parents[2]
# The annotation set of this repository (or ./data/photos when the package runs without its checkout).
PHOTOS = _REPOSITORY / "data" / "photos" if (_REPOSITORY / "data" / "photos").is_dir() else Path("data/photos")

# photograph id -> the `skimage.data` function that returns its pixels
SOURCES = {"astronaut": "astronaut", "coffee": "coffee", "rocket": "rocket"}

# photograph id -> credit and licence, as scikit-image's docstrings give them (also in data/photos/README.md)
CREDITS = {
    "astronaut": "Eileen Collins, NASA (NASA Great Images database); public domain, no known copyright restrictions",
    "coffee": "Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0",
    "rocket": "SpaceX, launch of DSCOVR on Falcon 9 (SpaceX Photos); public domain",
}


def photo_ids(root: str | os.PathLike = PHOTOS) -> list[str]:
    """The ids of the annotated photographs (`ImageSets/Main/test.txt`), in file order."""
    return read_split(root, "test")


def photo_classes(root: str | os.PathLike = PHOTOS) -> tuple[str, ...]:
    """The class names of the photographs (`classes.txt`); label k (1..K) is `photo_classes()[k - 1]`."""
    return read_classes(root)


def photo_pixels(photo_id: str) -> np.ndarray:
    """The photograph's pixels from scikit-image: (H, W, 3) uint8 RGB."""
    if photo_id not in SOURCES:
        raise KeyError(f"unknown photograph {photo_id!r}; known: {', '.join(SOURCES)}")
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("the photographs come from scikit-image: pip install 'scikit-image>=0.22'") from e
    return np.ascontiguousarray(getattr(skimage.data, SOURCES[photo_id])())


def load_photo(photo_id: str, root: str | os.PathLike = PHOTOS) -> tuple[torch.Tensor, dict]:
    """One annotated photograph, in the format of `VOCDataset`: (image, target).

    image: float32 (3, H, W) in [0, 1]; target: "boxes" (G, 4) float32 x1, y1, x2, y2 in continuous
    pixel coordinates, "labels" (G,) int64 in 1..K (`photo_classes`), "difficult" and "truncated" (G,)
    bool, "image_id", "orig_size" (H, W) int64, and "names" (the G class names). Raises `DataError` if
    the annotation does not fit the pixels (another size, an unknown class, a box outside the image).
    """
    root = Path(root)
    pixels = photo_pixels(photo_id)
    xml_path = root / "Annotations" / f"{photo_id}.xml"
    annotation = parse_voc_xml(xml_path)
    height, width = pixels.shape[:2]
    if (annotation.height, annotation.width) != (height, width):
        raise DataError(xml_path, f"declares {annotation.width}x{annotation.height} pixels, but scikit-image's "
                                  f"{SOURCES[photo_id]}() is {width}x{height}")
    classes = photo_classes(root)
    names = [obj.name for obj in annotation.objects]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(xml_path, f"classes {unknown} are not in {root / 'classes.txt'}")
    boxes = torch.tensor([obj.box for obj in annotation.objects], dtype=torch.float32).reshape(-1, 4)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    if ((boxes < 0) | (boxes > limits) | (boxes[:, 2:] <= boxes[:, :2]).repeat(1, 2)).any():
        raise DataError(xml_path, "a box is empty or lies outside the image")
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    target = {
        "boxes": boxes,
        "labels": torch.tensor([classes.index(n) + 1 for n in names], dtype=torch.int64),
        "difficult": torch.tensor([obj.difficult for obj in annotation.objects], dtype=torch.bool),
        "truncated": torch.tensor([obj.truncated for obj in annotation.objects], dtype=torch.bool),
        "image_id": photo_id,
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
        "names": names,
    }
    return image, target


class ScaledPhoto(NamedTuple):
    """A photograph as a model sees it (`scaled_photo`). image: (3, h, w) rescaled, [0, 1]; target: as
    `load_photo`'s, boxes rescaled with the image ("orig_size" stays the photograph's); anchors:
    (fh * fw * k, 4) every anchor of its feature map, in the order of the RPN's outputs; feature_size:
    (fh, fw); scale: the resize factor."""

    image: torch.Tensor
    target: dict
    anchors: torch.Tensor
    feature_size: tuple[int, int]
    scale: float


def scaled_photo(photo_id: str, cfg, root: str | os.PathLike = PHOTOS) -> ScaledPhoto:
    """`load_photo`, then what a model with Config `cfg` does before its RPN: rescale the image so its
    shorter side is `cfg.min_size` and its longer at most `cfg.max_size` (`transforms.resize_scale`),
    boxes with it; and lay `cfg`'s anchors (`anchors.AnchorGenerator`, stride `cfg.anchor_base_size`)
    over the feature map of the image padded to a multiple of the stride, ceil(h / 16) × ceil(w / 16).
    """
    image, target = load_photo(photo_id, root)
    height, width = image.shape[-2:]
    scale = resize_scale(height, width, cfg.min_size, cfg.max_size)
    resized = resize_image(image, scale)
    size = resized_size(height, width, scale)
    target = dict(target, boxes=target["boxes"] * _xy_factors(size, (height, width)))
    stride = cfg.anchor_base_size
    feature_size = feature_map_size(size, stride)
    generator = AnchorGenerator(cfg.anchor_base_size, cfg.anchor_ratios, cfg.anchor_scales, stride, cfg.legacy_anchors)
    return ScaledPhoto(resized, target, generator(feature_size, torch.device("cpu")), feature_size, scale)
