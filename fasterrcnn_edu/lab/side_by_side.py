"""`python -m fasterrcnn_edu side-by-side`: train our detector and torchvision's on the same data, in one run.

The question a reader asks before using this package: at the same budget, is it as accurate and
as fast as `torchvision.models.detection.FasterRCNN`? Both detectors here get

* the same configuration: backbone (with the same initial weights), anchors, image size,
  proposal counts, RoI sampling and head sizes — `bench.torchvision_twin` builds torchvision's
  model from ours, copying every weight whose shape allows;
* the same mini-batches, in the same order and with the same flips (`training.load_batch`);
* the same SGD schedule: the config's `joint` stage (iterations, learning rate and its step,
  warm-up, momentum, weight decay).

torchvision trains its detector only end to end, so both are trained with approximate joint
training (paper §3.2); each keeps its own losses. Both go through the package's one training
loop (`training.run_stage`), one after the other on the same mini-batches. Inference is
timed the same way, image by image, on the evaluation split, and both are scored with the VOC07
11-point mAP@0.5 and the area mAP of `evaluation.evaluate_voc`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from fasterrcnn_edu.lab.bench import torchvision_twin
from fasterrcnn_edu.lab.records import environment, recorded_arguments
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.evaluation import evaluate_voc
from fasterrcnn_edu.fileio import write_json
from fasterrcnn_edu.model import FasterRCNN
from fasterrcnn_edu.lab.profiling import synchronize
from fasterrcnn_edu.training import Stage, StageLoss, run_stage, trainable

NAMES = ("ours", "torchvision")


def build_pair(cfg: Config, device: torch.device) -> dict[str, nn.Module]:
    """Our `FasterRCNN(cfg)` and its torchvision twin, with the same initial weights, in train mode."""
    torch.manual_seed(cfg.seed)
    ours = FasterRCNN(cfg)
    theirs = torchvision_twin(ours)
    return {"ours": ours.to(device).train(), "torchvision": theirs.to(device).train()}


def train_pair(models: dict[str, nn.Module], dataset, cfg: Config, device: torch.device,
               log_every: int = 50, progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Train both models for `cfg.joint.iterations` steps of the same batches with `training.run_stage`.

    The two run one after the other on identical mini-batches (data order and flips are pure
    functions of seed and step). torchvision has no ignore regions, so both drop difficult objects
    (the released code's `use_diff=False`). Returns the training seconds of each model and a log
    (one record per model every `log_every` steps). Stops with `training.NonFiniteLossError` at the
    first non-finite loss of either model.
    """
    cfg = cfg.replace(difficult="drop")
    models["ours"].set_generator(torch.Generator(device=device).manual_seed(cfg.seed))
    seconds, log = {}, []
    for name, model in models.items():
        stage = Stage(f"joint ({name})", StageLoss(model, "joint"), trainable(model), cfg.joint,
                      cfg.images_per_batch)
        start = time.perf_counter()
        records = run_stage(stage, dataset, cfg, device, log_every=log_every, progress=progress)
        synchronize(device)
        seconds[name] = time.perf_counter() - start
        log += [{"model": name, **record, "loss": sum(v for k, v in record.items() if k.startswith("loss"))}
                for record in records]
    return seconds, log


@torch.no_grad()
def detect_pair(models: dict[str, nn.Module], dataset, device: torch.device, progress: bool = True
                ) -> tuple[dict[str, list[dict]], dict[str, float], list[dict]]:
    """Both models' detections on every image of `dataset` (one image per call, alternating).

    Returns detections per model (on CPU), the inference seconds of each, and the targets.
    """
    for model in models.values():
        model.eval()
    detections = {name: [] for name in models}
    seconds = {name: 0.0 for name in models}
    targets = []
    indices = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="side-by-side detection")
    for i in indices:
        image, target = dataset[i]
        image = image.to(device)
        for name, model in models.items():
            start = time.perf_counter()
            output = model([image])[0]
            synchronize(device)
            seconds[name] += time.perf_counter() - start
            detections[name].append({k: v.cpu() for k, v in output.items()})
        targets.append(target)
    return detections, seconds, targets


def run_pair(train_set, test_set, cfg: Config, device: torch.device, log_every: int = 50,
             progress: bool = True) -> dict:
    """One seed (`cfg.seed`): train both detectors on `train_set`, evaluate both on `test_set`."""
    classes = list(train_set.classes)
    models = build_pair(cfg, device)
    train_seconds, log = train_pair(models, train_set, cfg, device, log_every, progress)
    detections, infer_seconds, targets = detect_pair(models, test_set, device, progress)
    result = {"seed": cfg.seed}
    for name in NAMES:
        voc07 = evaluate_voc(detections[name], targets, len(classes) + 1, use_07_metric=True, class_names=classes)
        voc12 = evaluate_voc(detections[name], targets, len(classes) + 1, use_07_metric=False, class_names=classes)
        result[name] = {"voc07_map": voc07.map, "voc07_ap": voc07.ap, "voc12_map": voc12.map,
                        "train_seconds": train_seconds[name],
                        "train_ms_per_step": 1000 * train_seconds[name] / cfg.joint.iterations,
                        "infer_ms_per_image": 1000 * infer_seconds[name] / max(1, len(test_set))}
    ours, theirs = result["ours"], result["torchvision"]
    result["ratios"] = {"train_time": ours["train_seconds"] / theirs["train_seconds"],
                        "infer_time": ours["infer_ms_per_image"] / theirs["infer_ms_per_image"],
                        "voc07_map_difference": ours["voc07_map"] - theirs["voc07_map"]}
    result["log"] = log
    return result


def _mean_std(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}


def run_side_by_side(train_set, test_set, cfg: Config, seeds: Sequence[int] = (0,),
                     device: str | torch.device = "cpu", log_every: int = 50, progress: bool = True) -> dict:
    """`run_pair` for each seed (initial weights of the heads, data order, sampling), and a summary:
    mean and standard deviation of each detector's mAP and of the differences, total-time ratios."""
    device = torch.device(device)
    started = environment(device)
    runs = [run_pair(train_set, test_set, dataclasses.replace(cfg, seed=seed), device, log_every, progress)
            for seed in seeds]
    total = {name: {key: sum(run[name][key] for run in runs) for key in ("train_seconds", "infer_ms_per_image")}
             for name in NAMES}
    summary = {name: {"voc07_map": _mean_std([run[name]["voc07_map"] for run in runs]),
                      "voc12_map": _mean_std([run[name]["voc12_map"] for run in runs]),
                      "train_ms_per_step": total[name]["train_seconds"] * 1000 / (len(runs) * cfg.joint.iterations),
                      "infer_ms_per_image": total[name]["infer_ms_per_image"] / len(runs)}
               for name in NAMES}
    summary["voc07_map_difference"] = _mean_std([run["ratios"]["voc07_map_difference"] for run in runs])
    summary["train_time"] = total["ours"]["train_seconds"] / total["torchvision"]["train_seconds"]
    summary["infer_time"] = total["ours"]["infer_ms_per_image"] / total["torchvision"]["infer_ms_per_image"]
    return {"environment": started, "config": cfg.to_dict(), "steps": cfg.joint.iterations, "seeds": list(seeds),
            "train_images": len(train_set), "test_images": len(test_set), "classes": list(train_set.classes),
            "runs": runs, "summary": summary}


def format_table(result: dict) -> str:
    """The side-by-side tables (markdown): mAP per seed, then times."""
    env = result["environment"]
    lines = [f"{result['steps']} joint-training steps on {result['train_images']} images, evaluated on "
             f"{result['test_images']} test images; device {env['device']}, {env['threads']} threads, "
             f"torch {env['torch']}, torchvision {env['torchvision']}, started {env['date']}",
             "",
             "| seed | ours VOC07 mAP | torchvision VOC07 mAP | difference | train time ours/tv | infer time ours/tv |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run in result["runs"]:
        ratios = run["ratios"]
        lines.append(f"| {run['seed']} | {run['ours']['voc07_map']:.3f} | {run['torchvision']['voc07_map']:.3f} | "
                     f"{ratios['voc07_map_difference']:+.3f} | {ratios['train_time']:.2f} | {ratios['infer_time']:.2f} |")
    s = result["summary"]
    lines.append(f"| mean ± std | {s['ours']['voc07_map']['mean']:.3f} ± {s['ours']['voc07_map']['std']:.3f} | "
                 f"{s['torchvision']['voc07_map']['mean']:.3f} ± {s['torchvision']['voc07_map']['std']:.3f} | "
                 f"{s['voc07_map_difference']['mean']:+.3f} ± {s['voc07_map_difference']['std']:.3f} | "
                 f"{s['train_time']:.2f} | {s['infer_time']:.2f} |")
    lines += ["", "| | ms per training step | ms per image at test time |", "| --- | --- | --- |"]
    for name in NAMES:
        lines.append(f"| {name} | {s[name]['train_ms_per_step']:.1f} | {s[name]['infer_ms_per_image']:.1f} |")
    return "\n".join(lines)


def register(subparsers, formatter_class) -> None:
    from fasterrcnn_edu.commands import add_config_arguments, DEFAULT_DATA
    p = subparsers.add_parser("side-by-side", formatter_class=formatter_class,
                              help="train ours and torchvision's FasterRCNN at the same budget; compare",
                              description=__doc__)
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="VOC-layout folder")
    p.add_argument("--train-split", default="trainval", help="split to train on")
    p.add_argument("--test-split", default="test", help="split to evaluate on")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N test images (0: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of both detectors per seed")
    add_config_arguments(p)
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("runs/side_by_side.json"), help="JSON output file")
    p.set_defaults(func=side_by_side_command)


def side_by_side_command(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from fasterrcnn_edu.commands import config_from_arguments, open_dataset, pick_device
    from fasterrcnn_edu.training import NonFiniteLossError

    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = open_dataset(args.data, args.train_split)
    if train_set is None:
        return 1
    test_set = open_dataset(args.data, args.test_split, classes=train_set.classes)
    if test_set is None:
        return 1
    if args.limit:
        test_set = Subset(test_set, range(min(args.limit, len(test_set))))
    try:
        cfg = config_from_arguments(args, num_classes=len(train_set.classes) + 1)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_side_by_side(train_set, test_set, cfg, args.seeds, pick_device(args.device))
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["arguments"] = recorded_arguments(args)
    print(format_table(result))
    write_json(result, args.out, indent=2)
    print(f"wrote {args.out}")
    return 0
