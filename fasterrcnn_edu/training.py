"""Training: the paper's 4-step alternating scheme (§3.2), approximate joint training, and unshared.

4-step alternating training, as the paper sequences it:
  1. train an RPN, initialised from the starting backbone;
  2. train a separate Fast R-CNN detector — its own copy of the starting backbone — on the
     proposals of the step-1 RPN;
  3. initialise the RPN from the detector's backbone, freeze the shared conv layers, fine-tune
     only the RPN's own layers;
  4. keep the shared layers frozen and fine-tune the detector's own layers on step-3 proposals.

The result is one network whose RPN and detector share the conv layers.
`joint` sums the four losses in one network (proposal coordinates are constants: "approximate"),
`unshared` stops after step 2 and keeps two backbones.

Everything needed to continue a run exactly — weights, optimiser, stage and step, sampling RNG
— is checkpointed; the data order and flips are pure functions of (seed, stage, step).
"""
from __future__ import annotations

import copy
import dataclasses
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from fasterrcnn_edu.checkpoint import load_checkpoint, save_checkpoint, save_model
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN
from fasterrcnn_edu.transforms import hflip

MODES = ("alternating", "joint", "unshared")
# Mixed precision: the `amp` names accepted by `train` (and the CLI's --amp) and their autocast dtypes.
AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the stage, step and loss term."""


@dataclass
class Stage:
    """One stage of a training mode: which network, which loss, which parameters move."""

    name: str
    network: str                      # key into the networks dict
    loss: Callable[[dict, dict, list, list], dict]   # (callables, raw networks, images, targets) -> losses
    trainable: Callable[[dict], list]
    schedule: StageSchedule
    prepare: Callable[[dict], None] = lambda nets: None   # e.g. copy weights in before the stage


# ---------------------------------------------------------------------------------------------
# The three modes as lists of stages
# ---------------------------------------------------------------------------------------------
def _params(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def _freeze(module: nn.Module) -> None:
    module.requires_grad_(False)


def _start_step3(nets: dict) -> None:
    """Step 3: the RPN continues from step 1's RPN layers, on top of the detector's (now shared) conv layers."""
    nets["shared"].rpn.load_state_dict(nets["rpn"].rpn.state_dict())
    _freeze(nets["shared"].backbone)


def build_stages(mode: str, cfg: Config) -> list[Stage]:
    if mode == "joint":
        return [Stage("joint", "shared", lambda c, n, im, t: c["shared"](im, t),
                      lambda n: _params(n["shared"]), cfg.joint)]
    step1 = Stage("1-rpn", "rpn", lambda c, n, im, t: c["rpn"](im, t, part="rpn"),
                  lambda n: _params(n["rpn"].backbone, n["rpn"].rpn), cfg.stage_rpn1)
    step2 = Stage("2-detector", "shared", lambda c, n, im, t: c["shared"](im, t, part="detector", proposer=n["rpn"]),
                  lambda n: _params(n["shared"].backbone, n["shared"].roi_heads), cfg.stage_det1)
    if mode == "unshared":
        return [step1, step2]
    if mode != "alternating":
        raise ValueError(f"unknown training mode {mode!r}; choose one of {MODES}")
    step3 = Stage("3-rpn-frozen", "shared", lambda c, n, im, t: c["shared"](im, t, part="rpn"),
                  lambda n: _params(n["shared"].rpn), cfg.stage_rpn2, prepare=_start_step3)
    step4 = Stage("4-detector-frozen", "shared", lambda c, n, im, t: c["shared"](im, t, part="detector"),
                  lambda n: _params(n["shared"].roi_heads), cfg.stage_det2,
                  prepare=lambda n: _freeze(n["shared"].backbone))
    return [step1, step2, step3, step4]


def build_networks(mode: str, cfg: Config) -> dict[str, FasterRCNN]:
    """"shared" is the final network; alternating/unshared also train a separate step-1 "rpn" network
    that starts from the same initial backbone weights."""
    torch.manual_seed(cfg.seed)
    shared = FasterRCNN(cfg)
    if mode == "joint":
        return {"shared": shared}
    rpn_net = FasterRCNN(cfg)
    rpn_net.backbone.load_state_dict(shared.backbone.state_dict())
    return {"rpn": rpn_net, "shared": shared}


def final_model(mode: str, nets: dict) -> nn.Module:
    """The trained detector: one shared network, or for `unshared` the two networks together."""
    if mode == "unshared":
        return UnsharedFasterRCNN(nets["rpn"], nets["shared"])
    return nets["shared"]


# ---------------------------------------------------------------------------------------------
# Data order, learning rate
# ---------------------------------------------------------------------------------------------
def batch_indices(step: int, batch_size: int, num_images: int, seed: int) -> list[int]:
    """The dataset indices of mini-batch `step`: epoch-wise random permutations, a pure function of its inputs."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_images)
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[offset]))
    return out


def load_batch(dataset, step: int, cfg: Config, stage_index: int, device, rank: int = 0, world_size: int = 1
               ) -> tuple[list[Tensor], list[dict]]:
    """Images and targets of one step, flipped with probability 1/2 if `cfg.flip` (the paper's augmentation).

    With several processes (DDP), the global batch of `images_per_batch * world_size` images is
    split so that rank r takes its own slice: a distributed sampler without sampler state.
    """
    seed = cfg.seed + 7919 * stage_index
    per_rank = cfg.images_per_batch
    indices = batch_indices(step, per_rank * world_size, len(dataset), seed)
    coins = torch.rand(len(indices), generator=torch.Generator().manual_seed(seed * 31 + step))
    indices, coins = indices[rank * per_rank:(rank + 1) * per_rank], coins[rank * per_rank:(rank + 1) * per_rank]
    images, targets = [], []
    for index, coin in zip(indices, coins.tolist()):
        image, target = dataset[index]
        boxes = target["boxes"]
        if cfg.flip and coin < 0.5:
            image, boxes = hflip(image, boxes)
        images.append(image.to(device, non_blocking=True))
        targets.append({"boxes": boxes.to(device), "labels": target["labels"].to(device)})
    return images, targets


def learning_rate(step: int, schedule: StageSchedule, warmup: int) -> float:
    """Step schedule (×0.1 at `lr_step`) with an optional linear warm-up over the first `warmup` steps."""
    lr = schedule.lr * (0.1 if step >= schedule.lr_step else 1.0)
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: nn.Module
    log: list[dict]
    seconds: float
    out_dir: Path | None


def train(dataset, cfg: Config, mode: str = "alternating", out_dir: str | Path | None = None,
          device: str | torch.device = "cpu", resume: str | Path | None = None, log_every: int = 20,
          checkpoint_every: int = 500, progress: bool = True, stop_after: int | None = None,
          classes: list[str] | None = None, amp: str | None = None) -> TrainResult:
    """Train a detector on `dataset` (items: image (3,H,W) in [0,1], target dict with boxes/labels).

    out_dir: where `checkpoint.pt`, `model.pt`, `log.csv`/`log.jsonl` and `losses.png` go (None: nothing saved).
    stop_after: stop (after checkpointing) once this many steps of the whole run are done — for tests of resume.
    amp: None, "bf16" or "fp16": autocast the networks (boxes and losses stay fp32; fp16 uses a GradScaler).
    Under `torchrun` (an initialised torch.distributed process group) each stage's network is wrapped
    in DistributedDataParallel, every rank trains on its own slice of each global batch, and only
    rank 0 logs and writes files.
    """
    device = torch.device(device)
    rank, world_size = _distributed_rank_and_size()
    out = Path(out_dir) if out_dir is not None and rank == 0 else None
    classes = list(classes if classes is not None else getattr(dataset, "classes", []))
    stages = build_stages(mode, cfg)
    nets = build_networks(mode, cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    for net in nets.values():
        net.to(device).train()
        net.set_generator(generator)
    amp_dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    start_stage, start_step, log, elapsed, optimizer_state = 0, 0, [], 0.0, None
    if resume is not None:
        state = load_checkpoint(resume)
        if state["mode"] != mode:
            raise ValueError(f"{resume} was written by mode {state['mode']!r}, not {mode!r}")
        start_stage, start_step = state["stage_index"], state["stage_step"]
        # Redo the freezing/copying the interrupted run had done, then restore its weights.
        for stage in stages[: start_stage + (1 if start_step > 0 else 0)]:
            stage.prepare(nets)
        for name, weights in state["networks"].items():
            nets[name].load_state_dict(weights)
        optimizer_state = state["optimizer"]
        generator.set_state(state["generator"])
        log, elapsed = list(state["log"]), float(state["seconds"])

    steps_done = sum(s.schedule.iterations for s in stages[:start_stage]) + start_step
    t0 = time.perf_counter() - elapsed
    for stage_index in range(start_stage, len(stages)):
        stage = stages[stage_index]
        resuming_mid_stage = resume is not None and stage_index == start_stage and start_step > 0
        if not resuming_mid_stage:
            stage.prepare(nets)
        first_step = start_step if stage_index == start_stage else 0
        optimizer = torch.optim.SGD(stage.trainable(nets), lr=stage.schedule.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        if resuming_mid_stage:
            optimizer.load_state_dict(optimizer_state)
        # DDP records which parameters train at construction, so wrap after this stage's freezing.
        call = _wrap_for_ddp(nets, stage.network, device) if world_size > 1 else nets
        bar = _progress(stage, first_step, progress and rank == 0)
        pending: list[tuple[int, dict[str, Tensor]]] = []
        for step in range(first_step, stage.schedule.iterations):
            lr = learning_rate(step, stage.schedule, cfg.warmup_iterations)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = load_batch(dataset, step, cfg, stage_index, device, rank, world_size)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = stage.loss(call, nets, images, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(optimizer)
            scaler.update()
            pending.append((step, {k: v.detach().float() for k, v in losses.items()}))
            steps_done += 1
            last = step + 1 == stage.schedule.iterations
            stopping = stop_after is not None and steps_done >= stop_after
            if len(pending) >= log_every or last or stopping:
                # The only host synchronisation: once per `log_every` steps.
                record = flush_log(pending, stage, lr, time.perf_counter() - t0)
                log.append(record)
                pending = []
                if bar is not None:
                    bar.update(record["step"] + 1 - bar.n)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")})
            if out is not None and (last or stopping or (step + 1) % checkpoint_every == 0):
                # Where a resumed run continues: the next step, or the start of the next stage.
                position = (stage_index + 1, 0) if last else (stage_index, step + 1)
                save_checkpoint({"mode": mode, "stage_index": position[0], "stage_step": position[1],
                                 "networks": {k: v.state_dict() for k, v in nets.items()},
                                 "optimizer": None if last else optimizer.state_dict(),
                                 "generator": generator.get_state(), "log": log,
                                 "seconds": time.perf_counter() - t0, "config": cfg.to_dict(),
                                 "classes": classes}, out / "checkpoint.pt")
            if stopping:
                if bar is not None:
                    bar.close()
                return TrainResult(final_model(mode, nets), log, time.perf_counter() - t0, out)
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    model = final_model(mode, nets).eval()
    if out is not None:
        save_model(model, out / "model.pt", cfg, classes, {"mode": mode, "train_seconds": seconds})
        write_log(log, out)
    return TrainResult(model, log, seconds, out)


def _distributed_rank_and_size() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wrap_for_ddp(nets: dict, name: str, device: torch.device) -> dict:
    """The stage's network wrapped in DistributedDataParallel (others as they are).

    find_unused_parameters: a stage uses only one half of the network (RPN or detector).
    """
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return {**nets, name: DistributedDataParallel(nets[name], device_ids=ids, find_unused_parameters=True)}


def flush_log(pending: list[tuple[int, dict[str, Tensor]]], stage: Stage, lr: float, seconds: float) -> dict:
    """Average the pending steps' losses; stop with a clear message at the first non-finite one."""
    stacked = {k: torch.stack([losses[k] for _, losses in pending]) for k in pending[0][1]}
    for name, values in stacked.items():
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            step = pending[int(bad[0])][0]
            raise NonFiniteLossError(f"stage {stage.name}, step {step}: loss term {name} is "
                                     f"{float(values[int(bad[0])])}; stopping (nothing was saved after the "
                                     f"last finite checkpoint). Lower the learning rate or check the data.")
    record = {"stage": stage.name, "step": pending[-1][0], "lr": lr, "seconds": round(seconds, 2)}
    record.update({k: float(v.mean()) for k, v in stacked.items()})
    return record


def _progress(stage: Stage, first_step: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=stage.schedule.iterations, initial=first_step, desc=f"stage {stage.name}", leave=True)


# ---------------------------------------------------------------------------------------------
# Files: the trained model and the loss log
# ---------------------------------------------------------------------------------------------
def write_log(log: list[dict], out_dir: Path) -> None:
    """log.jsonl, log.csv and a plot of the loss curves (losses.png)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "log.jsonl", "w") as f:
        for record in log:
            f.write(json.dumps(record) + "\n")
    keys = sorted({k for r in log for k in r}, key=lambda k: (not k in ("stage", "step"), k))
    with open(out_dir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(log)
    # Stages count their steps from 0: plot against the step of the whole run.
    offset, previous, last_step, plotted = 0, None, -1, []
    for record in log:
        if previous is not None and record["stage"] != previous:
            offset += last_step + 1
        previous, last_step = record["stage"], record["step"]
        plotted.append(dict(record, step=record["step"] + offset))
    import matplotlib.pyplot as plt          # no matplotlib.use(): that would change a notebook's backend
    from fasterrcnn_edu.viz import plot_loss_curves
    ax = plot_loss_curves(plotted)
    ax.figure.savefig(out_dir / "losses.png", dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
