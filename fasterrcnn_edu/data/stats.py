"""Describing a detection data set: numbers (`dataset_statistics`) and figures (`plot_*`).

Computed from the annotations only (no image is decoded), so it takes well under a second for
the shipped set. matplotlib is imported inside the plotting functions: the data layer itself
does not need it.

Object scale is sqrt(box area) / shorter image side, the measure the generator samples from
(1/16 to 3/4); aspect ratio is box width / height.
"""
from __future__ import annotations

import collections

import numpy as np

from fasterrcnn_edu.data.dataset import DetectionDataset


def dataset_statistics(ds: DetectionDataset) -> dict:
    """Counts and per-object measurements of a data set's annotations.

    Returns a dict with: images, objects, objects_per_class {name: n}, difficult, truncated,
    images_without_objects, boxes_per_image {n: number of images}, and the per-object arrays
    scale (M,), aspect (M,), label (M,) int64, difficult_mask (M,) bool.
    """
    scales, aspects, labels, difficult, truncated = [], [], [], [], []
    boxes_per_image = collections.Counter()
    for r in ds.records:
        w = r.boxes[:, 2] - r.boxes[:, 0]
        h = r.boxes[:, 3] - r.boxes[:, 1]
        scales.append(np.sqrt(w * h) / min(r.width, r.height))
        aspects.append(w / h)
        labels.append(r.labels)
        difficult.append(r.difficult)
        truncated.append(r.truncated)
        boxes_per_image[len(r.boxes)] += 1
    label = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    difficult_mask = np.concatenate(difficult) if difficult else np.zeros(0, bool)
    counts = np.bincount(label, minlength=len(ds.classes) + 1)
    return {
        "images": len(ds),
        "objects": int(len(label)),
        "objects_per_class": {name: int(counts[k]) for k, name in enumerate(ds.classes, start=1)},
        "difficult": int(difficult_mask.sum()),
        "truncated": int(np.concatenate(truncated).sum()) if truncated else 0,
        "images_without_objects": boxes_per_image[0],
        "boxes_per_image": dict(sorted(boxes_per_image.items())),
        "scale": np.concatenate(scales) if scales else np.zeros(0),
        "aspect": np.concatenate(aspects) if aspects else np.zeros(0),
        "label": label,
        "difficult_mask": difficult_mask,
    }


def plot_statistics(ds: DetectionDataset, title: str | None = None):
    """A 2 x 2 figure: objects per class, boxes per image, object scales, aspect ratios."""
    import matplotlib.pyplot as plt

    s = dataset_statistics(ds)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    fig.suptitle(title or f"{len(ds)} images, {s['objects']} objects")

    ax = axes[0, 0]
    names = list(ds.classes)
    counts = np.bincount(s["label"], minlength=len(names) + 1)[1:]
    hard = np.bincount(s["label"][s["difficult_mask"]], minlength=len(names) + 1)[1:]
    ax.bar(names, counts - hard, label="normal")
    ax.bar(names, hard, bottom=counts - hard, label="difficult")
    ax.set_title("objects per class")
    ax.set_ylim(0, 1.2 * max(counts.max(initial=0), 1))  # room for the legend above the bars
    ax.legend(loc="upper center", ncols=2)
    ax.tick_params(axis="x", rotation=45 if len(names) > 8 else 0)

    ax = axes[0, 1]
    n = list(s["boxes_per_image"])
    ax.bar(n, [s["boxes_per_image"][k] for k in n])
    ax.set_xticks(n)
    ax.set_title("objects per image")
    ax.set_xlabel("objects")
    ax.set_ylabel("images")

    ax = axes[1, 0]
    if len(s["scale"]):
        bins = np.geomspace(max(s["scale"].min(), 1e-3), max(s["scale"].max(), 2e-3), 30)
        ax.hist(s["scale"], bins=bins)
    _log_ticks(ax, [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1], ["1/32", "1/16", "1/8", "1/4", "1/2", "1"])
    ax.set_title("object scale: sqrt(box area) / shorter image side")
    ax.set_ylabel("objects")

    ax = axes[1, 1]
    if len(s["aspect"]):
        bins = np.geomspace(max(s["aspect"].min(), 1e-2), max(s["aspect"].max(), 2e-2), 30)
        ax.hist(s["aspect"], bins=bins)
    _log_ticks(ax, [1 / 4, 1 / 3, 1 / 2, 1, 2, 3, 4], ["1:4", "1:3", "1:2", "1:1", "2:1", "3:1", "4:1"])
    ax.set_title("aspect ratio: box width / height")
    ax.set_ylabel("objects")
    return fig


def _log_ticks(ax, ticks: list[float], labels: list[str]) -> None:
    """A log-scaled x axis with only the given, readable ticks."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, labels)


def plot_samples(ds: DetectionDataset, indices=None, ncols: int = 4):
    """A grid of images with their boxes and class names; difficult objects in dashed red."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    indices = list(range(min(8, len(ds)))) if indices is None else list(indices)
    nrows = max(1, -(-len(indices) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.7 * nrows), layout="constrained",
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        image, target = ds[i]
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(f"{target['image_id']}: {len(target['boxes'])} objects", fontsize=9)
        for box, label, difficult, truncated in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                                    target["difficult"].tolist(), target["truncated"].tolist()):
            x1, y1, x2, y2 = box
            colour = "red" if difficult else "lime"
            # Box edges are pixel boundaries; imshow centres pixel i at i, so shift by -0.5.
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                   linewidth=1.2, linestyle="--" if difficult else "-"))
            name = ds.classes[label - 1] + (" (trunc.)" if truncated else "")
            ax.text(x1 - 0.5, y1 - 1.5, name, color="black", fontsize=8,
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})
    return fig
