"""Command-line sub-commands of the detector: `train`, `eval`, `detect`.

    python -m fasterrcnn_edu train --data data/shapes --preset book --mode alternating --out runs/book
    python -m fasterrcnn_edu eval  --model data/reference_model.pt --data data/shapes --split test --out runs/eval
    python -m fasterrcnn_edu detect --model data/reference_model.pt IMAGE [IMAGE ...] --out runs/detect
    torchrun --nproc_per_node 2 -m fasterrcnn_edu train ...        # data-parallel (see `distributed_run`)

Every option, --out included, is checked before any work (`options.check_arguments`, run by
`cli.main`); errors are one line, `error: ...`, printed by `cli.main`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import os
import sys
import typing
from pathlib import Path

import numpy as np
import torch

from fasterrcnn_edu.config import PRESETS, Config, ConfigError, StageSchedule
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.options import UsageError, amp_warning, pick_device, set_threads, warn

PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def shipped(relative: str) -> Path:
    """`relative` inside the repository checkout this package runs from (so the defaults work from any
    folder); if the package was installed without the repository's data, relative to the current folder."""
    candidate = PACKAGE_PARENT / relative
    return candidate if candidate.exists() else Path(relative)


DEFAULT_MODEL = shipped("data/reference_model.pt")
DEFAULT_DATA = shipped("data/shapes")
RUN_FILES = ("model.pt", "checkpoint.pt")    # what makes a folder "another run's" for train --out
# Every file `train` writes into --out, and what it is: checked before training (rank 0 writes them
# at the end, when a folder in the way would cost the whole run).
RUN_OUTPUTS = {"model.pt": "model", "checkpoint.pt": "checkpoints", "log.csv": "loss log",
               "log.jsonl": "loss log", "losses.png": "loss plot"}


class PeerStoppedError(RuntimeError):
    """Another process of a data-parallel run stopped (its own error says why), so this one stops too."""


def save_figure(ax, path: Path) -> None:
    """Write the figure of `ax` as a PNG and close it."""
    import matplotlib.pyplot as plt
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)


def open_dataset(root: Path, split: str, classes: list[str] | None = None):
    """`VOCDataset(root, split)`, or None after printing why not (missing folder or split, bad file) on stderr."""
    from fasterrcnn_edu.data import DataError, VOCDataset
    try:
        return VOCDataset(root, split, classes=classes)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("train", formatter_class=formatter_class, help="train a detector",
                              description="Train Faster R-CNN: the paper's 4-step alternating scheme (§3.2), "
                                          "approximate joint training, or unshared (steps 1-2).\n"
                                          "Data-parallel: torchrun --nproc_per_node N -m fasterrcnn_edu train ...")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VOC-layout folder (e.g. VOCdevkit/VOC2007)")
    p.add_argument("--split", default="trainval", help="split to train on (ImageSets/Main/SPLIT.txt)")
    p.add_argument("--mode", choices=("alternating", "joint", "unshared"), default="alternating",
                   help="training scheme")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output folder (relative to the current folder)")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint.pt of an interrupted run to continue")
    p.add_argument("--overwrite", action="store_true",
                   help="train even if --out already holds another run's model.pt or checkpoint.pt (replaced)")
    add_config_arguments(p)
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1'")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="mixed precision: autocast the networks (boxes and losses stay fp32; fp16 adds loss scaling)")
    p.set_defaults(func=train_command)

    p = subparsers.add_parser("eval", formatter_class=formatter_class, help="evaluate a trained detector",
                              description="VOC mAP per class (11-point VOC07 and area AP), COCO AP@[.5:.95] and "
                                          "recall vs IoU of the proposals; writes metrics.json, detections.pt (the detections, re-scorable without the model) and PNG plots.\n"
                                          "Images that cannot be read are listed and left out.")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model.pt or checkpoint.pt")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VOC-layout folder")
    p.add_argument("--split", default="test", help="split to evaluate")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder (relative to the current folder)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0: all)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="run the networks under autocast in this precision (boxes stay fp32)")
    p.set_defaults(func=eval_command)

    p = subparsers.add_parser("detect", formatter_class=formatter_class, help="detect objects in images",
                              description="Run a trained detector on image files; writes NAME.png (boxes drawn) "
                                          "and detections.json (detections per image, and the images that "
                                          "could not be read).")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model.pt or checkpoint.pt")
    p.add_argument("--out", type=Path, default=Path("runs/detect"), help="output folder (relative to the current folder)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw and report detections above this score")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=detect_command)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The options that make a training Config: preset, seed, schedule scale, backbone weights, --set."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="book", help="configuration preset")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, data order, sampling)")
    p.add_argument("--iterations-scale", type=float, default=1.0,
                   help="multiply every stage's iterations (and lr step) by this factor")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="local ImageNet weights file for the backbone (e.g. vgg16-397923af.pth)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set roi_pool=align --set rpn_lambda=1 (repeatable)")


# ---------------------------------------------------------------------------------------------
# --set and the Config
# ---------------------------------------------------------------------------------------------
# Fields the command line decides itself: --set may not contradict them.
DERIVED_FIELDS = {"num_classes": "the data set's classes"}


def config_from_arguments(args: argparse.Namespace, num_classes: int) -> Config:
    """The Config of `add_config_arguments`' options; UsageError names the option or --set field at fault."""
    from fasterrcnn_edu.config import get_config
    overrides = parse_overrides(args.set)
    values = {"seed": args.seed, "num_classes": num_classes, **overrides}
    if args.backbone_weights:
        values["backbone_weights"] = str(args.backbone_weights)
    try:
        return get_config(args.preset, **values).scaled(args.iterations_scale)
    except ConfigError as exc:
        given = next((item for item in args.set if item.partition("=")[0].strip() == exc.field), None)
        source = f"--set {given}" if given is not None else f"--preset {args.preset}"
        raise UsageError(f"{source}: {exc}") from None


def parse_overrides(items: list[str]) -> dict:
    """["roi_pool=align", "rpn_lambda=1"] -> {"roi_pool": "align", "rpn_lambda": 1.0}, typed like the Config field.

    UsageError for a malformed item, an unknown or repeated field, or text that is not of the
    field's type; the values' ranges are checked by `Config.validate`.
    """
    fields = {f.name for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"--set {item}: expected FIELD=VALUE, e.g. --set roi_pool=align")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; the fields are those of Config (config.py)"
            raise UsageError(f"--set {item}: unknown Config field {name!r}{hint}")
        if name in DERIVED_FIELDS:
            raise UsageError(f"--set {item}: {name} is set from {DERIVED_FIELDS[name]}, not by --set")
        if name in out:
            raise UsageError(f"--set {item}: {name} is set twice")
        try:
            out[name] = parse_value(text.strip(), hints[name])
        except (ValueError, SyntaxError, TypeError):
            raise UsageError(f"--set {item}: {text!r} is not a valid value for {name} "
                             f"(expected {_type_words(hints[name])})") from None
    return out


def parse_value(text: str, hint):
    """Text of `--set FIELD=TEXT` as the type `hint` of the Config field (ValueError if it is not one)."""
    import ast
    if hint is str:
        return text
    if hint == (str | None):
        return None if text == "None" else text
    if hint is bool:
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        return words[text.lower()] if text.lower() in words else _fail(text)
    if hint is float:
        return float(text)             # "nan" and "inf" parse; Config.validate refuses them, naming the field
    if hint is int:
        value = ast.literal_eval(text)
        return value if isinstance(value, int) and not isinstance(value, bool) else _fail(text)
    value = ast.literal_eval(text)
    if hint is StageSchedule:          # --set joint=(2500,0.01,2000) or {"iterations": ..., "lr": ..., "lr_step": ...}
        return StageSchedule(**value) if isinstance(value, dict) else StageSchedule(*value)
    return tuple(value) if isinstance(value, (list, tuple)) else _fail(text)


def _fail(text: str):
    raise ValueError(text)


def _type_words(hint) -> str:
    if hint is StageSchedule:
        return "(iterations, lr, lr_step)"
    return {str: "text", bool: "true or false", float: "a number", int: "an integer"}.get(
        hint, "None or text" if hint == (str | None) else "a tuple such as (1, 2, 3)")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def check_new_run(out: Path, resume: Path | None, overwrite: bool) -> None:
    """Refuse to train into a folder where a run's file would be a folder (found before training, not when
    rank 0 writes it at the end), or that holds another run, unless resuming it or told to overwrite."""
    for name, what in RUN_OUTPUTS.items():
        path = out / name
        if path.is_dir() or (path.exists() and not path.is_file()):
            raise UsageError(f"--out {out}: {name} is {'a folder' if path.is_dir() else 'not a regular file'}, "
                             f"where the run writes its {what}; remove it or choose another --out")
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"--out {out}: {name} is not writable, and the run writes its {what} there")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and resume is None and not overwrite:
        raise UsageError(f"--out {out} already holds another run ({', '.join(existing)}); continue it with "
                         f"--resume {out / 'checkpoint.pt'}, replace it with --overwrite, or choose another --out")


def paper_weights_warning(preset: str, cfg: Config) -> None:
    """The paper fine-tunes ImageNet weights; training its VGG-16 from random weights is a different experiment."""
    if preset == "paper" and cfg.backbone_weights is None:
        name = {"vgg16": "VGG-16", "zf": "ZF"}.get(cfg.backbone, cfg.backbone)
        file = "torchvision's vgg16-397923af.pth" if cfg.backbone == "vgg16" else f"ImageNet weights for {name}"
        warn(f"--preset paper without --backbone-weights: {name} starts from random weights, "
             "while the paper fine-tunes ImageNet-pretrained weights (expect a far lower mAP). Nothing is "
             f"downloaded here: fetch {file} once and pass it with --backbone-weights PATH")


def train_command(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.data import DataError, VOCDataset
    from fasterrcnn_edu.data.check import unreadable_images
    from fasterrcnn_edu.data.voc import read_classes
    from fasterrcnn_edu.training import train

    out = args.out                    # checked by options.check_arguments (cli.main) before this runs
    check_new_run(out, args.resume, args.overwrite)
    set_threads(args.threads)
    device = pick_device(args.device)
    classes = read_classes(args.data)            # cheap: the options are checked before the data set is read
    cfg = config_from_arguments(args, num_classes=len(classes) + 1)
    dataset = VOCDataset(args.data, args.split, classes=classes)
    unreadable = unreadable_images(dataset)
    if unreadable:
        raise DataError(args.data, f"{len(unreadable)} image(s) of split {args.split!r} cannot be read; fix or "
                                   "remove them first (check-data lists every problem): "
                                   + "; ".join(list(unreadable.values())[:3]))
    with distributed_run(device) as (device, rank, world_size):
        if rank == 0:
            amp_warning(args.amp, device)
            paper_weights_warning(args.preset, cfg)
            parallel = f", {world_size} data-parallel processes" if world_size > 1 else ""
            print(f"training {args.mode} ({args.preset} preset) on {len(dataset)} images of {args.data} "
                  f"[{args.split}], {len(dataset.classes)} classes, device {device}{parallel}; output in {out}")
        result = train(dataset, cfg, args.mode, out, device, args.resume,
                       checkpoint_every=args.checkpoint_every, classes=list(dataset.classes), amp=args.amp)
        identical = world_size == 1 or replicas_identical(result.model, rank, world_size)
    if rank == 0:
        if result.log:                      # the loss curves, from the log train wrote (log.csv)
            from fasterrcnn_edu.viz import plot_loss_curves, whole_run_steps
            save_figure(plot_loss_curves(whole_run_steps(result.log)), out / "losses.png")
        print(f"done in {result.seconds:.0f} s: {out / 'model.pt'}, log in {out / 'log.csv'}")
    return 0 if identical else 1


@contextlib.contextmanager
def distributed_run(device: torch.device):
    """Yield (device, rank, world size): under torchrun (WORLD_SIZE > 1 in the environment) a process
    group is initialised from torchrun's variables — gloo on CPU, NCCL on CUDA with one device per
    LOCAL_RANK — and destroyed at the end; otherwise (device, 0, 1). `training.train` then wraps each
    stage in DistributedDataParallel, gives every rank its own slice of each batch and lets rank 0
    alone write files."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world_size <= 1:
        yield device, 0, 1
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UsageError(f"WORLD_SIZE={world_size} is set, but not {', '.join(missing)}: data-parallel training is "
                         f"started by torchrun, which sets them all (torchrun --nproc_per_node {world_size} -m "
                         "fasterrcnn_edu train ...); unset WORLD_SIZE to train in one process")
    import torch.distributed as dist
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s); use --nproc_per_node at most that")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot join the data-parallel run (MASTER_ADDR {os.environ['MASTER_ADDR']}, MASTER_PORT "
                         f"{os.environ['MASTER_PORT']}, RANK {os.environ['RANK']}): {str(exc).splitlines()[0][:200]}"
                         ) from None
    rank = dist.get_rank()
    try:
        yield device, rank, dist.get_world_size()
    except RuntimeError as exc:
        if not lost_peer(exc):
            raise
        # The other process already printed why it stopped; a collective of ours then fails with a
        # transport error ("Connection closed by peer"), which says nothing to the user.
        raise PeerStoppedError(f"data-parallel process {rank}: lost the connection to another process of the run, "
                               "which stopped first (its own error says why); stopping too") from None
    finally:
        dist.destroy_process_group()


def lost_peer(exc: BaseException) -> bool:
    """True for the errors a collective raises when another process of the group has gone: torch's
    DistError family, and the plain RuntimeError that gloo's and NCCL's transports raise."""
    import torch.distributed as dist
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return type(exc) is RuntimeError and any(word in text for word in ("gloo", "NCCL", "Connection closed by peer",
                                                                        "Connection reset by peer"))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the model's state dict, in name order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replicas_identical(model: torch.nn.Module, rank: int, world_size: int) -> bool:
    """After data-parallel training all ranks must hold the same weights (DDP averages the gradients);
    rank 0 says whether they do."""
    import torch.distributed as dist
    digests = [None] * world_size
    dist.all_gather_object(digests, weights_digest(model))
    identical = len(set(digests)) == 1
    if rank == 0 and identical:
        print(f"data-parallel: {world_size} processes, each on its own slice of every batch; "
              f"replicas identical (weights sha256 {digests[0][:12]})")
    elif rank == 0:
        print(f"error: data-parallel replicas differ after training (weight digests {digests})", file=sys.stderr)
    return identical


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------
def eval_command(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")             # files only, no window: before anything draws
    from torch.utils.data import Subset

    from fasterrcnn_edu.checkpoint import load_model
    from fasterrcnn_edu.data import VOCDataset
    from fasterrcnn_edu.data.check import unreadable_images
    from fasterrcnn_edu.inference import evaluate_model, save_detections
    from fasterrcnn_edu.training import AMP_DTYPES
    from fasterrcnn_edu.viz import plot_pr_curves, plot_recall_vs_iou

    out = args.out
    set_threads(args.threads)
    device = pick_device(args.device)
    amp_warning(args.amp, device)
    model, classes = load_model(args.model, device)
    dataset = VOCDataset(args.data, args.split, classes=classes, skip_errors=True)
    indices = range(min(args.limit, len(dataset))) if args.limit else range(len(dataset))
    skipped = {**dataset.errors, **{dataset.ids[i]: message for i, message in unreadable_images(dataset, indices).items()}}
    for message in skipped.values():
        print(f"error: {message} (image left out)", file=sys.stderr)
    subset = Subset(dataset, [i for i in indices if dataset.ids[i] not in skipped])
    if len(subset) == 0:
        print(f"error: none of the images of {args.data} [{args.split}] can be read", file=sys.stderr)
        return 1
    dtype = AMP_DTYPES[args.amp]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        result = evaluate_model(model, subset, classes, device, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    print(result["voc07"].table())
    print(f"VOC2010+ area mAP: {result['voc12'].map:.4f}   COCO AP@[.5:.95]: {result['coco']['AP']:.4f}")
    metrics = {
        "model": str(args.model), "data": str(args.data), "split": args.split, "images": len(subset),
        "amp": args.amp,
        "voc07_map": result["voc07"].map, "voc07_ap": result["voc07"].ap,
        "voc12_map": result["voc12"].map, "voc12_ap": result["voc12"].ap,
        "coco": result["coco"], "recall_vs_iou": {str(k): v for k, v in result["recall_vs_iou"].items()},
        "errors": skipped,                # image id -> why it was left out
    }
    write_json(metrics, out / "metrics.json", indent=2)
    # The detections behind every number above, so that they can be re-scored without the model.
    save_detections(result["detections"], [dataset.ids[i] for i in subset.indices], out / "detections.pt")
    written = ["metrics.json", "detections.pt"]
    if np.isfinite(result["voc07"].map):          # without ground truth there is no curve to draw
        save_figure(plot_pr_curves(result["voc07"]), out / "pr_curves.png")
        written.append("pr_curves.png")
    curves = {f"RPN top-{n}": (np.asarray(v["iou"]), np.asarray(v["recall"]))
              for n, v in result["recall_vs_iou"].items()}
    save_figure(plot_recall_vs_iou(curves), out / "recall_vs_iou.png")
    print(f"wrote {', '.join(written + ['recall_vs_iou.png'])} in {out}")
    if not np.isfinite(result["voc07"].map):
        print(f"error: mAP is undefined: the {len(subset)} evaluated images hold no (non-difficult) ground-truth "
              "object of any class", file=sys.stderr)
        return 1
    if skipped:
        print(f"error: {len(skipped)} image(s) could not be read and were left out "
              "(listed under \"errors\" in metrics.json)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------------------------
def output_names(paths: list[Path], suffix: str = ".png") -> dict[Path, str]:
    """A distinct output file name per input: NAME.png, and NAME-2.png, NAME-3.png... for inputs
    that share a file name (a/img.jpg and b/img.jpg), in the order given."""
    names, used = {}, set()
    for path in paths:
        stem, n = path.stem or "image", 1
        name = f"{stem}{suffix}"
        while name.lower() in used:           # lower(): case-insensitive file systems
            n += 1
            name = f"{stem}-{n}{suffix}"
        used.add(name.lower())
        names[path] = name
    return names


def detect_command(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")             # files only, no window: before anything draws

    from fasterrcnn_edu.checkpoint import load_model
    from fasterrcnn_edu.data import DataError, read_image_tensor
    from fasterrcnn_edu.viz import plot_detections

    out = args.out
    set_threads(args.threads)
    device = pick_device(args.device)
    model, classes = load_model(args.model, device)
    paths = list(dict.fromkeys(args.images))     # an image listed twice is detected once
    if len(paths) < len(args.images):
        warn(f"{len(args.images) - len(paths)} image(s) listed more than once; each is detected once")
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model), "score_threshold": args.score_threshold, "images": {}, "errors": {}}
    for path, name in output_names(paths).items():
        try:
            image = read_image_tensor(path)
            with torch.no_grad():
                det = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        except (DataError, torch.cuda.OutOfMemoryError) as exc:
            report["errors"][str(path)] = str(exc).splitlines()[0]
            print(f"error: {report['errors'][str(path)]}", file=sys.stderr)
            continue
        keep = det["scores"] >= args.score_threshold
        found = [{"label": classes[int(l) - 1], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                 for b, l, s in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]
        save_figure(plot_detections(image, det, ["__background__", *classes], score_threshold=args.score_threshold),
                    out / name)
        report["images"][str(path)] = {"output": name, "size": list(image.shape[1:]), "detections": found}
        print(f"{path}: {len(found)} detections -> {out / name}")
    write_json(report, out / "detections.json", indent=2)
    failed = f"; {len(report['errors'])} image(s) could not be read (\"errors\")" if report["errors"] else ""
    print(f"wrote {out / 'detections.json'}: {len(report['images'])} image(s){failed}")
    return 1 if report["errors"] else 0
