"""Issue 25, class 3: `--resume` checks every field of a training checkpoint before any work starts.

Each damaged checkpoint below used to give a traceback (a missing or string stage_index, a bad RNG
state, a tensor of the wrong shape, an extra network, an optimizer state of another stage, a
config mixing int and str keys), or to train the whole run and only then crash and lose the log
(a `log` that is no list). Now each is a `CheckpointError` naming the file and the field, raised
before the data set is touched.
"""
from __future__ import annotations

import copy

import pytest
import torch

from fasterrcnn_edu.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from fasterrcnn_edu.cli import main
from fasterrcnn_edu.training import train
from tests.test_training import TinyShapes, tiny_config


class Interrupted(Exception):
    """What a dataset raises to end a run where a kill would."""


class StopsAfter(TinyShapes):
    """TinyShapes that raises `Interrupted` at its `loads`-th item: the run ends there, after its last checkpoint."""

    def __init__(self, loads: int):
        self.left = loads

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise Interrupted
        return super().__getitem__(i)


class Untouchable(TinyShapes):
    """A data set that must not be read: resuming from a bad checkpoint has to fail before."""

    def __getitem__(self, i):
        raise AssertionError("the data set was read before the checkpoint was checked")


def interrupted_run(out, mode: str, cfg, loads: int) -> dict:
    """Train until the dataset's `loads`-th item, checkpointing every step; the checkpoint then left."""
    with pytest.raises(Interrupted):
        train(StopsAfter(loads), cfg, mode, out, progress=False, log_every=1, checkpoint_every=1)
    return load_checkpoint(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def mid_stage(tmp_path_factory):
    """A joint run's checkpoint in the middle of its one stage (step 2 of 4), with an optimizer state."""
    out = tmp_path_factory.mktemp("cut")
    state = interrupted_run(out, "joint", tiny_config(4), loads=2 * 2 + 1)
    assert state["stage_step"] == 2 and state["optimizer"] is not None
    return state


def _first_weight(state: dict) -> str:
    return next(k for k, v in state["networks"]["shared"].items() if v.dim() == 4)


def _damage(state: dict, how: str) -> dict:
    state = copy.deepcopy(state)
    state.pop("format")
    if how == "stage_index missing":
        del state["stage_index"]
    elif how == "stage_index text":
        state["stage_index"] = "0"
    elif how == "stage_index too large":
        state["stage_index"] = 7
    elif how == "stage_step past the stage":
        state["stage_step"] = 99
    elif how == "bad rng":
        state["generator"] = torch.zeros(3, dtype=torch.uint8)      # the single state of older files
        state["rng"] = [{"sampling": torch.zeros(3, dtype=torch.uint8)}]
    elif how == "wrong-shape tensor":
        state["networks"]["shared"][_first_weight(state)] = torch.zeros(2, 2)
    elif how == "extra network":
        state["networks"]["rpn"] = state["networks"]["shared"]
    elif how == "optimizer of another stage":
        state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    elif how == "momentum of the wrong shape":
        key = next(iter(state["optimizer"]["state"]))
        state["optimizer"]["state"][key]["momentum_buffer"] = torch.zeros(1)
    elif how == "config with int keys":
        state["config"].update({1: 2, "zzz": 3})
    elif how == "log not a list":
        state["log"] = "not a log"
    elif how == "seconds text":
        state["seconds"] = "ten"
    elif how == "other classes":
        state["classes"] = ["x", "y"]
    elif how == "another world size":
        state["world_size"] = 2
    return state


@pytest.mark.parametrize("how, message", [
    ("stage_index missing", r"stage_index must be an integer in 0\.\.1 \(the joint mode has 1 stage\), got None"),
    ("stage_index text", r"stage_index must be an integer in 0\.\.1 .*got '0'"),
    ("stage_index too large", r"stage_index must be an integer in 0\.\.1 .*got 7"),
    ("stage_step past the stage", r"stage_step 99 is past the end of stage joint \(4 iterations\)"),
    ("bad rng", r"rng\[0\]\['sampling'\] is not a random-generator state"),
    ("wrong-shape tensor", r"networks\['shared'\] does not fit this run's network: .* has shape \(2, 2\), expected"),
    ("extra network", r"networks must hold the state dicts \['shared'\] of a joint run, got \['rpn', 'shared'\]"),
    ("optimizer of another stage", r"the optimizer state does not fit stage joint"),
    ("momentum of the wrong shape", r"the optimizer state does not fit stage joint: a momentum buffer of another shape"),
    ("config with int keys", r"config must be a dict of field name -> value"),
    ("log not a list", r"log must be a list of records"),
    ("seconds text", r"seconds must be a number >= 0, got 'ten'"),
    ("other classes", r"classes \['x', 'y'\] are not the data set's \['a', 'b'\]"),
    ("another world size", r"written by a run of 2 process\(es\), resumed with 1: .*torchrun --nproc_per_node 2"),
])
def test_a_damaged_training_checkpoint_is_refused_before_any_work(mid_stage, tmp_path, how, message):
    path = save_checkpoint(_damage(mid_stage, how), tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=message) as info:
        train(Untouchable(), tiny_config(4), "joint", tmp_path / "run", progress=False, resume=path)
    assert str(info.value).startswith(str(path))
    assert not (tmp_path / "run" / "model.pt").exists()


def test_the_undamaged_checkpoint_resumes(mid_stage, tmp_path):
    path = save_checkpoint(_damage(mid_stage, "none"), tmp_path / "checkpoint.pt")
    result = train(TinyShapes(), tiny_config(4), "joint", tmp_path / "run", progress=False, log_every=1, resume=path)
    assert [r["step"] for r in result.log] == [0, 1, 2, 3] and (tmp_path / "run" / "model.pt").is_file()


def test_a_model_config_mixing_int_and_str_keys_is_named(mid_stage, tmp_path, capsys):
    path = save_checkpoint(_damage(mid_stage, "config with int keys"), tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"config field\(s\) \['zzz', 1\] unknown"):
        load_model(path)
    assert main(["detect", str(tmp_path / "x.png"), "--model", str(path), "--out", str(tmp_path / "det")]) == 1
    err = capsys.readouterr().err
    assert "config field(s) ['zzz', 1] unknown" in err and "Traceback" not in err


def test_resuming_in_the_middle_of_step_3_keeps_the_restored_head(tmp_path):
    """Resume mid-way through a stage that re-initialises a head (step 3, released code's fresh RPN head):
    the stage is not built a second time over the restored weights."""
    cfg = tiny_config(4)
    full = train(TinyShapes(), cfg, "alternating", tmp_path / "full", progress=False, log_every=1)
    # Steps 1 and 2 load 4 mini-batches of 2 images each, step 2 also every image once (its stored
    # proposals); the run stops in the third mini-batch of step 3.
    state = interrupted_run(tmp_path / "cut", "alternating", cfg, loads=4 * 2 + 4 + 4 * 2 + 2 * 2 + 1)
    assert (state["stage_index"], state["stage_step"]) == (2, 2), (state["stage_index"], state["stage_step"])
    resumed = train(TinyShapes(), cfg, "alternating", tmp_path / "cut", progress=False, log_every=1,
                    resume=tmp_path / "cut" / "checkpoint.pt")
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
