"""COCO-format annotations: `CocoDataset` reads a COCO JSON file, `write_coco_json` writes one.

    {"images":      [{"id": 1, "file_name": "000001.jpg", "width": 320, "height": 256}, ...],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h],
                      "area": w * h, "iscrowd": 0}, ...],
     "categories":  [{"id": 3, "name": "triangle"}, ...]}

COCO boxes are [x, y, width, height] in the same continuous pixel coordinates we use, so
x1, y1, x2, y2 = x, y, x + width, y + height, with no +-1. Category ids may have gaps (COCO's
go from 1 to 90 for 80 classes); they become contiguous labels 1..K in increasing id order.
`iscrowd` objects become `difficult` ones: both mean "neither a hit nor a miss" to the metric.

`write_coco_json` exports a VOC dataset so that the same boxes can be scored by a COCO
evaluator (difficult -> iscrowd = 1; the extra key "truncated" carries VOC's flag along).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from fasterrcnn_edu.data.dataset import MAX_COORDINATE, DetectionDataset, RepairLog, Transform, make_record
from fasterrcnn_edu.data.errors import DataError
from fasterrcnn_edu.data.images import image_size
from fasterrcnn_edu.data.text import MAX_NAME_BYTES, is_regular_file
from fasterrcnn_edu.data.voc import check_classes

MAX_JSON_BYTES = 2 * 2**30     # COCO 2017 train is ~450 MiB


class CocoDataset(DetectionDataset):
    """A detection dataset from a COCO JSON file; `ds[i]` -> (image, target) as `VOCDataset`.

    Args:
        image_dir: the folder that the JSON's "file_name"s are relative to.
        annotation_json: the COCO annotation file.
        transforms: optional callable (image, target) -> (image, target).

    `ds.classes` are the category names in increasing category id order; `ds.category_ids[k-1]`
    is the COCO id of label k, and `ds.ids` the images' COCO ids (target["image_id"] is
    `str(coco_id)`). Images appear in the order of the JSON's "images" list.
    """

    def __init__(self, image_dir: str | os.PathLike, annotation_json: str | os.PathLike,
                 transforms: Transform | None = None) -> None:
        self.image_dir = self.root = Path(image_dir).expanduser()
        self.annotation_json = path = Path(annotation_json).expanduser()
        data = _read_json(path)

        categories = sorted(_entries(path, data, "categories", {"id": _INTEGER, "name": _NAME}), key=lambda c: c["id"])
        category_ids = [c["id"] for c in categories]
        if len(set(category_ids)) != len(category_ids):
            raise DataError(path, f"category ids are not unique: {category_ids}")
        try:
            classes = check_classes(c["name"] for c in categories)
        except ValueError as e:
            raise DataError(path, f"categories: {e}") from None
        label_of = {cat_id: k for k, cat_id in enumerate(category_ids, start=1)}
        self.category_ids = category_ids

        images = _entries(path, data, "images", {"id": _IMAGE_ID, "file_name": _NAME, "width": _SIZE, "height": _SIZE})
        if not images:
            raise DataError(path, "'images' is empty: there is nothing to train on or evaluate")
        image_index = {}
        for i, entry in enumerate(images):
            if entry["id"] in image_index:
                raise DataError(path, f"image id {entry['id']!r} appears twice", f"images[{i}]")
            image_index[entry["id"]] = i

        objects_of = defaultdict(list)  # image id -> [(box, label, difficult, truncated)]
        annotations = _entries(path, data, "annotations", {"image_id": _IMAGE_ID, "category_id": _INTEGER, "bbox": _LIST,
                                                            "iscrowd": _FLAG, "truncated": _FLAG})
        for i, ann in enumerate(annotations):
            where = f"annotations[{i}]" + (f" (id {ann['id']})" if "id" in ann else "")
            if ann["image_id"] not in image_index:
                raise DataError(path, f"image_id {ann['image_id']!r} is not in 'images'", where)
            if ann["category_id"] not in label_of:
                raise DataError(path, f"unknown category_id {ann['category_id']!r}; known categories: "
                                      + ", ".join(f"{c['id']}={c['name']}" for c in categories), where)
            x, y, w, h = _bbox(path, ann["bbox"], where)
            objects_of[ann["image_id"]].append(((x, y, x + w, y + h), label_of[ann["category_id"]],
                                                bool(ann.get("iscrowd", 0)), bool(ann.get("truncated", 0))))

        log = RepairLog()
        records = []
        for i, entry in enumerate(images):
            image_path = self.image_dir / _relative_file_name(path, entry["file_name"], f"images[{i}]")
            objects = objects_of[entry["id"]]
            records.append(make_record(
                image_id=str(entry["id"]), image_path=image_path, annotation_path=f"{path} images[{i}]",
                real_size=image_size(image_path), declared_size=(entry["width"], entry["height"]),
                boxes=np.array([o[0] for o in objects], dtype=np.float32).reshape(-1, 4),
                labels=np.array([o[1] for o in objects], dtype=np.int64),
                difficult=np.array([o[2] for o in objects], dtype=bool),
                truncated=np.array([o[3] for o in objects], dtype=bool),
                log=log,
            ))
        super().__init__(records, classes, transforms, log)
        self.ids = [entry["id"] for entry in images]
        log.warn(f"CocoDataset({str(path)!r})")


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise DataError(path, "annotation file not found")
    if not is_regular_file(path):
        raise DataError(path, "annotation file is not a regular file (a folder or a device)")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DataError(path, f"annotation file is larger than {MAX_JSON_BYTES // 2**30} GiB")
    try:
        with open(path, encoding="utf-8-sig") as f:       # -sig: a byte-order mark is skipped
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON: {e.msg}", f"line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e})") from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply to be a COCO annotation file") from None
    except ValueError as e:   # e.g. an integer of more than 4300 digits
        raise DataError(path, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object at the top, got {type(data).__name__}")
    return data


def _is_number(v) -> bool:
    # abs(v) <= MAX first: it also refuses NaN and inf, and compares a 400-digit int without converting it.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_COORDINATE


# Field checks of `_entries`: (test, what the value must be).
_INTEGER = (lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63, "an integer")
_IMAGE_ID = (lambda v: _INTEGER[0](v) or (isinstance(v, str) and 0 < len(v) <= MAX_NAME_BYTES),
             "an integer or a non-empty string")
_NAME = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
_SIZE = (lambda v: _is_number(v) and v > 0 and float(v).is_integer(), f"a whole number of pixels in 1..{MAX_COORDINATE:g}")
_LIST = (lambda v: isinstance(v, list), "a list [x, y, width, height]")
_FLAG = (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v in (0, 1)), "0 or 1")


def _entries(path: Path, data: dict, key: str, fields: dict[str, tuple]) -> list[dict]:
    """data[key], checked to be a list of objects whose `fields` pass their tests.

    fields: name -> (test, description); a field whose test accepts None is optional.
    """
    entries = data.get(key)
    if not isinstance(entries, list):
        raise DataError(path, f"missing or malformed top-level list {key!r}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(path, "expected a JSON object", f"{key}[{i}]")
        missing = [k for k, (test, _) in fields.items() if k not in entry and not test(None)]
        if missing:
            raise DataError(path, f"missing key(s) {missing}", f"{key}[{i}]")
        for name, (test, what) in fields.items():
            if name in entry and not test(entry[name]):
                raise DataError(path, f"{name!r} must be {what}, got {_short(entry[name])}", f"{key}[{i}]")
    return entries


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bbox(path: Path, bbox, where: str) -> tuple[float, float, float, float]:
    """A COCO bbox [x, y, w, h] as four finite floats of at most MAX_COORDINATE, or DataError."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(path, f"bbox must be a list [x, y, width, height], got {_short(bbox)}", where)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise DataError(path, f"bbox has a non-numeric value: {_short(bbox)}", where)
    if not all(_is_number(v) for v in bbox):
        raise DataError(path, f"bbox has a non-finite value or one beyond any image (|v| > {MAX_COORDINATE:g}): "
                              f"{_short(bbox)}", where)
    return tuple(float(v) for v in bbox)


def _relative_file_name(path: Path, file_name, where: str) -> Path:
    """A "file_name" as a path inside the image folder (subfolders allowed, "..", "/x" not)."""
    if not isinstance(file_name, str) or not file_name:
        raise DataError(path, f"file_name must be a non-empty string, got {file_name!r}", where)
    if "\x00" in file_name:    # no file system allows it; open() would raise a bare ValueError
        raise DataError(path, f"file_name {file_name!r} contains a NUL byte, which no file name can", where)
    parts = PurePosixPath(file_name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or ":" in file_name:
        raise DataError(path, f"file_name {file_name!r} points outside the image folder", where)
    long = [part for part in parts.parts if len(part.encode("utf-8", "surrogatepass")) > 255]
    if long:
        raise DataError(path, f"file_name has a part of more than 255 bytes: {long[0][:40]!r}...", where)
    return Path(*parts.parts)


def write_coco_json(dataset: DetectionDataset, path: str | os.PathLike) -> None:
    """Export a dataset's annotations (not its images) as a COCO JSON file.

    Image i of the dataset gets COCO id i + 1 and its file's base name as "file_name" (so the
    image folder of a VOC set is root/"JPEGImages"); label k gets category id k. Difficult
    objects are written with iscrowd = 1. Byte-for-byte deterministic.
    """
    images, annotations = [], []
    for i, r in enumerate(dataset.records):
        images.append({"id": i + 1, "file_name": r.image_path.name, "width": r.width, "height": r.height})
        for box, label, difficult, truncated in zip(r.boxes.tolist(), r.labels.tolist(),
                                                    r.difficult.tolist(), r.truncated.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": label,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(difficult), "truncated": int(truncated),
            })
    categories = [{"id": k, "name": name} for k, name in enumerate(dataset.classes, start=1)]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        f.write("\n")
