"""`python -m fasterrcnn_edu ddp-traffic`: the bytes DistributedDataParallel all-reduces per training step.

    python -m fasterrcnn_edu ddp-traffic --preset book --mode alternating --out runs/ddp_book.json

Two CPU processes over gloo train one step of each stage on a tiny synthetic set (96×128 images,
so even the paper preset's VGG-16 runs in a minute). A communication hook on every DDP wrapper
adds up the gradient buckets it sends, stage by stage. Under DDP each stage synchronises only the
parameters it trains (`training.run_stage`): in step 1 that is the shared conv layers and the RPN,
not fc6/fc7, and in step 3 the RPN head alone. The report gives, per stage, the bytes sent per step
and the trained parameters' bytes, which must agree.

The count wraps `training._wrap_for_ddp` for the length of the run: a measurement of the lab,
which the detector itself does not carry.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch

from fasterrcnn_edu.config import PRESETS, StageSchedule
from fasterrcnn_edu.fileio import write_json

IMAGE_SIZE = (96, 128)      # (H, W): small enough for VGG-16 on a CPU, big enough for its stride-16 grid


class TinyBoxes(torch.utils.data.Dataset):
    """Four 96×128 images, each with two bright boxes of classes 1 and 2 on a dark noise background."""

    classes = ["a", "b"]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        image = 0.1 * torch.rand(3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(index))
        boxes = torch.tensor([[8.0 + index, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 80.0 - index]])
        for x1, y1, x2, y2 in boxes.long().tolist():
            image[:, y1:y2, x1:x2] = 0.9
        return image, {"boxes": boxes, "labels": torch.tensor([1, 2])}


def _worker(rank: int, port: int, preset: str, mode: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from fasterrcnn_edu import training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    counters: list[dict] = []
    wrap = training._wrap_for_ddp

    def counting_wrap(module, device):
        ddp = wrap(module, device)
        counter = {"bytes": 0, "buckets": 0,
                   "trained_bytes": sum(p.numel() * p.element_size() for p in ddp.parameters() if p.requires_grad)}
        counters.append(counter)

        def hook(state, bucket):
            counter["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
            counter["buckets"] += 1
            return default_hooks.allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp

    training._wrap_for_ddp = counting_wrap
    try:
        one = StageSchedule(1, 0.001, 1)
        cfg = PRESETS[preset](num_classes=3, min_size=IMAGE_SIZE[0], max_size=IMAGE_SIZE[1], warmup_iterations=0,
                              images_per_batch=1, det_images_per_batch=1, stage_rpn1=one, stage_det1=one,
                              stage_rpn2=one, stage_det2=one, joint=one)
        result = training.train(TinyBoxes(), cfg, mode, None, progress=False)
        if rank == 0:
            stages = list(dict.fromkeys(r["stage"] for r in result.log))
            write_json([dict(stage=s, **c) for s, c in zip(stages, counters)], out, indent=None)
    finally:
        training._wrap_for_ddp = wrap
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_ddp_traffic(preset: str, mode: str) -> dict:
    """Train one step per stage with 2 gloo processes; per stage, the bytes all-reduced in that step.

    Returns {"preset", "mode", "world_size": 2, "image_size": [H, W],
    "per_stage": [{"stage", "bytes", "buckets", "trained_bytes"}]}.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "stages.json")
        mp.spawn(_worker, args=(_free_port(), preset, mode, out), nprocs=2, join=True)
        stages = json.loads(Path(out).read_text())
    return {"preset": preset, "mode": mode, "world_size": 2, "image_size": list(IMAGE_SIZE), "per_stage": stages}


def register(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("ddp-traffic", formatter_class=formatter_class,
                              help="bytes all-reduced per step by DDP, stage by stage (2 gloo processes)",
                              description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="book", help="the Config preset")
    p.add_argument("--mode", choices=["alternating", "joint"], default="alternating", help="training scheme")
    p.add_argument("--out", type=Path, default=Path("runs/ddp_traffic.json"), help="JSON output file")
    p.set_defaults(func=ddp_traffic_command)


def ddp_traffic_command(args: argparse.Namespace) -> int:
    from fasterrcnn_edu.lab.records import command_line
    report = measure_ddp_traffic(args.preset, args.mode)
    report["command"] = command_line()
    write_json(report, args.out)
    for stage in report["per_stage"]:
        print(f"{stage['stage']:>18}: {stage['bytes']:>13,} bytes per step (trained parameters {stage['trained_bytes']:,})")
    print(f"wrote {args.out}", file=sys.stdout)
    return 0
