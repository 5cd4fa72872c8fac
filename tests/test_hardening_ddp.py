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


# ---------------------------------------------------------------------------------------------
# Issue 25, class 5: WORLD_SIZE without torchrun, a peer that stops, and exact resume of a 2-process run
# ---------------------------------------------------------------------------------------------
def test_world_size_without_torchrun_is_one_line_naming_torchrun(monkeypatch, tmp_path, capsys):
    from fasterrcnn_edu.cli import main
    from fasterrcnn_edu.options import UsageError
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match=r"WORLD_SIZE=2 is set, but not RANK, MASTER_ADDR, MASTER_PORT: .*torchrun "
                                         r"--nproc_per_node 2 .*unset WORLD_SIZE"):
        with distributed_run(torch.device("cpu")):
            pass
    data = tmp_path / "shapes"
    generate_dataset(data, seed=0, num_trainval=2, num_test=1, image_size=(160, 128))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "WORLD_SIZE=2 is set" in err and "Traceback" not in err and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("name", ["log.csv", "model.pt", "log.jsonl", "losses.png"])
def test_an_output_file_that_is_a_folder_is_refused_before_training(tmp_path, name, capsys):
    from fasterrcnn_edu.cli import main
    data = tmp_path / "shapes"
    generate_dataset(data, seed=0, num_trainval=2, num_test=1, image_size=(160, 128))
    (tmp_path / "run" / name).mkdir(parents=True)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert f"{name} is a folder, where the run writes its" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()          # refused before the first step


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer_worker(rank: int, port: int, out_dir: str) -> None:
    """One process of a 2-process group in which rank 0 fails (as writing log.csv into a folder did at
    the end of a run) while rank 1 waits in a collective (the replicas check)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    from fasterrcnn_edu.commands import PeerStoppedError
    try:
        with distributed_run(torch.device("cpu")) as (_, r, world_size):
            if r == 0:
                raise OSError("[Errno 21] Is a directory: 'log.csv'")
            torch.distributed.all_gather_object([None] * world_size, "weights digest")
        outcome = "finished"
    except (PeerStoppedError, OSError) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    except BaseException as exc:          # anything else is what the test must catch
        outcome = f"unexpected {type(exc).__name__}: {exc}"
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_when_one_process_fails_the_others_stop_with_one_line(tmp_path):
    import torch.multiprocessing as mp
    context = mp.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_peer_worker, args=(rank, port, str(tmp_path))) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        if process.is_alive():
            process.kill()
    outcomes = [(tmp_path / f"rank{rank}.txt").read_text() if (tmp_path / f"rank{rank}.txt").exists() else "hung"
                for rank in range(2)]
    assert outcomes[0] == "OSError: [Errno 21] Is a directory: 'log.csv'"
    assert outcomes[1] == ("PeerStoppedError: data-parallel process 1: lost the connection to another process of the "
                           "run, which stopped first (its own error says why); stopping too"), outcomes[1]


def _kill_tree(pid: int) -> None:
    """kill -9 `pid` and every process below it (read from /proc: torchrun's workers are not in its group)."""
    import signal
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in reversed(tree):          # the workers first, torchrun last: none restarts another
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _torchrun_train(data: Path, out: Path, *extra: str) -> list[str]:
    """The command of a 2-process gloo run of 8 joint steps with a checkpoint after every step."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "fasterrcnn_edu", "train", "--data", str(data), "--mode", "joint",
            "--set", "joint=(8,0.005,6)", "--set", "warmup_iterations=1", "--set", "min_size=96",
            "--set", "max_size=128", "--checkpoint-every", "1",
            # Mini-batches of 16 anchors and 16 RoIs: smaller than what the images offer, so that every
            # step samples at random and each rank's random stream matters.
            "--set", "rpn_batch_size=16", "--set", "roi_batch_size=16", "--threads", "1", "--device", "cpu",
            "--out", str(out), *extra]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_a_killed_and_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path):
    import time

    from fasterrcnn_edu.checkpoint import load_checkpoint, load_model
    data = tmp_path / "shapes"
    generate_dataset(data, seed=0, num_trainval=4, num_test=1, image_size=(160, 128))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = dict(capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    done = subprocess.run(_torchrun_train(data, tmp_path / "whole"), **run)
    assert done.returncode == 0, done.stderr[-3000:]

    # kill -9 torchrun and both workers once a checkpoint of step 3 or later exists.
    cut = tmp_path / "cut"
    process = subprocess.Popen(_torchrun_train(data, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, cwd=tmp_path, start_new_session=True)
    deadline, stage_step = time.monotonic() + 400, 0
    try:
        while time.monotonic() < deadline and process.poll() is None and stage_step < 3:
            time.sleep(0.2)
            if (cut / "checkpoint.pt").exists():
                stage_step = load_checkpoint(cut / "checkpoint.pt")["stage_step"]
    finally:
        _kill_tree(process.pid)         # torchrun starts each worker in a session of its own
        process.wait()
    time.sleep(2)                          # nothing of the killed run may write afterwards
    state = load_checkpoint(cut / "checkpoint.pt")
    assert state["stage_index"] == 0 and 3 <= state["stage_step"] < 8, "the run was not killed mid-stage"
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["sampling"], state["rng"][1]["sampling"])
    assert not (cut / "model.pt").exists()

    done = subprocess.run(_torchrun_train(data, cut, "--resume", str(cut / "checkpoint.pt")), **run)
    assert done.returncode == 0, done.stderr[-3000:]
    whole, resumed = load_model(tmp_path / "whole" / "model.pt")[0].state_dict(), load_model(cut / "model.pt")[0].state_dict()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    losses = [[line.split(",") for line in (folder / "log.csv").read_text().splitlines()] for folder in (tmp_path / "whole", cut)]
    header = losses[0][0]
    keep = [i for i, name in enumerate(header) if name.startswith("loss") or name == "step"]
    assert [[row[i] for i in keep] for row in losses[0]] == [[row[i] for i in keep] for row in losses[1]]
