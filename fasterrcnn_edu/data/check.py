"""Whole-folder validation of a VOC-layout data set: find *every* problem, not just the first.

`VOCDataset` stops at the first broken file, which is right for training. Before training, one
wants the full list: `check_dataset` parses every annotation listed in the chosen splits,
decodes every image completely (a truncated JPEG only shows up then), and collects each
`DataError` message instead of raising it. `python -m fasterrcnn_edu check-data ROOT` prints
the summary and exits with status 1 if anything was refused.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path

from fasterrcnn_edu.data.dataset import RepairLog
from fasterrcnn_edu.data.errors import DataError
from fasterrcnn_edu.data.images import load_image
from fasterrcnn_edu.data.voc import available_splits, load_voc_record, read_classes, read_split


@dataclass
class CheckReport:
    """What `check_dataset` found. `errors` holds one message per refused file (file named)."""

    root: str
    splits: dict[str, int] = field(default_factory=dict)  # split -> number of ids listed
    classes: tuple[str, ...] = ()
    images: int = 0                  # distinct images that loaded without error
    objects_per_class: collections.Counter = field(default_factory=collections.Counter)
    difficult: int = 0
    truncated: int = 0
    images_without_objects: int = 0
    fixed: int = 0                   # boxes clipped to the image
    dropped: int = 0                 # boxes dropped as degenerate (empty after clipping)
    size_mismatch: int = 0           # annotation's <size> differs from the image's real size
    unlisted: int = 0                # annotation files that no checked split lists
    examples: dict[str, str] = field(default_factory=dict)  # repair kind -> an example file
    errors: list[str] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return sum(self.objects_per_class.values())

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, max_errors: int = 50) -> str:
        """A human-readable, multi-line report; lists at most `max_errors` error messages."""
        splits = ", ".join(f"{name} ({n})" for name, n in self.splits.items()) or "none"
        lines = [
            f"Checked {self.root}",
            f"  splits: {splits}",
            f"  {self.images} images loaded, {self.images_without_objects} of them without objects",
            f"  {self.objects} objects: {self.difficult} difficult, {self.truncated} truncated",
            "  objects per class: " + (", ".join(f"{c} {self.objects_per_class[c]}" for c in self.classes) or "-"),
            f"  repaired: {self.fixed} boxes clipped to the image, {self.dropped} degenerate boxes dropped, "
            f"{self.size_mismatch} images whose annotated size was wrong",
        ]
        for kind, example in self.examples.items():
            lines.append(f"    e.g. {kind}: {example}")
        if self.unlisted:
            lines.append(f"  note: {self.unlisted} annotation files are not listed in any checked split")
        if self.ok:
            lines.append("  errors: none")
        else:
            lines.append(f"  errors: {len(self.errors)} file(s) refused")
            lines += [f"    {message}" for message in self.errors[:max_errors]]
            if len(self.errors) > max_errors:
                lines.append(f"    ... and {len(self.errors) - max_errors} more")
        return "\n".join(lines)


def check_dataset(root: str | os.PathLike, splits: list[str] | None = None) -> CheckReport:
    """Check every image listed in `splits` (default: all split files) of a VOC-layout folder.

    Never raises for a problem in the data: each refused file becomes one entry in
    `report.errors`. Images listed in several splits are checked once.
    """
    root = Path(root).expanduser()
    report = CheckReport(root=str(root))
    if not root.is_dir():
        report.errors.append(f"{root}: dataset folder not found")
        return report
    try:
        report.classes = read_classes(root)
    except DataError as e:
        report.errors.append(str(e))
        return report  # without a class list, no annotation can be checked
    label_of = {name: k for k, name in enumerate(report.classes, start=1)}

    splits = available_splits(root) if splits is None else list(splits)
    if not splits:
        report.errors.append(f"{root / 'ImageSets' / 'Main'}: no split files (such as train.txt) found")
    first_listed_in: dict[str, Path] = {}  # image id -> the split file that lists it first
    for split in splits:
        try:
            ids = read_split(root, split)
        except DataError as e:
            report.errors.append(str(e))
            continue
        report.splits[split] = len(ids)
        for image_id in ids:
            first_listed_in.setdefault(image_id, root / "ImageSets" / "Main" / f"{split}.txt")

    log = RepairLog()
    for image_id, split_file in first_listed_in.items():
        image_log = RepairLog()  # merged into `log` only if the image is not refused
        try:
            record = load_voc_record(root, image_id, label_of, image_log, keep_difficult=True, listed_in=split_file)
            load_image(record.image_path)  # decode fully: truncated and corrupt files fail only here
        except DataError as e:
            report.errors.append(str(e))
            continue
        for kind, n in image_log.counts.items():
            log.add(kind, n, image_log.examples[kind])
        report.images += 1
        report.objects_per_class.update(report.classes[k - 1] for k in record.labels.tolist())
        report.difficult += int(record.difficult.sum())
        report.truncated += int(record.truncated.sum())

    report.fixed = log.counts["boxes_clipped"]
    report.dropped = log.counts["boxes_dropped_degenerate"]
    report.size_mismatch = log.counts["size_mismatch"]
    report.images_without_objects = log.counts["images_without_objects"]
    report.examples = {k: v for k, v in log.examples.items() if k != "images_without_objects"}
    annotations = root / "Annotations"
    if annotations.is_dir():
        report.unlisted = sum(1 for p in annotations.glob("*.xml") if p.stem not in first_listed_in)
    return report


def unreadable_images(dataset, indices=None) -> dict[int, str]:
    """{index: DataError message} for the images of `dataset` (a `DetectionDataset`) that cannot be
    decoded; `indices` limits the check. Decodes each image once: a truncated file only fails there.

    `eval` evaluates the others and lists these; `train` refuses to start with any.
    """
    bad = {}
    for i in range(len(dataset)) if indices is None else indices:
        try:
            load_image(dataset.records[i].image_path)
        except DataError as e:
            bad[i] = str(e)
    return bad
