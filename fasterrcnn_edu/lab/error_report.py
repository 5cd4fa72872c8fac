"""`python -m fasterrcnn_edu errors`: where a trained detector loses its mAP (TIDE's error types).

    python -m fasterrcnn_edu errors --model data/reference_model.pt --data data/shapes --split test --out data/experiments/errors.json

runs the model over the split (`inference.predict_dataset`), sorts its errors with
`error_analysis.analyse_errors`, and writes the JSON file, a bar chart of the mAP each error
type costs (the same name with `.png`), and a printed summary. The JSON holds the worst
examples (image ids with the error type and boxes) for the book to show.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fasterrcnn_edu.commands import DEFAULT_DATA, DEFAULT_MODEL
from fasterrcnn_edu.error_analysis import ERROR_TYPES, FIX_RULES
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.lab.records import command_line, environment, file_sha256, round_floats

__all__ = ["plot_error_breakdown", "summary_lines", "register"]

def plot_error_breakdown(report: dict, ax=None):
    """Bar chart of ΔAP (AP points recovered by fixing one error type) from an `analyse_errors` report."""
    import math

    import matplotlib.pyplot as plt

    from fasterrcnn_edu.viz import ERROR_COLORS
    if not math.isfinite(report["map"]):
        raise ValueError("the report's mAP is undefined (no ground-truth object), so there is no breakdown to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.6))
    values = [100 * report["delta_ap"][kind] for kind in ERROR_TYPES]
    bars = ax.bar(ERROR_TYPES, values, color=[ERROR_COLORS[k] for k in ERROR_TYPES])
    ax.bar_label(bars, fmt="%.1f", padding=2)
    ax.set_ylabel("ΔAP if fixed (AP points)")
    metric = report["settings"]["metric"]
    ax.set_title(f"Errors of the detector: mAP {100 * report['map']:.1f} ({metric}), "
                 f"{100 * report['map_fixed']['all']:.0f} with every error fixed", fontsize=9)
    ax.set_ylim(0, max(values + [1.0]) * 1.2)
    ax.tick_params(axis="x", labelsize=8)
    return ax


def summary_lines(report: dict) -> list[str]:
    """The printed summary: mAP, ΔAP and count per type, misses by size, occlusion and truncation."""
    threshold = report["settings"]["score_threshold"]
    lines = [f"mAP {report['map']:.4f} ({report['settings']['metric']}, {report['images']} images, "
             f"{report['counts']['objects']} non-difficult objects; fix rule: {report['settings'].get('fix_rule', 'per-type')})",
             f"{'error type':<16} {'ΔAP':>7}  {'count':>6}  {f'score >= {threshold:g}':>13}"]
    for kind in ERROR_TYPES:
        count = report["counts"][kind]
        lines.append(f"{kind:<16} {100 * report['delta_ap'][kind]:7.2f}  {count['all']:6d}  {count['at_threshold']:13d}")
    lines.append(f"{'all FPs':<16} {100 * report['delta_ap']['all false positives']:7.2f}")
    lines.append(f"{'all':<16} {100 * report['delta_ap']['all']:7.2f}")
    # The count columns mean different things for the false-positive rows and for "missed": say so under the table.
    lines.append("count: false positives of the type; for missed, the objects no detection explains")
    lines.append(f"score >= {threshold:g}: those scoring at least {threshold:g}; for missed, the objects with no "
                 f"true positive scoring at least {threshold:g}")
    for name, table in report["misses"].items():
        cells = [f"{group} {row['not_detected_at_threshold']}/{row['objects']}" for group, row in table.items()]
        lines.append(f"undetected at score >= {threshold:g}, {name.replace('_', ' ')}: " + ", ".join(cells))
    return lines


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("errors", formatter_class=formatter_class,
                              help="break a detector's errors into TIDE's types, with the mAP each costs (JSON + PNG)",
                              description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model.pt or checkpoint.pt")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VOC-layout folder")
    p.add_argument("--split", default="test", help="split to analyse")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="operating point of the 'at threshold' counts and the worst images")
    p.add_argument("--top", type=int, default=8, help="worst examples kept per error type")
    p.add_argument("--fix-rule", choices=FIX_RULES, default="tide",
                   help="which error an object's one correction goes to: TIDE's rule (the highest-scoring "
                        "localisation or classification error on it) or ours, 'per-type' (the highest-scoring "
                        "error of the type being fixed)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("runs/errors.json"), help="JSON file; the figure goes beside it (.png)")
    p.set_defaults(func=errors_command)


def errors_command(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")             # files only, no window: before anything draws
    from torch.utils.data import Subset

    from fasterrcnn_edu.checkpoint import CheckpointError, load_model
    from fasterrcnn_edu.commands import open_dataset, pick_device, save_figure
    from fasterrcnn_edu.error_analysis import analyse_errors
    from fasterrcnn_edu.inference import predict_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    try:
        model, classes = load_model(args.model, device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dataset = open_dataset(args.data, args.split, classes)
    if dataset is None:
        return 1
    indices = range(min(args.limit, len(dataset))) if args.limit else range(len(dataset))
    objects = sum(int((~dataset.records[i].difficult).sum()) for i in indices)
    if objects == 0:
        # mAP, and so the AP each error type costs, is undefined without an object to find (NaN),
        # as `eval` says; checked before the detector runs over the split.
        print(f"error: {args.data} [{args.split}]: the {len(indices)} image(s) hold no (non-difficult) ground-truth "
              "object, so the mAP and its breakdown by error type are undefined", file=sys.stderr)
        return 1
    subset = Subset(dataset, indices)
    detections, targets = predict_dataset(model, subset, device, progress=True)
    report = analyse_errors(detections, targets, len(classes) + 1, class_names=classes,
                            score_threshold=args.score_threshold, top=args.top, fix_rule=args.fix_rule)
    report.update({"model": str(args.model), "model_sha256": file_sha256(args.model), "data": str(args.data),
                   "split": args.split, "command": command_line(), "environment": environment(device),
                   "seconds": round(time.perf_counter() - t0, 1)})
    write_json(round_floats(report), args.out)
    figure = args.out.with_suffix(".png")
    save_figure(plot_error_breakdown(report), figure)
    print("\n".join(summary_lines(report)))
    print(f"wrote {args.out} and {figure} in {report['seconds']:.0f} s")
    return 0
