"""Command-line sub-commands of the data layer: `make-data` and `check-data`.

    python -m fasterrcnn_edu make-data data/shapes --seed 0
    python -m fasterrcnn_edu check-data data/shapes --splits train test
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fasterrcnn_edu.data.synthetic import DEFAULT_IMAGE_SIZE, DEFAULT_JPEG_QUALITY


def register(subparsers, formatter_class) -> None:
    """Add the `make-data` and `check-data` parsers to the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "make-data", formatter_class=formatter_class,
        help="generate the synthetic 'shapes' detection data set in PASCAL VOC layout",
        description="Generate the synthetic 'shapes' data set (6 classes told apart by shape) in\n"
                    "PASCAL VOC layout: JPEGImages/, Annotations/, ImageSets/Main/, classes.txt.\n"
                    "The same seed gives byte-identical files.")
    p.add_argument("root", type=Path, metavar="ROOT", help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed; everything is derived from it")
    p.add_argument("--num-trainval", type=int, default=2000, help="images in trainval (split into train and val)")
    p.add_argument("--num-test", type=int, default=400, help="images in test")
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of trainval that goes to val")
    p.add_argument("--image-size", type=int, nargs=2, default=list(DEFAULT_IMAGE_SIZE), metavar=("W", "H"),
                   help="image width and height in pixels")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, help="JPEG quality, 1-95")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing data set in ROOT (only the generator's own files are deleted)")
    p.add_argument("--figures", action="store_true",
                   help="also save ROOT_stats.png and ROOT_samples.png next to ROOT")
    p.set_defaults(func=make_data)

    p = subparsers.add_parser(
        "check-data", formatter_class=formatter_class,
        help="validate a VOC-layout data set folder and list every problem",
        description="Parse every annotation and decode every image of a VOC-layout folder (the\n"
                    "shipped data/shapes or a real VOCdevkit/VOC2007), without stopping at the first\n"
                    "error. Exits with status 1 if any file was refused.")
    p.add_argument("root", type=Path, metavar="ROOT", help="data set folder (holding Annotations/, JPEGImages/...)")
    # SUPPRESS: no "(default: None)" in --help; an absent option means "all splits".
    p.add_argument("--splits", nargs="+", default=argparse.SUPPRESS, metavar="SPLIT",
                   help="splits to check (names in ImageSets/Main without .txt); default: all of them")
    p.add_argument("--max-errors", type=int, default=50, help="most error messages to print")
    p.set_defaults(func=check_data)


def make_data(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.data.synthetic import generate_dataset
    from fasterrcnn_edu.options import prepare_output

    prepare_output(args.root, "dir", option="ROOT")      # --jpeg-quality etc.: options.check_arguments
    try:
        stats = generate_dataset(args.root, seed=args.seed, num_trainval=args.num_trainval,
                                 num_test=args.num_test, image_size=tuple(args.image_size),
                                 val_fraction=args.val_fraction, jpeg_quality=args.jpeg_quality,
                                 overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{name} {n}" for name, n in stats["splits"].items())
    per_class = ", ".join(f"{name} {n}" for name, n in stats["objects_per_class"].items())
    n = max(stats["objects"], 1)
    print(f"wrote {stats['images']} images of {stats['image_size'][0]}x{stats['image_size'][1]} to {stats['root']} "
          f"(seed {stats['seed']}) in {stats['seconds']:.1f} s\n"
          f"  splits: {splits}\n"
          f"  {stats['objects']} objects: {per_class}\n"
          f"  {stats['difficult']} difficult ({100 * stats['difficult'] / n:.1f} %), "
          f"{stats['truncated']} truncated ({100 * stats['truncated'] / n:.1f} %), "
          f"{stats['images_without_objects']} images without objects\n"
          f"  size: {stats['bytes'] / 2**20:.1f} MiB of files, {stats['bytes_on_disk'] / 2**20:.1f} MiB on disk")
    if args.figures:
        for path in save_figures(args.root):
            print(f"  figure: {path}")
    return 0


def save_figures(root: Path) -> list[Path]:
    """Save ROOT_stats.png (trainval + test statistics) and ROOT_samples.png next to ROOT."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    from fasterrcnn_edu.data.stats import plot_samples, plot_statistics
    from fasterrcnn_edu.data.voc import VOCDataset

    root = Path(root)
    trainval = VOCDataset(root, "trainval")
    stats_path = root.parent / f"{root.name}_stats.png"
    samples_path = root.parent / f"{root.name}_samples.png"
    fig = plot_statistics(trainval, title=f"{root.name} trainval: {len(trainval)} images")
    fig.savefig(stats_path, dpi=100)
    plt.close(fig)
    fig = plot_samples(trainval, indices=range(12), ncols=4)
    fig.savefig(samples_path, dpi=110)
    plt.close(fig)
    return [stats_path, samples_path]


def check_data(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.data.check import check_dataset

    report = check_dataset(args.root, getattr(args, "splits", None))
    print(report.summary(max_errors=args.max_errors))
    return 0 if report.ok else 1
