"""Training: the paper's 4-step alternating scheme (§3.2), approximate joint training, and unshared.

4-step alternating training (paper §3.2; initialisation as in the released alt-opt code):
  1. `step1_rpn`: train an RPN, initialised from the starting backbone;
  2. `step2_detector`: train a separate Fast R-CNN detector, its own copy of the starting
     backbone, on the proposals of the step-1 RPN;
  3. `step3_rpn_frozen`: "use the detector network to initialize RPN training", fix the shared
     conv layers and fine-tune only the RPN's own layers. The detector has no trained RPN layers:
     the released code trains a freshly initialised RPN head here;
  4. `step4_detector_frozen`: keep the shared conv layers fixed and fine-tune the detector's own
     layers on the step-3 proposals; the released code re-initialises `cls_score`/`bbox_pred`
     (fc6/fc7 continue from step 2).

The result is one network whose RPN and detector share the conv layers. Where the paper is
silent we follow py-faster-rcnn, and every deviation is a named `Config` option (ours):
`alt_reinit_heads=False` warm-starts steps 3-4 from the step-1 RPN head and the step-2
predictor; `alt_precomputed_proposals=False` proposes on the fly in train mode instead of using
proposals computed once in test mode and stored (mirrored for flipped images), as the released
code does. `Config.difficult` says what happens to VOC difficult / COCO crowd objects.

`joint` sums the four losses in one network (proposal coordinates are constants: "approximate"),
`unshared` stops after step 2 and keeps two backbones.

Every trainer of the package and of the book's lab goes through one loop, `run_stage`: it owns
the learning-rate schedule and warm-up, the bias learning-rate multiplier, mixed precision and
gradient scaling, logging, checkpoints and the non-finite-loss stop. Everything needed to
continue a run exactly (weights, optimiser, stage and step, and every process's random states:
sampling, torch's global generator, CUDA's) is checkpointed, and `resumable_state` checks all of it
before a resumed run starts; the data order and flips are pure functions of (seed, stage, step).
On the CPU a resumed run reaches the same weights as an uninterrupted one
(tests/test_training.py, tests/test_hardening_ddp.py). On CUDA the resumed *state* is exact, but
the arithmetic after it need not be bit-exact: several backward kernels (RoI pooling, the
advanced-indexing and `gather` backwards) add with atomics in no fixed order, and cuDNN may pick
non-deterministic algorithms, unless `torch.use_deterministic_algorithms(True)` is set, which the
package does not do. So on CUDA a resumed run and an uninterrupted one can drift apart by
rounding, as two uninterrupted CUDA runs can.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from fasterrcnn_edu.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_model
from fasterrcnn_edu.fileio import state_dict_differences
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN
from fasterrcnn_edu.transforms import hflip, hflip_boxes

MODES = ("alternating", "joint", "unshared")
# Mixed precision: the `amp` names accepted by `train` (and the CLI's --amp) and their autocast dtypes.
AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the stage, step and loss term."""


# ---------------------------------------------------------------------------------------------
# What one image contributes to training
# ---------------------------------------------------------------------------------------------
def training_target(target: dict, difficult: str = "drop") -> dict:
    """The boxes (G, 4) and labels (G,) one image trains on, its difficult/crowd objects handled per `difficult`.

    "drop" (released code, use_diff=False): difficult objects are removed; "ignore" (ours): they
    stay as boxes flagged in `ignore` (G,) bool, which anchor labelling and RoI sampling treat as
    ignore regions (never foreground, and no background taken from them); "train": ordinary objects.
    """
    boxes, labels = target["boxes"], target["labels"]
    hard = target.get("difficult")
    if hard is None or difficult == "train":
        return {"boxes": boxes, "labels": labels}
    hard = hard.bool().reshape(-1)
    if difficult == "drop":
        return {"boxes": boxes[~hard], "labels": labels[~hard]}
    if difficult == "ignore":
        return {"boxes": boxes, "labels": labels, "ignore": hard}
    raise ValueError(f"unknown difficult handling {difficult!r}; choose 'drop', 'ignore' or 'train'")


# ---------------------------------------------------------------------------------------------
# Data order, mini-batches, learning rate
# ---------------------------------------------------------------------------------------------
def batch_indices(step: int, batch_size: int, num_images: int, seed: int) -> list[int]:
    """The dataset indices of mini-batch `step`: epoch-wise random permutations, a pure function of its inputs."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_images)
        # Data order and flips are host decisions: CPU generators, CPU tensors, on every device.
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_images, generator=generator, device="cpu")
        out.append(int(order[offset]))
    return out


def load_batch(dataset, step: int, cfg: Config, stage_index: int, device, rank: int = 0, world_size: int = 1,
               images_per_batch: int | None = None, proposals: Sequence[Tensor] | None = None
               ) -> tuple[list[Tensor], list[dict]]:
    """Images and targets of one step, flipped with probability 1/2 if `cfg.flip` (the paper's augmentation).

    images_per_batch: images per process (default `cfg.images_per_batch`). With several processes
    (DDP), the global batch of `images_per_batch * world_size` images is split so that rank r takes
    its own slice: a distributed sampler without sampler state. proposals: stored proposals per
    dataset index (P_i, 4), in original pixels; the batch's are added to the targets as
    "proposals", mirrored with their image. Difficult objects are handled per `cfg.difficult`.
    """
    seed = cfg.seed + 7919 * stage_index
    per_rank = images_per_batch or cfg.images_per_batch
    indices = batch_indices(step, per_rank * world_size, len(dataset), seed)
    coins = torch.rand(len(indices), generator=torch.Generator().manual_seed(seed * 31 + step), device="cpu")
    indices, coins = indices[rank * per_rank:(rank + 1) * per_rank], coins[rank * per_rank:(rank + 1) * per_rank]
    images, targets = [], []
    for index, coin in zip(indices, coins.tolist()):
        image, target = dataset[index]
        target = training_target(target, cfg.difficult)
        flipped = cfg.flip and coin < 0.5
        if flipped:
            image, boxes = hflip(image, target["boxes"])
            target = dict(target, boxes=boxes)
        if proposals is not None:
            stored = proposals[index]
            target["proposals"] = hflip_boxes(stored, image.shape[-1]) if flipped else stored
        images.append(image.to(device, non_blocking=True))
        targets.append({k: v.to(device) for k, v in target.items()})
    return images, targets


def learning_rate(step: int, schedule: StageSchedule, warmup: int) -> float:
    """Step schedule (×0.1 at `lr_step`) with an optional linear warm-up over the first `warmup` steps."""
    lr = schedule.lr * (0.1 if step >= schedule.lr_step else 1.0)
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


def parameter_groups(named_parameters: Sequence[tuple[str, nn.Parameter]], cfg: Config) -> list[dict]:
    """SGD parameter groups as the released prototxts set them: weights at lr × 1 with weight decay,
    biases at lr × `cfg.bias_lr_mult` (2) and without weight decay unless `cfg.bias_weight_decay`."""
    weights = [p for name, p in named_parameters if not name.endswith("bias")]
    biases = [p for name, p in named_parameters if name.endswith("bias")]
    bias_decay = cfg.weight_decay if cfg.bias_weight_decay else 0.0
    return [group for group in ({"params": weights, "lr_mult": 1.0, "weight_decay": cfg.weight_decay},
                                {"params": biases, "lr_mult": cfg.bias_lr_mult, "weight_decay": bias_decay})
            if group["params"]]


# ---------------------------------------------------------------------------------------------
# Stages: what trains, on which loss, with which data
# ---------------------------------------------------------------------------------------------
class StageLoss(nn.Module):
    """One training stage's loss as a module: `forward(images, targets) -> dict of losses`.

    DistributedDataParallel wraps this module, so the network's own `forward` stays torchvision's.
    part: "rpn" (RPN loss), "detector" (Fast R-CNN loss on fixed proposals) or "joint" (all four).
    proposer: for "detector" without stored proposals, the network whose RPN proposes (kept out of
    this module's parameters: it does not train here).
    """

    def __init__(self, network: nn.Module, part: str = "joint", proposer: FasterRCNN | None = None):
        super().__init__()
        self.network = network
        self.part = part
        self._proposer = (proposer,)           # a tuple: not registered as a submodule

    def forward(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        if self.part == "rpn":
            return self.network.rpn_losses(images, targets)
        if self.part == "detector":
            return self.network.detector_losses(images, targets, proposer=self._proposer[0])
        return self.network(images, targets)


@dataclass
class Stage:
    """One stage of training: its loss module, the parameters that move, its schedule and data."""

    name: str
    loss: nn.Module
    params: list[tuple[str, nn.Parameter]]
    schedule: StageSchedule
    images_per_batch: int
    proposal_source: FasterRCNN | None = None   # proposals computed once by this network, stored
    iter_size: int = 1   # mini-batches whose gradients are accumulated into one update (Caffe's iter_size)


def trainable(*modules: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter of `modules` that requires grad."""
    return [(name, p) for m in modules for name, p in m.named_parameters() if p.requires_grad]


def _reinit_generator(cfg: Config, step: int) -> torch.Generator:
    """The CPU generator of the fresh heads of step 3 or 4: the heads are drawn on the CPU and copied
    to the networks' device (`initialisation.normal_`), so a seed gives the same heads on every device."""
    return torch.Generator().manual_seed(cfg.seed * 1000 + step)


def step1_rpn(nets: dict, cfg: Config) -> Stage:
    """Step 1: train the RPN network (backbone + RPN head) with the RPN loss."""
    rpn_net = nets["rpn"]
    return Stage("1-rpn", StageLoss(rpn_net, "rpn"), trainable(rpn_net.backbone, rpn_net.rpn),
                 cfg.stage_rpn1, cfg.images_per_batch)


def step2_detector(nets: dict, cfg: Config) -> Stage:
    """Step 2: train the detector network (its own backbone + Fast R-CNN head) on step-1 proposals."""
    detector, rpn_net = nets["shared"], nets["rpn"]
    stored = cfg.alt_precomputed_proposals
    return Stage("2-detector", StageLoss(detector, "detector", proposer=None if stored else rpn_net),
                 trainable(detector.backbone, detector.roi_heads), cfg.stage_det1, cfg.det_images_per_batch,
                 proposal_source=rpn_net if stored else None)


def step3_rpn_frozen(nets: dict, cfg: Config) -> Stage:
    """Step 3: freeze the detector's conv layers (now shared) and train an RPN head on them.

    released code: a freshly initialised head; `alt_reinit_heads=False` (ours): step 1's head.
    """
    shared = nets["shared"]
    shared.backbone.requires_grad_(False)
    if cfg.alt_reinit_heads:
        shared.rpn.head.reset_parameters(_reinit_generator(cfg, 3))
    elif "rpn" in nets:
        shared.rpn.load_state_dict(nets["rpn"].rpn.state_dict())
    return Stage("3-rpn-frozen", StageLoss(shared, "rpn"), trainable(shared.rpn), cfg.stage_rpn2,
                 cfg.images_per_batch)


def step4_detector_frozen(nets: dict, cfg: Config) -> Stage:
    """Step 4: conv layers still frozen; fine-tune the detector's own layers on the step-3 proposals.

    released code: cls_score/bbox_pred re-initialised, fc layers continue from step 2;
    `alt_reinit_heads=False` (ours): the whole step-2 head continues.
    """
    shared = nets["shared"]
    shared.backbone.requires_grad_(False)
    if cfg.alt_reinit_heads:
        shared.roi_heads.predictor.reset_parameters(_reinit_generator(cfg, 4))
    stored = cfg.alt_precomputed_proposals
    return Stage("4-detector-frozen", StageLoss(shared, "detector", proposer=None if stored else shared),
                 trainable(shared.roi_heads), cfg.stage_det2, cfg.det_images_per_batch,
                 proposal_source=shared if stored else None)


def joint(nets: dict, cfg: Config) -> Stage:
    """Approximate joint training (§3.2 (ii)): one network, the four losses summed."""
    shared = nets["shared"]
    # The released end-to-end code samples TRAIN.BATCH_SIZE 128 RoIs per image (alt-opt: 64); the
    # shared network is trained only here, so its head takes the joint value.
    shared.roi_heads.cfg = dataclasses.replace(shared.roi_heads.cfg, roi_batch_size=cfg.joint_roi_batch_size)
    return Stage("joint", StageLoss(shared, "joint"), trainable(shared), cfg.joint, cfg.images_per_batch,
                 iter_size=cfg.joint_iter_size)


STEPS: dict[str, tuple[Callable[[dict, Config], Stage], ...]] = {
    "alternating": (step1_rpn, step2_detector, step3_rpn_frozen, step4_detector_frozen),
    "unshared": (step1_rpn, step2_detector),
    "joint": (joint,),
}


def build_networks(mode: str, cfg: Config) -> dict[str, FasterRCNN]:
    """"shared" is the final network; alternating/unshared also train a separate step-1 "rpn" network
    that starts from the same initial backbone weights."""
    if mode not in STEPS:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {MODES}")
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


@torch.no_grad()
def store_proposals(network: FasterRCNN, dataset, cfg: Config, device, batch_size: int = 8) -> list[Tensor]:
    """Proposals of `network`'s RPN in test mode for every image of `dataset`, in original pixels.

    As the released code's `rpn_generate`: all anchors before NMS (`alt_proposal_pre_nms_top_n`,
    0 = all), the top `alt_proposal_post_nms_top_n` after NMS 0.7. Returns (P_i, 4) per index, on CPU.
    """
    pre = cfg.alt_proposal_pre_nms_top_n or 10 ** 9
    was_training = network.training
    network.eval()
    out: list[Tensor] = []
    for start in range(0, len(dataset), batch_size):
        images = [dataset[i][0].to(device) for i in range(start, min(start + batch_size, len(dataset)))]
        out += [b.cpu() for b in network.proposals_for_images(images, pre, cfg.alt_proposal_post_nms_top_n)]
    network.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
@dataclass
class StageState:
    """Where a stage starts and what it continues from (resume), and where it reports to."""

    stage_index: int = 0
    first_step: int = 0
    optimizer: dict | None = None
    log: list[dict] | None = None
    seconds_before: float = 0.0


def run_stage(stage: Stage, dataset, cfg: Config, device: torch.device | str = "cpu", *,
              state: StageState | None = None, amp: str | None = None, log_every: int = 20,
              progress: bool = False, rank: int = 0, world_size: int = 1,
              checkpoint: Callable[[int, torch.optim.Optimizer | None, list[dict], float], None] | None = None,
              checkpoint_every: int = 500) -> list[dict]:
    """Train one stage: SGD over `stage.schedule.iterations` mini-batches of `dataset`.

    The one training loop of the package: lr schedule with warm-up (`learning_rate`), bias lr
    multiplier (`parameter_groups`), autocast in `amp` ("bf16"/"fp16", fp16 with a GradScaler),
    the stage's stored proposals, DDP (if a process group is initialised), a log record every
    `log_every` steps, `checkpoint(next_step, optimizer, log, seconds)` every `checkpoint_every`
    steps and at the end, `stage.iter_size` mini-batches accumulated per SGD update (the mean of
    their losses; the log records the last one), and a `NonFiniteLossError` at the first NaN/inf loss, raised before any
    checkpoint of that step is written. Backward runs on the sum of the terms named "loss*";
    other terms are logged only. Returns the log, including earlier records from `state.log`.
    """
    device = torch.device(device)
    state = state or StageState()
    log = list(state.log or [])
    amp_dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    t0 = time.perf_counter() - state.seconds_before
    proposals = (store_proposals(stage.proposal_source, dataset, cfg, device)
                 if stage.proposal_source is not None else None)
    optimizer = torch.optim.SGD(parameter_groups(stage.params, cfg), lr=stage.schedule.lr, momentum=cfg.momentum)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    # Under DDP only the stage's parameters require grad: DDP then synchronises just those.
    with _only_trained_require_grad(stage, enabled=world_size > 1):
        loss_module = _wrap_for_ddp(stage.loss, device) if world_size > 1 else stage.loss
        bar = _progress(stage, state.first_step, progress and rank == 0)
        pending: list[tuple[int, dict[str, Tensor]]] = []
        for step in range(state.first_step, stage.schedule.iterations):
            lr = learning_rate(step, stage.schedule, cfg.warmup_iterations)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            optimizer.zero_grad(set_to_none=True)
            for micro in range(stage.iter_size):
                # Mini-batch `step * iter_size + micro` of the data order: with iter_size 1 the order is unchanged.
                images, targets = load_batch(dataset, step * stage.iter_size + micro, cfg, state.stage_index,
                                             device, rank, world_size, stage.images_per_batch, proposals)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = loss_module(images, targets)
                # Caffe's iter_size: the update is that of the mean of the mini-batches' losses.
                total = sum(v for k, v in losses.items() if k.startswith("loss"))
                scaler.scale(total / stage.iter_size if stage.iter_size > 1 else total).backward()
            scaler.step(optimizer)
            scaler.update()
            pending.append((step, {k: v.detach().float() for k, v in losses.items()}))
            last = step + 1 == stage.schedule.iterations
            save_now = checkpoint is not None and (last or (step + 1) % checkpoint_every == 0)
            if len(pending) >= log_every or last or save_now:
                # The only host synchronisation: it also checks every pending loss before a checkpoint.
                record = flush_log(pending, stage.name, lr, time.perf_counter() - t0)
                log.append(record)
                pending = []
                if bar is not None:
                    bar.update(record["step"] + 1 - bar.n)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")})
            if save_now:
                checkpoint(step + 1, None if last else optimizer, log, time.perf_counter() - t0)
        if bar is not None:
            bar.close()
        return log


@contextlib.contextmanager
def _only_trained_require_grad(stage: Stage, enabled: bool = True):
    """While the stage runs, only its own parameters require grad (restored after): DDP buckets and
    all-reduces every parameter that requires grad, so the RPN steps would otherwise send zero
    gradients for the detector head (VGG-16's fc6/fc7: ~120M numbers) at every step."""
    trained = {id(p) for _, p in stage.params}
    switched = [p for p in stage.loss.parameters() if enabled and p.requires_grad and id(p) not in trained]
    for p in switched:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in switched:
            p.requires_grad_(True)


def _wrap_for_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel. Only the stage's parameters require grad
    (`_only_trained_require_grad`) and the stage's loss uses them all: no unused parameters to find."""
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def flush_log(pending: list[tuple[int, dict[str, Tensor]]], stage_name: str, lr: float, seconds: float) -> dict:
    """Average the pending steps' losses; stop with a clear message at the first non-finite one."""
    stacked = {k: torch.stack([losses[k] for _, losses in pending]) for k in pending[0][1]}
    for name, values in stacked.items():
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            step = pending[int(bad[0])][0]
            raise NonFiniteLossError(f"stage {stage_name}, step {step}: loss term {name} is "
                                     f"{float(values[int(bad[0])])}; stopping (nothing was saved after the "
                                     f"last finite checkpoint). Lower the learning rate or check the data.")
    record = {"stage": stage_name, "step": pending[-1][0], "lr": lr, "seconds": round(seconds, 2)}
    record.update({k: float(v.mean()) for k, v in stacked.items()})
    return record


def _progress(stage: Stage, first_step: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=stage.schedule.iterations, initial=first_step, desc=f"stage {stage.name}", leave=True)


# ---------------------------------------------------------------------------------------------
# A whole run: the stages of a mode, with checkpoints and resume
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: nn.Module
    log: list[dict]
    seconds: float
    out_dir: Path | None


def train(dataset, cfg: Config, mode: str = "alternating", out_dir: str | Path | None = None,
          device: str | torch.device = "cpu", resume: str | Path | None = None, log_every: int = 20,
          checkpoint_every: int = 500, progress: bool = True,
          classes: list[str] | None = None, amp: str | None = None) -> TrainResult:
    """Train a detector on `dataset` (items: image (3,H,W) in [0,1], target dict with boxes/labels).

    out_dir: where `checkpoint.pt`, `model.pt` and `log.csv`/`log.jsonl` go (None: nothing saved).
    resume: a `checkpoint.pt` of an interrupted run with the same mode and configuration.
    amp: None, "bf16" or "fp16": autocast the networks (boxes and losses stay fp32; fp16 uses a GradScaler).
    Under `torchrun` (an initialised torch.distributed process group) each stage's loss module is
    wrapped in DistributedDataParallel, every rank trains on its own slice of each global batch,
    and only rank 0 logs and writes files.
    """
    device = torch.device(device)
    rank, world_size = _distributed_rank_and_size()
    out = Path(out_dir) if out_dir is not None and rank == 0 else None
    classes = list(classes if classes is not None else getattr(dataset, "classes", []))
    nets = build_networks(mode, cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    for net in nets.values():
        net.to(device).train()
        net.set_generator(generator)

    start_stage, start_step, log, elapsed, optimizer_state, replayed = 0, 0, [], 0.0, None, []
    if resume is not None:
        # Every field is checked here, before any work: a bad one is a CheckpointError, not a
        # traceback hours later (a `log` that is no list used to fail only when the run was over).
        saved = resumable_state(resume, mode, cfg, nets, classes, world_size, device)
        start_stage, start_step = saved["stage_index"], saved["stage_step"]
        # Redo the freezing/re-initialising of the stages the interrupted run had started, then
        # restore its weights (which overwrite any re-initialised head).
        replayed = [make(nets, cfg) for make in STEPS[mode][: start_stage + (1 if start_step > 0 else 0)]]
        for name, weights in saved["networks"].items():
            nets[name].load_state_dict(weights)
        if start_step > 0:
            check_mid_stage(saved, replayed[start_stage], cfg, resume)
        optimizer_state = saved["optimizer"]
        set_rng_state(saved_rng_states(saved)[rank], generator, device)
        log, elapsed = list(saved["log"]), float(saved["seconds"])

    for stage_index in range(start_stage, len(STEPS[mode])):
        mid_stage = resume is not None and stage_index == start_stage and start_step > 0
        # The stage a resumed run continues was built by the replay, before its weights were restored;
        # building it again would re-initialise its head (steps 3 and 4) over the restored weights.
        stage = replayed[stage_index] if mid_stage else STEPS[mode][stage_index](nets, cfg)
        first = start_step if stage_index == start_stage else 0
        write = (None if out is None and world_size == 1 else
                 _checkpoint_writer(None if out is None else out / "checkpoint.pt", mode, stage_index, stage, nets,
                                    generator, device, world_size, cfg, classes))
        state = StageState(stage_index, first, optimizer_state if mid_stage else None, log, elapsed)
        log = run_stage(stage, dataset, cfg, device, state=state, amp=amp, log_every=log_every, progress=progress,
                        rank=rank, world_size=world_size, checkpoint=write, checkpoint_every=checkpoint_every)
        elapsed = log[-1]["seconds"] if log else elapsed
    model = final_model(mode, nets).eval()
    if out is not None:
        save_model(model, out / "model.pt", cfg, classes, {"mode": mode, "train_seconds": elapsed})
        write_log(log, out)
    return TrainResult(model, log, elapsed, out)


def _checkpoint_writer(path: Path | None, mode: str, stage_index: int, stage: Stage, nets: dict,
                       generator: torch.Generator, device: torch.device, world_size: int, cfg: Config,
                       classes: list[str]) -> Callable:
    """`run_stage`'s checkpoint(next_step, optimizer, log, seconds) for stage `stage_index` of a run.

    With several processes every rank gets one (path None but on rank 0): each call gathers every
    rank's random states, a collective, so that each rank continues its own streams on --resume."""
    def write(next_step: int, optimizer: torch.optim.Optimizer | None, stage_log: list[dict], seconds: float) -> None:
        states = rng_states(generator, device, world_size)
        if path is None:
            return
        # Where a resumed run continues: the next step, or the start of the next stage.
        done = next_step >= stage.schedule.iterations
        save_checkpoint({"mode": mode, "stage_index": stage_index + 1 if done else stage_index,
                         "stage_step": 0 if done else next_step,
                         "networks": {k: v.state_dict() for k, v in nets.items()},
                         "optimizer": None if optimizer is None else optimizer.state_dict(),
                         "rng": states, "world_size": world_size, "log": stage_log, "seconds": seconds,
                         "config": cfg.to_dict(), "classes": classes}, path)
    return write


def config_differences(saved: dict, cfg: Config) -> list[str]:
    """Names of the Config fields whose value in the saved dict differs from `cfg` ("field: saved -> now")."""
    current = cfg.to_dict()
    try:
        saved = Config.from_dict(saved).to_dict()
    except (TypeError, ValueError) as exc:
        return [f"unreadable config ({exc})"]
    return [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in current if saved.get(k) != current[k]]


def resumable_state(path: str | Path, mode: str, cfg: Config, nets: dict[str, nn.Module],
                    classes: list[str], world_size: int = 1, device: torch.device | str = "cpu") -> dict:
    """The training checkpoint at `path`, every field checked against this run; CheckpointError
    (naming the file and the field) unless it continues this mode, configuration, networks,
    classes and number of processes. The optimizer, which needs its stage built, is checked by
    `check_mid_stage`."""
    state = load_checkpoint(path, expect="training")

    def refuse(problem: str):
        raise CheckpointError(f"{path}: {problem}")

    if state.get("mode") != mode:
        raise CheckpointError(f"{path} was written by mode {state.get('mode')!r:.60}, not {mode!r}")
    saved_config = state.get("config")
    if not isinstance(saved_config, dict) or not all(isinstance(k, str) for k in saved_config):
        refuse(f"config must be a dict of field name -> value, got {_short(saved_config)}")
    differences = config_differences(saved_config, cfg)
    if differences:
        raise CheckpointError(f"{path} was written with another configuration; differing fields: "
                              + "; ".join(differences) + ". Resume with the original options.")
    if classes and state.get("classes") != list(classes):
        refuse(f"classes {_short(state.get('classes'))} are not the data set's {_short(list(classes))}")
    stages = len(STEPS[mode])
    index, step = state.get("stage_index"), state.get("stage_step")
    if not _is_count(index) or index > stages:
        plural = "s" if stages > 1 else ""
        refuse(f"stage_index must be an integer in 0..{stages} (the {mode} mode has {stages} stage{plural}), "
               f"got {_short(index)}")
    if not _is_count(step) or (index == stages and step != 0):
        refuse(f"stage_step must be an integer >= 0 (0 once every stage is done), got {_short(step)}")
    saved_nets = state.get("networks")
    if not isinstance(saved_nets, dict) or set(saved_nets) != set(nets):
        names = sorted(map(str, saved_nets)) if isinstance(saved_nets, dict) else _short(saved_nets)
        refuse(f"networks must hold the state dicts {sorted(nets)} of a {mode} run, got {names}")
    for name, weights in saved_nets.items():
        problems = (state_dict_differences(nets[name].state_dict(), weights) if isinstance(weights, dict)
                    else [f"a {type(weights).__name__}, not a state dict"])
        if problems:
            refuse(f"networks[{name!r}] does not fit this run's network: " + "; ".join(problems[:4]))
    _check_rng_states(state, world_size, torch.device(device), refuse)
    log = state.get("log")
    if not isinstance(log, list) or not all(
            isinstance(r, dict) and all(isinstance(k, str) and isinstance(v, (int, float, str, type(None)))
                                        for k, v in r.items()) for r in log):
        refuse(f"log must be a list of records (dicts of name -> number or text), got {_short(log)}")
    seconds = state.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
        refuse(f"seconds must be a number >= 0, got {_short(seconds)}")
    return state


def check_mid_stage(state: dict, stage: Stage, cfg: Config, path: str | Path) -> None:
    """CheckpointError unless a run stopped mid-way through `stage` can go on from `state`: its
    stage_step lies inside the stage, and its optimizer is an SGD state dict that fits the stage's
    parameters (the groups, their sizes, each momentum buffer's shape and finite values)."""
    def refuse(problem: str):
        raise CheckpointError(f"{path}: {problem}")

    if state["stage_step"] >= stage.schedule.iterations:
        refuse(f"stage_step {state['stage_step']} is past the end of stage {stage.name} "
               f"({stage.schedule.iterations} iterations)")
    saved = state.get("optimizer")
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        refuse(f"optimizer must be the SGD state of stage {stage.name} (the run stopped mid-stage), got {_short(saved)}")
    scratch = torch.optim.SGD(parameter_groups(stage.params, cfg), lr=stage.schedule.lr, momentum=cfg.momentum)
    try:
        scratch.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        refuse(f"the optimizer state does not fit stage {stage.name}: {str(exc).splitlines()[0][:200]}")
    params = {p for group in scratch.param_groups for p in group["params"]}
    for key, entry in scratch.state.items():
        buffer = entry.get("momentum_buffer") if isinstance(entry, dict) else None
        if key not in params or (buffer is not None and (not isinstance(buffer, Tensor) or buffer.shape != key.shape
                                                         or not torch.isfinite(buffer).all())):
            refuse(f"the optimizer state does not fit stage {stage.name}: a momentum buffer of another shape, "
                   "with NaN/inf, or for no parameter of the stage")


def rng_states(generator: torch.Generator, device: torch.device, world_size: int = 1) -> list[dict]:
    """Every rank's random state, in rank order: the sampling generator's, torch's global one (dropout)
    and, on CUDA, the device's. With several processes this is a collective: every rank must call it."""
    state = {"sampling": generator.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    if world_size == 1:
        return [state]
    import torch.distributed as dist
    states: list = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def saved_rng_states(state: dict) -> list[dict]:
    """The per-rank RNG states of a checkpoint; files from before they were saved per rank hold one
    "generator" (rank 0's sampling state)."""
    if "rng" in state:
        return state["rng"]
    return [{"sampling": state.get("generator")}]


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    """Continue this rank's random streams from `state` (one entry of `rng_states`)."""
    generator.set_state(state["sampling"])
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_rng_states(state: dict, world_size: int, device: torch.device, refuse: Callable[[str], None]) -> None:
    """Refuse RNG states that this run (of `world_size` processes) cannot continue from."""
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        refuse(f"written by a run of {_short(saved_world)} process(es), resumed with {world_size}: the batches "
               f"are split per process, so resume it with torchrun --nproc_per_node {_short(saved_world)}")
    states = saved_rng_states(state)
    if not isinstance(states, list) or len(states) != world_size:
        refuse(f"rng must hold one random state per process ({world_size}), got {_short(states)}")
    for rank, entry in enumerate(states):
        if not isinstance(entry, dict):
            refuse(f"rng[{rank}] must be a dict of random states, got {_short(entry)}")
        # Tried on scratch generators, of the formats restored: nothing global changes here.
        tries = [("sampling", torch.Generator(device))]
        tries += [("torch", torch.Generator())] if entry.get("torch") is not None else []
        if entry.get("cuda") is not None and torch.cuda.is_available():
            tries.append(("cuda", torch.Generator("cuda")))
        for key, scratch in tries:
            try:
                scratch.set_state(entry.get(key))
            except (TypeError, RuntimeError, ValueError):
                refuse(f"rng[{rank}][{key!r}] is not a random-generator state, got {_short(entry.get(key))}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _distributed_rank_and_size() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------
# The loss log
# ---------------------------------------------------------------------------------------------
def write_log(log: list[dict], out_dir: Path) -> None:
    """log.jsonl and log.csv (the loss plot, losses.png, is drawn by the `train` command from the log)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "log.jsonl", "w") as f:
        for record in log:
            f.write(json.dumps(record) + "\n")
    keys = sorted({k for r in log for k in r}, key=lambda k: (k not in ("stage", "step"), k))
    with open(out_dir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(log)
