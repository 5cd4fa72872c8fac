"""Training: the 4-step scheme freezes what the paper freezes, resume is exact, checkpoints are safe."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from fasterrcnn_edu.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fasterrcnn_edu.config import Config, StageSchedule
from fasterrcnn_edu.checkpoint import load_model
from fasterrcnn_edu import training
from fasterrcnn_edu.training import STEPS, NonFiniteLossError, build_networks, run_stage, train


class TinyShapes:
    """Four 96×128 images with two bright boxes each (deterministic)."""

    classes = ["a", "b"]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = 0.1 * torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(i))
        boxes = torch.tensor([[8.0 + i, 10, 50, 60], [60, 20, 120, 80 - i]])
        for (x1, y1, x2, y2) in boxes.long().tolist():
            image[:, y1:y2, x1:x2] = 0.9
        return image, {"boxes": boxes, "labels": torch.tensor([1, 2])}


class Payload:
    """Any pickled object could run code when loaded: weights_only refuses it."""


class Killed(Exception):
    """Stands for the process dying (SIGKILL, power loss) in the middle of a run."""


def train_until_killed(monkeypatch, steps: int, *args, **kwargs) -> None:
    """`train(*args, **kwargs)` killed when it asks for the batch of step `steps + 1` of the whole
    run, with a checkpoint after every step: what an interrupted run leaves behind."""
    calls = 0
    load_batch = training.load_batch

    def loading(*a, **k):
        nonlocal calls
        calls += 1
        if calls > steps:
            raise Killed
        return load_batch(*a, **k)

    monkeypatch.setattr(training, "load_batch", loading)
    with pytest.raises(Killed):
        train(*args, checkpoint_every=1, **kwargs)
    monkeypatch.setattr(training, "load_batch", load_batch)


def tiny_config(iterations: int = 3, **overrides) -> Config:
    stage = StageSchedule(iterations, 0.005, iterations - 1)
    return Config.book(num_classes=3, min_size=96, max_size=128, stage_rpn1=stage, stage_det1=stage,
                       stage_rpn2=stage, stage_det2=stage, joint=stage, warmup_iterations=0, **overrides)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_alternating_steps_move_exactly_what_the_released_code_trains():
    cfg = tiny_config()
    nets = build_networks("alternating", cfg)
    parts = ("backbone", "rpn", "roi_heads")
    changed, rpn_net_after_step1 = {}, None
    for make in STEPS["alternating"]:
        stage = make(nets, cfg)
        before = {part: snapshot(getattr(nets["shared"], part)) for part in parts}
        run_stage(stage, TinyShapes(), cfg, log_every=1)
        after = nets["shared"]
        changed[stage.name] = {part: any(not torch.equal(before[part][k], v)
                                         for k, v in getattr(after, part).state_dict().items()) for part in parts}
        if stage.name == "1-rpn":
            rpn_net_after_step1 = snapshot(nets["rpn"])
    # Step 1 trains the separate RPN network only; step 2 the detector's own backbone copy and head;
    # steps 3 and 4 must not touch the (now shared) conv layers.
    assert changed["1-rpn"] == {"backbone": False, "rpn": False, "roi_heads": False}
    assert changed["2-detector"] == {"backbone": True, "rpn": False, "roi_heads": True}
    assert changed["3-rpn-frozen"] == {"backbone": False, "rpn": True, "roi_heads": False}
    assert changed["4-detector-frozen"] == {"backbone": False, "rpn": False, "roi_heads": True}
    # The step-1 network is never trained again after step 1.
    assert all(torch.equal(rpn_net_after_step1[k], v) for k, v in nets["rpn"].state_dict().items())


def test_step1_rpn_network_is_separate_and_starts_from_same_backbone():
    nets = build_networks("alternating", tiny_config())
    a, b = nets["rpn"].backbone.state_dict(), nets["shared"].backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert nets["rpn"].backbone.body[0].weight.data_ptr() != nets["shared"].backbone.body[0].weight.data_ptr()


@pytest.mark.parametrize("mode", ["alternating", "joint", "unshared"])
def test_modes_train_save_and_load(tmp_path, mode):
    result = train(TinyShapes(), tiny_config(2), mode, tmp_path, progress=False, log_every=1)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "log.csv").is_file()
    stages = {r["stage"] for r in result.log}
    assert len(stages) == {"alternating": 4, "joint": 1, "unshared": 2}[mode]
    model, classes = load_model(tmp_path / "model.pt")
    assert classes == ["a", "b"]
    with torch.no_grad():
        out = model([TinyShapes()[0][0]])[0]
    assert set(out) == {"boxes", "labels", "scores"}


def test_interrupted_and_resumed_run_reaches_the_same_weights(tmp_path, monkeypatch):
    cfg = tiny_config(4)
    full = train(TinyShapes(), cfg, "alternating", tmp_path / "full", progress=False, log_every=1)
    # Killed in the middle of step 2 (the detector stage), then resumed from the checkpoint.
    train_until_killed(monkeypatch, 6, TinyShapes(), cfg, "alternating", tmp_path / "cut", progress=False, log_every=1)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["stage_index"], state["stage_step"]) == (1, 2)
    resumed = train(TinyShapes(), cfg, "alternating", tmp_path / "cut", progress=False, log_every=1,
                    resume=tmp_path / "cut" / "checkpoint.pt")
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in resumed.log] == [r["step"] for r in full.log]


def test_checkpoint_is_atomic_and_refuses_bad_files(tmp_path):
    path = save_checkpoint({"x": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ok.pt"]          # no temp file left behind

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pt.*corrupt or truncated"):
        load_checkpoint(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "fasterrcnn_edu/1", "payload": Payload()}, pickled)
    with pytest.raises(CheckpointError, match="pickled.pt.*pickled Python objects"):
        load_checkpoint(pickled)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a fasterrcnn_edu checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
    class Poisoned(TinyShapes):
        def __getitem__(self, i):
            image, target = super().__getitem__(i)
            return image * float("nan"), target

    with pytest.raises(NonFiniteLossError, match=r"stage 1-rpn, step 0: loss term loss_\w+ is nan"):
        train(Poisoned(), tiny_config(2), "alternating", tmp_path, progress=False, log_every=1)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "model.pt").exists()


def test_bf16_autocast_training_keeps_boxes_fp32():
    result = train(TinyShapes(), tiny_config(2), "joint", None, progress=False, log_every=1, amp="bf16")
    assert all(torch.isfinite(torch.tensor(v)) for r in result.log for k, v in r.items() if k.startswith("loss"))
    model = result.model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([TinyShapes()[0][0]])[0]
    assert out["boxes"].dtype == torch.float32


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = train(TinyShapes(), tiny_config(2), "alternating", out_dir, progress=False, log_every=1)
        torch.save(result.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
        torch.save([sum(v for k, v in r.items() if k.startswith("loss")) for r in result.log], os.path.join(out_dir, f"losses{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_keep_identical_replicas(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Rank 0 alone writes the run's files.
    assert (tmp_path / "model.pt").is_file()
    # Each rank computed its loss on its own images (different first losses), yet the replicas stayed
    # identical: the gradients were averaged, not each rank stepping on its own.
    losses = [torch.load(tmp_path / f"losses{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(losses[0]) == len(losses[1]) > 0 and losses[0][0] != losses[1][0]


@pytest.mark.parametrize("command", ["train", "pretrain", "eval", "detect", "bench", "side-by-side",
                                     "make-data", "check-data"])
def test_every_command_has_help_with_defaults(command, capsys):
    from fasterrcnn_edu.cli import build_parser
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    assert command == "detect" or "(default:" in out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fasterrcnn_edu", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert all(c in out for c in ("train", "eval", "detect", "bench", "make-data", "check-data"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_with_bf16():
    result = train(TinyShapes(), tiny_config(2), "alternating", None, device="cuda", progress=False, amp="bf16")
    assert next(result.model.parameters()).is_cuda
