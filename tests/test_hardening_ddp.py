"""Issue 10 item 2 (CLI part): `torchrun --nproc_per_node N -m fasterrcnn_edu train` trains data-parallel.

The CLI initialises the process group from torchrun's environment (gloo on CPU), only rank 0 prints
and writes, every rank trains on its own slice of each global batch, and the replicas end identical.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasterrcnn_edu.commands import distributed_run, weights_digest
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.data.synthetic import generate_dataset
from fasterrcnn_edu.training import load_batch


class Numbered:
    """Image i is filled with the value i: what a rank loaded can be read off its images."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.full((3, 8, 8), float(i)), {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([1]),
                                                   "difficult": torch.tensor([False])}


def _indices(images) -> list[int]:
    return [int(image[0, 0, 0]) for image in images]


@pytest.mark.parametrize("world_size, per_rank", [(2, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("step", [0, 3, 7])
def test_each_rank_loads_its_own_slice_of_every_global_batch(world_size, per_rank, step):
    cfg = Config.book(images_per_batch=per_rank, flip=False)
    slices = [_indices(load_batch(Numbered(), step, cfg, 0, "cpu", rank, world_size)[0]) for rank in range(world_size)]
    whole = _indices(load_batch(Numbered(), step, cfg.replace(images_per_batch=per_rank * world_size), 0, "cpu")[0])
    assert all(len(s) == per_rank for s in slices)
    assert sum(slices, []) == whole             # together exactly the global batch, each rank its own slice


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_run(torch.device("cpu")) as (device, rank, world_size):
        assert (device.type, rank, world_size) == ("cpu", 0, 1)
        assert not torch.distributed.is_initialized()


def test_weights_digest_tells_replicas_apart():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_cli_under_torchrun_trains_data_parallel_with_one_set_of_outputs(tmp_path):
    data = tmp_path / "shapes"
    generate_dataset(data, seed=0, num_trainval=4, num_test=1, image_size=(160, 128))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "fasterrcnn_edu", "train", "--data", str(data), "--mode", "joint", "--iterations-scale", "0.0012",
               "--set", "warmup_iterations=1", "--set", "min_size=96", "--set", "max_size=128",
               "--threads", "1", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # One set of outputs, written by rank 0 alone; no stray temporary files from a second writer.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.csv", "log.jsonl", "losses.png", "model.pt"]
    # Only rank 0 prints; the group was really formed, and the replicas ended identical.
    assert done.stdout.count("training joint") == 1 and "2 data-parallel processes" in done.stdout
    assert done.stdout.count("replicas identical") == 1 and done.stdout.count("done in") == 1


# ---------------------------------------------------------------------------------------------
# Issue 20, E3: each stage synchronises only the parameters it trains
# ---------------------------------------------------------------------------------------------
class RecordingDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel (no process group needed): records which parameters
    require grad when it wraps the stage's loss (DDP buckets and all-reduces exactly those)."""

    wrapped: list[tuple[set[int], dict]] = []

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__()
        self.module = module
        RecordingDDP.wrapped.append(({id(p) for p in module.parameters() if p.requires_grad}, kwargs))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_under_ddp_each_stage_synchronises_only_the_parameters_it_trains(monkeypatch):
    from fasterrcnn_edu.config import StageSchedule
    from fasterrcnn_edu.training import STEPS, StageState, build_networks, run_stage
    from test_training import TinyShapes

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    RecordingDDP.wrapped.clear()
    one = StageSchedule(1, 0.001, 1)
    cfg = Config.book(num_classes=3, min_size=96, max_size=128, stage_rpn1=one, stage_det1=one, stage_rpn2=one,
                      stage_det2=one, warmup_iterations=0)
    nets = build_networks("alternating", cfg)
    for index, make in enumerate(STEPS["alternating"]):
        stage = make(nets, cfg)
        before = {id(p): p.requires_grad for net in nets.values() for p in net.parameters()}
        run_stage(stage, TinyShapes(), cfg, state=StageState(index), world_size=2)
        synchronised, options = RecordingDDP.wrapped[-1]
        assert synchronised == {id(p) for _, p in stage.params}, stage.name
        assert not options.get("find_unused_parameters", False)
        # Afterwards every parameter requires grad as before (the next stage picks its own).
        assert before == {id(p): p.requires_grad for net in nets.values() for p in net.parameters()}
    assert len(RecordingDDP.wrapped) == 4
