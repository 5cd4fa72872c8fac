"""A synthetic detection data set, "shapes", small enough to train Faster R-CNN on a CPU.

Six classes told apart by shape alone: colour is random per object and never depends on the
class, so the detector has to learn shape. The images are built to show the paper's ideas:

* scales from 1/16 to 3/4 of the image side and aspect ratios from 1:3 to 3:1 (anchors of
  several scales and ratios, Sec. 3.1.1), most objects mid-sized;
* 1 to 6 objects per image, with overlapping instances of the same class (why non-maximum
  suppression), and a few images with none;
* a textured background with clutter that is not an object (thin lines, dots, squiggles), so
  that "objectness" has something to reject;
* VOC's flags computed honestly from the drawn masks: `truncated` when the shape is cut by the
  image border, `difficult` when it is tiny or mostly hidden by objects drawn after it.

Boxes are the tight box of the object's *visible* pixels, as VOC's annotation guidelines ask:
clipped at the border, shrunk where a later object hides one side.

Everything comes from `numpy.random.Generator`s seeded by (seed, image index), so a seed gives
byte-identical files (with the same Pillow/libjpeg build) and image k does not depend on how many
images are generated. Written in PASCAL VOC's layout, see `voc.py`.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import torch

from fasterrcnn_edu.boxes import box_iou
from fasterrcnn_edu.data.voc import VOCAnnotation, VOCObject, write_voc_xml

SHAPE_CLASSES = ("ellipse", "rectangle", "triangle", "cross", "star", "ring")
DATASET_NAME = "shapes"  # the XMLs' <folder>, fixed so that files do not depend on the output path

DEFAULT_IMAGE_SIZE = (320, 256)  # (width, height)
DEFAULT_JPEG_QUALITY = 75  # with NOISE_SIGMA, keeps the default set under 30 MB on disk
# Objects-per-image distribution: P(0) = 3 %, the rest spread over 1..6 with fewer crowded images.
NUM_OBJECTS_P = np.array([3, 19, 22, 20, 15, 12, 9], dtype=float) / 100
MIN_SCALE, MAX_SCALE = 1 / 16, 3 / 4   # sqrt(w * h) of the shape / shorter image side
TYPICAL_SCALE, SCALE_SPREAD = 0.22, 0.5  # log-normal: median ~ 56 px on a 256 px side
MAX_ASPECT = 3.0                         # w / h from 1/3 to 3, log-uniform
BORDER_P = 0.2                           # chance that an object may be placed across the border
SAME_CLASS_NEIGHBOUR_P = 0.3             # chance that a new object is a neighbour of an existing one
TINY_SIDE = 10                           # box side (px) below which an object is "difficult"
DIFFICULT_OCCLUSION = 0.6                # fraction of the object hidden -> "difficult"
MAX_OCCLUSION = 0.8                      # never hide more than this of an object (placement retried)
MAX_SAME_CLASS_IOU = 0.6                 # nor stack two instances of one class almost exactly
NOISE_SIGMA = 1.5                        # brightness noise, in 0..255 grey levels


# --- shapes ---------------------------------------------------------------------------------

def unit_shape(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The outline of a shape as polygons filling the box [-0.5, 0.5]^2; y points down.

    Returns [outline (P, 2)] or, for the ring, [outline, hole].
    """
    if name in ("ellipse", "ring"):
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        outline = np.stack([np.cos(t), np.sin(t)], axis=1) * 0.5
        if name == "ellipse":
            return [outline]
        return [outline, outline * rng.uniform(0.45, 0.7)]  # the hole, 45-70 % of the size
    if name == "rectangle":
        outline = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.5
    elif name == "triangle":
        outline = np.array([[0, -1], [1, 1], [-1, 1]]) * 0.5
        if rng.random() < 0.5:
            outline = outline * [1, -1]  # pointing down
    elif name == "cross":
        a = rng.uniform(0.14, 0.21)  # half the arm thickness
        outline = np.array([[-a, -0.5], [a, -0.5], [a, -a], [0.5, -a], [0.5, a], [a, a],
                            [a, 0.5], [-a, 0.5], [-a, a], [-0.5, a], [-0.5, -a], [-a, -a]])
    elif name == "star":
        radii = np.tile([1.0, rng.uniform(0.38, 0.5)], 5)  # outer and inner points alternate
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        outline = np.stack([np.cos(t), np.sin(t)], axis=1) * radii[:, None]
    else:
        raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_CLASSES}")
    # Stretch to fill the unit box exactly, so that the sampled (w, h) is the shape's size.
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    return [(outline - lo) / (hi - lo) - 0.5]


def place(polygons: list[np.ndarray], center: tuple[float, float], size: tuple[float, float],
          angle_deg: float) -> list[np.ndarray]:
    """Scale unit polygons to size (w, h), rotate by angle_deg, move to center (x, y)."""
    a = math.radians(angle_deg)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return [(p * size) @ rotation.T + center for p in polygons]


def rasterize(polygons: list[np.ndarray], width: int, height: int) -> tuple[np.ndarray, int]:
    """Pixels covered by polygons[0] minus the holes polygons[1:].

    Returns (mask (height, width) bool, inside the image only; total number of pixels of the
    whole shape, including any part outside the image). The shape is drawn on its own small
    canvas first, so that the part outside the image can be measured (truncation).
    """
    points = np.concatenate(polygons)
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 2
    canvas = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, polygon in enumerate(polygons):
        draw.polygon([tuple(p) for p in (polygon - (x0, y0)).tolist()], fill=0 if i else 1)
    local = np.asarray(canvas, dtype=bool)
    mask = np.zeros((height, width), dtype=bool)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 > ix0 and iy1 > iy0:
        mask[iy0:iy1, ix0:ix1] = local[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return mask, int(local.sum())


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x1, y1, x2, y2) of a non-empty mask, continuous coordinates (x2 = last col + 1)."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def pair_iou(a: tuple, b: tuple) -> float:
    """IoU of two boxes (x1, y1, x2, y2) with integer pixel coordinates: `boxes.box_iou` in float64,
    which is exact for them (the generator's decisions must not depend on float32 rounding)."""
    return float(box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))[0, 0])


# --- background -----------------------------------------------------------------------------

def smooth_field(rng: np.random.Generator, height: int, width: int, grid: int, channels: int) -> np.ndarray:
    """Random values on a coarse grid, bilinearly interpolated: (height, width, channels) float32."""
    coarse = rng.uniform(0, 1, size=(grid, grid, channels))
    ys = np.linspace(0, grid - 1, height)
    xs = np.linspace(0, grid - 1, width)
    y0 = np.minimum(ys.astype(int), grid - 2)
    x0 = np.minimum(xs.astype(int), grid - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth colour gradient plus a faint texture: float32 (height, width, 3) in 0..255."""
    image = 40 + 180 * smooth_field(rng, height, width, grid=3, channels=3)
    texture = smooth_field(rng, height, width, grid=12, channels=1) - 0.5  # blotches, grey
    return image + rng.uniform(10, 40) * texture


def draw_clutter(image: Image.Image, rng: np.random.Generator) -> None:
    """Draw things that are not objects: thin lines, small dots and squiggles (in place).

    All are thin (1-2 px) or small (< 6 px across), so none can be mistaken for a labelled
    shape, whose shorter side is at least ~9 px.
    """
    draw = ImageDraw.Draw(image)
    width, height = image.size

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(0, 256, size=3))

    for _ in range(rng.integers(0, 4)):  # straight lines across the image
        x = rng.uniform(0, width, size=2)
        y = rng.uniform(0, height, size=2)
        draw.line([(x[0], y[0]), (x[1], y[1])], fill=colour(), width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 16)):  # dots
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.8, 2.5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour())
    for _ in range(rng.integers(0, 4)):  # squiggles: a random walk that turns smoothly
        heading = rng.uniform(0, 2 * np.pi)
        turns = np.cumsum(rng.normal(0, 0.5, size=int(rng.integers(8, 30))))
        steps = rng.uniform(3, 7) * np.stack([np.cos(heading + turns), np.sin(heading + turns)], axis=1)
        points = np.cumsum(steps, axis=0) + [rng.uniform(0, width), rng.uniform(0, height)]
        draw.line([tuple(p) for p in points.tolist()], fill=colour(), width=int(rng.integers(1, 3)), joint="curve")


# --- one image ------------------------------------------------------------------------------

def sample_shape(rng: np.random.Generator, width: int, height: int, neighbour=None):
    """Sample a random object: (name, polygons in image coordinates, ((w, h), (cx, cy))).

    A `neighbour` (name, (w, h), (cx, cy)) of an existing object gives an instance of the same
    class, of similar size, overlapping it.
    """
    side = min(width, height)
    if neighbour is None:
        name = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES))]
        scale = math.exp(rng.normal(math.log(TYPICAL_SCALE), SCALE_SPREAD))
        while not MIN_SCALE <= scale <= MAX_SCALE:  # truncated log-normal: most objects mid-sized
            scale = math.exp(rng.normal(math.log(TYPICAL_SCALE), SCALE_SPREAD))
        aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
        w = min(scale * side * math.sqrt(aspect), 0.95 * width)
        h = min(scale * side / math.sqrt(aspect), 0.95 * height)
        # Mostly fully inside the image; sometimes anywhere, so that some are cut by the border.
        inside = rng.random() >= BORDER_P
        cx = rng.uniform(*sorted((w / 2, width - w / 2))) if inside else rng.uniform(0, width)
        cy = rng.uniform(*sorted((h / 2, height - h / 2))) if inside else rng.uniform(0, height)
    else:
        name, (w0, h0), (cx0, cy0) = neighbour
        w, h = np.array([w0, h0]) * rng.uniform(0.8, 1.25)
        direction = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0.3, 0.7) * math.sqrt(w0 * h0)
        cx, cy = cx0 + distance * math.cos(direction), cy0 + distance * math.sin(direction)
    angle = rng.uniform(-15, 15) if rng.random() < 0.5 else 0.0
    polygons = place(unit_shape(name, rng), (cx, cy), (w, h), angle)
    return name, polygons, ((w, h), (cx, cy))


def render_image(rng: np.random.Generator, width: int = 320, height: int = 256,
                 num_objects: int | None = None) -> tuple[np.ndarray, list[VOCObject]]:
    """Render one image and annotate it.

    Returns (pixels (height, width, 3) uint8 RGB, objects in drawing order with boxes in
    continuous 0-based pixel coordinates and VOC's truncated/difficult flags).
    """
    if num_objects is None:
        num_objects = int(rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P))
    canvas = Image.fromarray(np.clip(background(rng, width, height), 0, 255).astype(np.uint8))
    draw_clutter(canvas, rng)
    pixels = np.asarray(canvas).astype(np.float32)

    # Place objects one by one; each is drawn over the earlier ones. A placement that would
    # hide too much of an earlier object, leave too little of itself inside the image, or land
    # on a same-class twin is retried.
    names, masks, full_areas, geometry = [], [], [], []
    for _ in range(num_objects):
        for _attempt in range(30):
            neighbour = None
            if names and rng.random() < SAME_CLASS_NEIGHBOUR_P:
                j = int(rng.integers(len(names)))
                neighbour = (names[j], *geometry[j])
            name, polygons, geo = sample_shape(rng, width, height, neighbour)
            mask, full_area = rasterize(polygons, width, height)
            if acceptable(mask, full_area, name, names, masks):
                names.append(name)
                masks.append(mask)
                full_areas.append(full_area)
                geometry.append(geo)
                break

    objects = []
    covered = np.zeros((height, width), dtype=bool)  # pixels of objects drawn later
    for name, mask, full_area in reversed(list(zip(names, masks, full_areas))):
        visible = mask & ~covered
        covered |= mask
        occlusion = 1 - visible.sum() / mask.sum()
        box = mask_box(visible)
        tiny = min(box[2] - box[0], box[3] - box[1]) < TINY_SIDE
        objects.append(VOCObject(name=name, box=box, truncated=bool(mask.sum() < full_area),
                                 difficult=bool(tiny or occlusion > DIFFICULT_OCCLUSION)))
    objects.reverse()

    for mask in masks:  # paint in drawing order, each in a colour that stands out locally
        pixels[mask] = contrasting_colour(rng, pixels[mask].mean(axis=0))
    # Sensor-like noise on brightness only: chroma noise would cost JPEG bytes for nothing.
    pixels += rng.normal(0, NOISE_SIGMA, size=(height, width, 1)).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), objects


def acceptable(mask: np.ndarray, full_area: int, name: str, names: list[str], masks: list[np.ndarray]) -> bool:
    """Can a new object with this mask be drawn over the objects already placed?"""
    area = int(mask.sum())
    if area < 30 or area < 0.4 * full_area:  # mostly outside the image
        return False
    box = mask_box(mask)
    later = mask.copy()  # for object j: everything drawn after it, including the new one
    for j in range(len(masks) - 1, -1, -1):
        if (masks[j] & later).sum() > MAX_OCCLUSION * masks[j].sum():
            return False
        if names[j] == name and pair_iou(box, mask_box(masks[j])) > MAX_SAME_CLASS_IOU:
            return False
        later |= masks[j]
    return True


def contrasting_colour(rng: np.random.Generator, behind: np.ndarray, min_distance: float = 90.0) -> np.ndarray:
    """A random RGB colour at least `min_distance` away from the mean colour `behind` it."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - behind) >= min_distance:
            break
    return colour.astype(np.float32)


# --- the data set ---------------------------------------------------------------------------

OUTPUTS = ("Annotations", "JPEGImages", "ImageSets", "classes.txt")


def generate_dataset(root: str | os.PathLike, seed: int = 0, num_trainval: int = 2000, num_test: int = 400,
                     image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, val_fraction: float = 0.2,
                     jpeg_quality: int = DEFAULT_JPEG_QUALITY, overwrite: bool = False) -> dict:
    """Write a shapes data set in VOC layout under `root` and return statistics about it.

    Images 000001.. are trainval (split into train and val with `val_fraction`), the remaining
    `num_test` are test. image_size is (width, height). Refuses to write over an existing data
    set unless `overwrite`, which deletes only the generator's own outputs (`OUTPUTS`) first.
    """
    start = time.perf_counter()
    root = Path(root).expanduser()
    width, height = image_size
    if min(width, height) < 64:
        raise ValueError(f"image_size {image_size} is too small; use at least 64 x 64")
    existing = [name for name in OUTPUTS if (root / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {', '.join(existing)}; choose another folder "
                              "or pass overwrite=True (--overwrite) to replace them")
    for name in existing:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n", encoding="utf-8")

    ids = [f"{i:06d}" for i in range(1, num_trainval + num_test + 1)]
    stats = {"objects_per_class": dict.fromkeys(SHAPE_CLASSES, 0), "objects": 0, "difficult": 0,
             "truncated": 0, "images_without_objects": 0}
    for index, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, index])
        pixels, objects = render_image(rng, width, height)
        # optimize=True only shrinks the Huffman tables: same pixels, ~5 % fewer bytes.
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=jpeg_quality, optimize=True)
        write_voc_xml(VOCAnnotation(filename=f"{image_id}.jpg", width=width, height=height, depth=3,
                                    objects=objects, folder=DATASET_NAME),
                      root / "Annotations" / f"{image_id}.xml")
        for obj in objects:
            stats["objects_per_class"][obj.name] += 1
        stats["objects"] += len(objects)
        stats["difficult"] += sum(obj.difficult for obj in objects)
        stats["truncated"] += sum(obj.truncated for obj in objects)
        stats["images_without_objects"] += not objects

    trainval, test = ids[:num_trainval], ids[num_trainval:]
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(len(trainval))
    num_val = int(round(val_fraction * len(trainval)))
    val = sorted(trainval[i] for i in order[:num_val])
    train = sorted(trainval[i] for i in order[num_val:])
    splits = {"train": train, "val": val, "trainval": trainval, "test": test}
    for split, split_ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids), encoding="utf-8")

    apparent, allocated = disk_usage(root)
    stats.update(root=str(root), seed=seed, image_size=(width, height), jpeg_quality=jpeg_quality,
                 images=len(ids), splits={k: len(v) for k, v in splits.items()},
                 bytes=apparent, bytes_on_disk=allocated, seconds=time.perf_counter() - start)
    return stats


def disk_usage(root: str | os.PathLike) -> tuple[int, int]:
    """(sum of file sizes, bytes allocated on disk as `du` counts them) under `root`, in bytes.

    The two differ because every small file occupies whole file-system blocks (often 4 KiB).
    """
    apparent = allocated = 0
    for path in Path(root).rglob("*"):
        if path.is_file():
            st = path.stat()
            apparent += st.st_size
            allocated += getattr(st, "st_blocks", math.ceil(st.st_size / 512)) * 512
    return apparent, allocated
