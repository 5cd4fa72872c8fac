"""What every detection dataset here shares: one record per image, box repair, `ds[i]`, collation.

A dataset is a list of `ImageRecord`s built once, at construction, from annotation files (VOC
XML in `voc.py`, COCO JSON in `coco.py`); images are decoded only when `ds[i]` asks for them.

The sample format is torchvision's detection format (the model does resizing and normalisation):

    image:  float32 (3, H, W), RGB, values in [0, 1]
    target: {"boxes":      float32 (N, 4)  x1, y1, x2, y2 in continuous pixel coordinates:
                                            pixel column i covers [i, i + 1), so a box around
                                            pixels 0..9 has x1 = 0, x2 = 10 and width x2 - x1
             "labels":     int64 (N,)      1..K, index into ("__background__",) + ds.classes
             "difficult":  bool (N,)       ignored by the VOC metric (VOC's flag, COCO's iscrowd)
             "truncated":  bool (N,)       the object continues outside the image
             "image_id":   str
             "orig_size":  int64 (2,)      (H, W) of the image as stored}
"""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fasterrcnn_edu.data.errors import DataError, DataWarning
from fasterrcnn_edu.data.images import read_image_tensor

Target = dict  # see the module docstring for its keys
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]

# Counts in `ds.report` that mean the annotations were changed; any of them triggers a warning.
REPAIRS = ("boxes_clipped", "boxes_dropped_degenerate", "size_mismatch")
# No image side reaches this (Pillow refuses images of more than ~179 megapixels): a coordinate or
# size beyond it is a broken or hostile annotation, refused rather than clipped.
MAX_COORDINATE = 1e6


@dataclass
class ImageRecord:
    """Everything known about one image before its pixels are decoded."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray      # float32 (N, 4) x1, y1, x2, y2, inside [0, width] x [0, height]
    labels: np.ndarray     # int64 (N,) in 1..K
    difficult: np.ndarray  # bool (N,)
    truncated: np.ndarray  # bool (N,)


class RepairLog:
    """Counts what was repaired (`counts`, a Counter) and remembers one example file per kind."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}

    def add(self, key: str, n: int, example: str | Path) -> None:
        if n > 0:
            self.counts[key] += n
            self.examples.setdefault(key, str(example))

    def warn(self, what: str, stacklevel: int = 3) -> None:
        """Emit one `DataWarning` summarising all repairs, if there were any."""
        repaired = [key for key in REPAIRS if self.counts[key]]
        if not repaired:
            return
        details = "; ".join(f"{key}={self.counts[key]} (e.g. {self.examples[key]})" for key in repaired)
        warnings.warn(f"{what}: annotations were repaired: {details}. Counts are in `.report`.",
                      DataWarning, stacklevel=stacklevel)


def make_record(image_id: str, image_path: Path, annotation_path: Path | str,
                real_size: tuple[int, int], declared_size: tuple[int, int] | None,
                boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, truncated: np.ndarray,
                log: RepairLog) -> ImageRecord:
    """Check one image's annotations against its real size; clip, drop and count what is off.

    real_size / declared_size: (width, height) from the image file / from the annotation file.
    boxes: (N, 4) x1, y1, x2, y2 as read, possibly outside the image or degenerate.
    """
    width, height = real_size
    if declared_size is not None and tuple(declared_size) != (width, height):
        # The pixels are the ground truth: the annotation tool may have recorded a resized copy.
        log.add("size_mismatch", 1, annotation_path)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != boxes).any(axis=1)
    log.add("boxes_clipped", int((changed & keep).sum()), annotation_path)
    log.add("boxes_dropped_degenerate", int((~keep).sum()), annotation_path)
    if not keep.any():
        log.add("images_without_objects", 1, annotation_path)
    return ImageRecord(
        image_id=image_id, image_path=image_path, width=width, height=height,
        boxes=clipped[keep],
        labels=np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
        difficult=np.asarray(difficult, dtype=bool).reshape(-1)[keep],
        truncated=np.asarray(truncated, dtype=bool).reshape(-1)[keep],
    )


class DetectionDataset(Dataset):
    """A map-style dataset over `ImageRecord`s; `ds[i]` -> (image, target), see module docstring.

    Subclasses build `records` and `classes`; this class serves them. Attributes:
    `classes` (tuple of K names, background excluded), `ids` (list of image ids), `report`
    (Counter of repairs such as "boxes_clipped"), `records`, `transforms`.
    """

    def __init__(self, records: list[ImageRecord], classes: tuple[str, ...],
                 transforms: Transform | None = None, log: RepairLog | None = None) -> None:
        self.records = records
        self.classes = tuple(classes)
        self.transforms = transforms
        self.ids = [r.image_id for r in records]
        log = log or RepairLog()
        self.report = log.counts
        self.report_examples = log.examples

    def __len__(self) -> int:
        return len(self.records)

    def get_target(self, index: int) -> Target:
        """The target of image `index` without decoding the image (for evaluation and stats)."""
        r = self.records[index]
        return {
            "boxes": torch.from_numpy(r.boxes.copy()),
            "labels": torch.from_numpy(r.labels.copy()),
            "difficult": torch.from_numpy(r.difficult.copy()),
            "truncated": torch.from_numpy(r.truncated.copy()),
            "image_id": r.image_id,
            "orig_size": torch.tensor([r.height, r.width], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        r = self.records[index]
        image = read_image_tensor(r.image_path)
        if tuple(image.shape[1:]) != (r.height, r.width):
            # The header was read at construction; a different size now means the file changed.
            raise DataError(r.image_path, f"image is {tuple(image.shape[1:])} (H, W) but was "
                                          f"{(r.height, r.width)} when the dataset was built")
        target = self.get_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"


def collate_detection(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader `collate_fn`: keep images as a list because their sizes differ.

    [(image_i (3, H_i, W_i), target_i), ...] -> ([image_0, ...], [target_0, ...]).
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
