"""PASCAL VOC layout: reading and writing annotation XML files, and `VOCDataset`.

The layout (the same for the shipped `data/shapes` set and a real `VOCdevkit/VOC2007`):

    root/Annotations/<id>.xml          one XML file per image (schema below)
    root/JPEGImages/<id>.jpg           the image
    root/ImageSets/Main/<split>.txt    image ids, one per line (train, val, trainval, test)
    root/classes.txt                   optional, one class name per line; without it the 20
                                       VOC classes are assumed (`VOC_CLASSES`)

    <annotation>
        <folder>VOC2007</folder> <filename>000005.jpg</filename>
        <size> <width>500</width> <height>375</height> <depth>3</depth> </size>
        <segmented>0</segmented>
        <object>
            <name>chair</name> <pose>Rear</pose> <truncated>0</truncated> <difficult>0</difficult>
            <bndbox> <xmin>263</xmin> <ymin>211</ymin> <xmax>324</xmax> <ymax>339</ymax> </bndbox>
        </object>
        ...
    </annotation>

Coordinates. VOC numbers pixels from 1 and its boxes are inclusive: a box with xmin = 1 and
xmax = 10 covers the image's first ten pixel columns. In memory we use continuous coordinates
where pixel column i covers [i, i + 1) (so the same box is x1 = 0, x2 = 10, width x2 - x1 = 10),
the convention of torchvision and of the model's anchor and RoI arithmetic. Hence, exactly:

    reading:  x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax
    writing:  xmin = x1 + 1,  ymin = y1 + 1,  xmax = x2,  ymax = y2

(The original VOC devkit and py-faster-rcnn subtract 1 from all four and then add 1 to every
width; the two conventions describe the same pixels.)

XML is parsed with `defusedxml`, which refuses entity declarations ("billion laughs") and
external entities (XXE): annotation files never need them, and they may come from anywhere.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np

from fasterrcnn_edu.data.dataset import (MAX_COORDINATE, DetectionDataset, ImageRecord, RepairLog, Transform,
                                          make_record)
from fasterrcnn_edu.data.errors import DataError
from fasterrcnn_edu.data.images import image_size
from fasterrcnn_edu.data.text import (check_name, describe_difference, find_lookalikes, is_regular_file,
                                      lookalike_key, read_text_lines)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
BACKGROUND = "__background__"


@dataclass
class VOCObject:
    """One <object>: box in continuous 0-based pixel coordinates (x1, y1, x2, y2), see above."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"


@dataclass
class VOCAnnotation:
    """One annotation file. `width`/`height` are what the file declares (0 when absent)."""

    filename: str
    width: int
    height: int
    depth: int = 3
    objects: list[VOCObject] = field(default_factory=list)
    folder: str = ""
    segmented: bool = False


# --- reading -------------------------------------------------------------------------------

def parse_voc_xml(path: str | os.PathLike) -> VOCAnnotation:
    """Read one VOC annotation file. Raises `DataError` naming the file (and object) on problems."""
    path = Path(path)
    try:
        root = SafeET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    except ET.ParseError as e:  # its message gives the line and column
        raise DataError(path, f"malformed XML: {e}") from None
    except defusedxml.DefusedXmlException as e:
        raise DataError(path, "refused: the XML declares entities or references external ones "
                              f"(possible billion-laughs or XXE attack; {type(e).__name__})") from None
    if root.tag != "annotation":
        raise DataError(path, f"root element is <{root.tag}>, expected <annotation>")

    size = root.find("size")
    width = height = 0
    depth = 3
    if size is not None:
        width = int(_number(path, size, "width", "<size>", default=0))
        height = int(_number(path, size, "height", "<size>", default=0))
        depth = int(_number(path, size, "depth", "<size>", default=3))

    elements = root.findall("object")
    objects = [_parse_object(path, obj, f"object {i + 1} of {len(elements)}")
               for i, obj in enumerate(elements)]
    return VOCAnnotation(
        filename=(root.findtext("filename") or "").strip(), width=width, height=height, depth=depth,
        objects=objects, folder=(root.findtext("folder") or "").strip(),
        segmented=_flag(path, root, "segmented", "<annotation>"),
    )


def _parse_object(path: Path, obj: ET.Element, where: str) -> VOCObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DataError(path, "missing or empty <name>", where)
    # Only the object's own <bndbox>: VOC "person" objects also have <part> children with boxes.
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DataError(path, f"{name!r} has no <bndbox>", where)
    xmin, ymin, xmax, ymax = (_number(path, bndbox, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
    return VOCObject(
        name=name,
        box=(xmin - 1.0, ymin - 1.0, xmax, ymax),  # 1-based inclusive -> 0-based continuous
        difficult=_flag(path, obj, "difficult", where),
        truncated=_flag(path, obj, "truncated", where),
        pose=(obj.findtext("pose") or "Unspecified").strip(),
    )


def _number(path: Path, parent: ET.Element, tag: str, where: str, default: float | None = None) -> float:
    """The finite number in `parent/<tag>`; `default` if the tag is absent (None: required)."""
    text = parent.findtext(tag)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise DataError(path, f"missing <{tag}>", where)
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"<{tag}> is not a number: {text.strip()!r}", where) from None
    if not math.isfinite(value):
        raise DataError(path, f"<{tag}> is not finite: {text.strip()!r}", where)
    if abs(value) > MAX_COORDINATE:
        raise DataError(path, f"<{tag}> is {text.strip()[:40]}, beyond any image (|value| > {MAX_COORDINATE:g})",
                        where)
    return value


def _flag(path: Path, parent: ET.Element, tag: str, where: str) -> bool:
    """A VOC 0/1 flag (<difficult>, <truncated>, <segmented>); absent means 0, anything but 0 or 1 is refused."""
    value = _number(path, parent, tag, where, default=0)
    if value not in (0, 1):
        raise DataError(path, f"<{tag}> must be 0 or 1, got {parent.findtext(tag).strip()!r}", where)
    return bool(value)


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Image ids listed in `root/ImageSets/Main/<split>.txt`, in file order."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not isinstance(split, str) or not split or split in (".", "..") or any(c in split for c in "/\\\0"):
        raise DataError(path.parent, f"split name {split!r} is not a file name in this folder")
    if not path.exists() and not path.is_symlink():
        raise DataError(path, f"split file not found; splits present: {available_splits(root) or 'none'}")
    ids: list[str] = []
    line_of: dict[str, int] = {}
    for lineno, line in enumerate(read_text_lines(path, "split file"), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        # An id becomes a file name: refuse anything that could step out of the folder. Two
        # words on a line is the format of VOC's per-class files (e.g. "dog_train.txt").
        if len(image_id.split()) != 1 or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise DataError(path, f"expected one image id per line, got {image_id!r}", f"line {lineno}")
        try:
            check_name(image_id, "image id")
        except ValueError as e:
            raise DataError(path, str(e), f"line {lineno}") from None
        if image_id in line_of:
            raise DataError(path, f"image id {image_id!r} is listed twice", f"line {lineno}")
        line_of[image_id] = lineno
        ids.append(image_id)
    if not ids:
        raise DataError(path, "the split lists no image ids: there is nothing to train on or evaluate")
    _refuse_lookalikes(path, ids, "image ids", line_of)
    return ids


def _refuse_lookalikes(path: Path, names: list[str], what: str, line_of: dict[str, int] | None = None) -> None:
    """DataError if two of `names` look identical (Unicode look-alikes, see `data.text`)."""
    pair = find_lookalikes(names)
    if pair is not None:
        a, b = pair
        where = f"lines {line_of[a]} and {line_of[b]}" if line_of else None
        raise DataError(path, f"{what} {a!r} and {b!r} look identical but differ in "
                              f"{describe_difference(a, b)}", where)


def available_splits(root: str | os.PathLike) -> list[str]:
    """Split names in `root/ImageSets/Main`, leaving out VOC's per-class lists (`dog_train`...)."""
    folder = Path(root) / "ImageSets" / "Main"
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem)


def read_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The class names in `root/classes.txt` (one per line), or `VOC_CLASSES` if there is none."""
    path = Path(root) / "classes.txt"
    if not path.exists() and not path.is_symlink():
        return VOC_CLASSES
    names = [line.strip() for line in read_text_lines(path, "class list") if line.strip()]
    try:
        return check_classes(names)
    except ValueError as e:
        raise DataError(path, str(e)) from None


def check_classes(classes) -> tuple[str, ...]:
    """Validate a class list: non-empty, unique, and without the background (label 0 is implicit)."""
    classes = tuple(classes)
    wrong = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if wrong:
        raise ValueError(f"class names must be non-empty strings, got {wrong[0]!r}")
    if not classes:
        raise ValueError("the class list is empty")
    for name in classes:
        check_name(name, "class name")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"class names listed more than once: {duplicates}")
    if BACKGROUND in classes:
        raise ValueError(f"{BACKGROUND!r} must not be listed: label 0 is the background implicitly")
    pair = find_lookalikes(classes)
    if pair is not None:
        raise ValueError(f"class names {pair[0]!r} and {pair[1]!r} look identical but differ in "
                         f"{describe_difference(*pair)}")
    return classes


def load_voc_record(root: Path, image_id: str, label_of: dict[str, int], log: RepairLog,
                    keep_difficult: bool = True, listed_in: str | os.PathLike = "the split file") -> ImageRecord:
    """Parse `Annotations/<image_id>.xml`, find its image, read its true size, repair its boxes."""
    xml_path = root / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
        raise DataError(xml_path, f"annotation file not found for image id {image_id!r} listed in {listed_in}")
    ann = parse_voc_xml(xml_path)
    for i, obj in enumerate(ann.objects):
        if obj.name not in label_of:
            twin = next((c for c in label_of if lookalike_key(c) == lookalike_key(obj.name)), None)
            hint = f" (it looks like {twin!r} but differs in {describe_difference(obj.name, twin)})" if twin else ""
            raise DataError(xml_path, f"unknown class {obj.name!r}{hint}; known classes: {', '.join(label_of)}",
                            f"object {i + 1} of {len(ann.objects)}")
    objects = [obj for obj in ann.objects if keep_difficult or not obj.difficult]

    # VOC's convention is JPEGImages/<id>.jpg; the XML's <filename> is a fallback for sets whose
    # images are not JPEGs. Only its base name is used, so it cannot point outside the folder.
    candidates = [root / "JPEGImages" / f"{image_id}.jpg"]
    if ann.filename:
        base = os.path.basename(ann.filename.replace("\\", "/"))
        if Path(base).stem != image_id and base != image_id:
            raise DataError(xml_path, f"<filename> {ann.filename!r} does not match the annotation's id {image_id!r} "
                                      f"(expected {image_id}.jpg or {image_id} with another extension)")
        candidates.append(root / "JPEGImages" / base)
    image_path = next((p for p in candidates if is_regular_file(p)), None)
    if image_path is None:
        raise DataError(candidates[0], f"image file not found for annotation {xml_path}")

    declared = (ann.width, ann.height) if ann.width or ann.height else None
    return make_record(
        image_id=image_id, image_path=image_path, annotation_path=xml_path,
        real_size=image_size(image_path), declared_size=declared,
        boxes=np.array([obj.box for obj in objects], dtype=np.float32).reshape(-1, 4),
        labels=np.array([label_of[obj.name] for obj in objects], dtype=np.int64),
        difficult=np.array([obj.difficult for obj in objects], dtype=bool),
        truncated=np.array([obj.truncated for obj in objects], dtype=bool),
        log=log,
    )


class VOCDataset(DetectionDataset):
    """A detection dataset in VOC layout: `ds[i]` -> (image (3, H, W) float32 in [0, 1], target).

    Args:
        root: the folder holding Annotations/, JPEGImages/ and ImageSets/Main/ (for the real
            data set, ".../VOCdevkit/VOC2007").
        split: a file name in ImageSets/Main without ".txt": "train", "val", "trainval", "test".
        classes: the K class names; label k (1..K) is classes[k - 1]. Default: root/classes.txt
            if present, else the 20 `VOC_CLASSES`.
        transforms: optional callable (image, target) -> (image, target), e.g.
            `RandomHorizontalFlip()`.
        skip_errors: leave out (and list in `ds.errors`, id -> message) the images whose annotation or
            image file is refused, instead of raising for the first; for evaluation and inspection.
        keep_difficult: keep objects marked difficult. Keep them for evaluation: the VOC metric
            needs them, to ignore detections of them instead of counting false positives. The
            authors' code (py-faster-rcnn) leaves them out of training (`use_diff=False`); pass
            False to train the same way.

    All annotations are parsed and every image header is read here, so that a broken file is
    reported now rather than hours into training; pixels are decoded only by `ds[i]`.
    Repairs (clipped and dropped boxes, size mismatches) are counted in `ds.report` and
    summarised in one `DataWarning`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", classes=None,
                 transforms: Transform | None = None, keep_difficult: bool = True, skip_errors: bool = False) -> None:
        self.root = Path(root).expanduser()  # "~/data/VOCdevkit/VOC2007" works as written
        self.split = split
        self.keep_difficult = keep_difficult
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")
        classes = read_classes(self.root) if classes is None else check_classes(classes)
        label_of = {name: k for k, name in enumerate(classes, start=1)}
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        log = RepairLog()
        records = []
        self.errors: dict[str, str] = {}    # image id -> why it was left out (skip_errors=True only)
        for image_id in read_split(self.root, split):
            try:
                records.append(load_voc_record(self.root, image_id, label_of, log, keep_difficult, split_file))
            except DataError as e:
                if not skip_errors:
                    raise
                self.errors[image_id] = str(e)
        super().__init__(records, classes, transforms, log)
        log.warn(f"VOCDataset({str(self.root)!r}, {split!r})")


# --- writing -------------------------------------------------------------------------------

def write_voc_xml(annotation: VOCAnnotation, path: str | os.PathLike) -> None:
    """Write one annotation file; boxes go from continuous 0-based to VOC's 1-based inclusive.

    The output is byte-for-byte deterministic (fixed element order, tab indentation, no date).
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = annotation.folder
    ET.SubElement(root, "filename").text = annotation.filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", annotation.width), ("height", annotation.height), ("depth", annotation.depth)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = str(int(annotation.segmented))
    for obj in annotation.objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = obj.name
        ET.SubElement(element, "pose").text = obj.pose
        ET.SubElement(element, "truncated").text = str(int(obj.truncated))
        ET.SubElement(element, "difficult").text = str(int(obj.difficult))
        bndbox = ET.SubElement(element, "bndbox")
        x1, y1, x2, y2 = obj.box
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = _format_number(value)
    ET.indent(root, space="\t")
    Path(path).write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")


def _format_number(value: float) -> str:
    """Integers as VOC writes them ("263"); anything else exactly, as Python's shortest repr."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
