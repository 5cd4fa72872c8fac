"""Issue 13, class 4: checkpoints and weights files are validated, and never written with NaN or inf.

Every malformed file is a `CheckpointError` whose message names the file and what is wrong (the
kind of file, the config field, the class list, the tensor); random bytes are "corrupt"; temporary
files of interrupted writes are cleaned up; saved files get the usual mode.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from fasterrcnn_edu.backbones import build_backbone, load_state_dict
from fasterrcnn_edu.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint, save_model
from fasterrcnn_edu.fileio import remove_stale_temp_files, stale_temp_files
from fasterrcnn_edu.cli import main
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.model import FasterRCNN

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference_model.pt"
BACKBONE = ROOT / "data" / "backbone_small.pt"


class Payload:
    """A pickled object: weights_only refuses it."""


@pytest.fixture(scope="module")
def saved():
    """A small valid model file's content (book preset, tiny head), as torch.load returns it."""
    torch.manual_seed(0)
    cfg = Config.book(num_classes=3, head_hidden=16, rpn_channels=16)
    return {"format": "fasterrcnn_edu/1", "kind": "shared", "model": FasterRCNN(cfg).state_dict(),
            "config": cfg.to_dict(), "classes": ["a", "b"], "info": {}}


def _damage(state: dict, how: str) -> dict:
    state = copy.deepcopy(state)
    if how == "unknown field":
        state["config"]["no_such_field"] = 1
    elif how == "missing field":
        del state["config"]["min_size"]
    elif how == "wrong type":
        state["config"]["min_size"] = "600"
    elif how == "invalid value":
        state["config"]["roi_pool"] = "avg"
    elif how == "bad schedule":
        state["config"]["joint"] = {"iterations": 5, "lr": 0.1, "foo": 1}
    elif how == "config not a dict":
        state["config"] = [1, 2]
    elif how == "too few classes":
        state["classes"] = ["a"]
    elif how == "duplicate classes":
        state["classes"] = ["a", "a"]
    elif how == "classes not names":
        state["classes"] = [1, 2]
    elif how == "wrong shape":
        state["model"]["rpn.head.conv.weight"] = torch.zeros(3, 3)
    elif how == "missing tensor":
        del state["model"]["roi_heads.predictor.cls_score.bias"]
    elif how == "unexpected tensor":
        state["model"]["extra.weight"] = torch.zeros(1)
    elif how == "nan weights":
        state["model"]["roi_heads.predictor.cls_score.weight"][0, 0] = float("nan")
    elif how == "bad kind":
        state["kind"] = "triple"
    elif how == "bad mode":
        state = {k: v for k, v in state.items() if k != "model"}
        state.update(mode="sideways", networks={"shared": {}})
    return state


DAMAGE = {
    "unknown field": "config field(s) ['no_such_field'] unknown",
    "missing field": "config field(s) ['min_size'] missing",
    "wrong type": "Config field min_size: expected an integer",
    "invalid value": "Config field roi_pool: must be one of",
    "bad schedule": "config field joint must hold iterations, lr and lr_step",
    "config not a dict": "config is missing or not a dict",
    "too few classes": "1 classes but config num_classes = 3",
    "duplicate classes": "classes listed more than once",
    "classes not names": "classes must be a list of non-empty names",
    "wrong shape": "rpn.head.conv.weight has shape (3, 3), expected (16, 128, 3, 3)",
    "missing tensor": "1 tensor(s) missing (e.g. roi_heads.predictor.cls_score.bias)",
    "unexpected tensor": "1 tensor(s) unexpected (e.g. extra.weight)",
    "nan weights": "roi_heads.predictor.cls_score.weight holds NaN or inf",
    "bad kind": "kind must be one of",
    "bad mode": "mode must be one of",
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_malformed_model_file_names_the_file_and_what_differs(saved, how, tmp_path):
    path = tmp_path / f"{how.replace(' ', '_')}.pt"
    torch.save(_damage(saved, how), path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value) and DAMAGE[how] in str(info.value), str(info.value)


def test_the_undamaged_file_loads(saved, tmp_path):
    torch.save(saved, tmp_path / "ok.pt")
    model, classes = load_model(tmp_path / "ok.pt")
    assert classes == ["a", "b"] and not model.training


def test_a_model_file_without_newer_training_fields_still_loads(tmp_path):
    state = torch.load(REFERENCE, weights_only=True)
    # A model file written before the training-only fields existed (as the first edition's was) ...
    old = {k: v for k, v in state["config"].items() if k not in ("difficult", "alt_reinit_heads", "bias_lr_mult")}
    path = tmp_path / "old_model.pt"
    torch.save({**state, "config": old}, path)
    model, classes = load_model(path)              # ... still loads: those fields cannot change detections
    assert len(classes) == model.cfg.num_classes - 1
    assert model.cfg.difficult == Config().difficult


def _bad_bytes(path: Path, how: str) -> Path:
    if how == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is a text file, not weights\n")
    elif how == "truncated":
        torch.save({"x": torch.ones(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif how == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("how, message", [("random bytes", "corrupt"), ("empty", "corrupt"), ("text", "corrupt"),
                                          ("truncated", "corrupt or truncated"), ("folder", "not a regular file")])
def test_bytes_that_are_no_checkpoint_are_called_corrupt(tmp_path, how, message):
    path = _bad_bytes(tmp_path / "bad.pt", how)
    for load in (load_model, load_checkpoint, load_state_dict):
        with pytest.raises(CheckpointError, match=message) as info:
            load(path)
        assert str(path) in str(info.value) and "pickled" not in str(info.value)


def test_pickled_objects_are_refused_as_such(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "fasterrcnn_edu/1", "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*pickled Python objects"):
        load_model(path)


@pytest.mark.parametrize("given, expected, message", [
    (BACKBONE, "model", "holds backbone weights.*--backbone-weights"),
    (REFERENCE, "backbone", "not backbone weights; it holds a fasterrcnn_edu model file.*--model"),
    ("training", "backbone", "not backbone weights; it holds a fasterrcnn_edu training checkpoint"),
    ("training", "model-only", "is a training checkpoint.*expected a model file"),
    (REFERENCE, "training-only", "is a model file.*expected a training checkpoint"),
])
def test_each_reader_checks_the_kind_of_file(tmp_path, saved, given, expected, message):
    if given == "training":
        given = save_checkpoint({"mode": "joint", "networks": {"shared": saved["model"]}, "config": saved["config"],
                                 "classes": saved["classes"]}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=message):
        if expected == "model":
            load_model(given)
        elif expected == "backbone":
            build_backbone("small", 7, 16, weights=str(given))
        else:
            load_checkpoint(given, expect=expected.split("-")[0])


@pytest.mark.parametrize("backbone, message", [("zf", "do not fit the 'zf' backbone: .* missing"),
                                               ("vgg16", "do not fit torchvision's VGG-16")])
def test_backbone_weights_of_another_network_say_which_tensors_differ(backbone, message):
    with pytest.raises(CheckpointError, match=message):
        build_backbone(backbone, 7, 64, weights=str(BACKBONE))


def test_nan_backbone_weights_are_refused(tmp_path):
    state = dict(torch.load(BACKBONE, weights_only=True)["state_dict"])
    state["body.0.weight"] = state["body.0.weight"].clone().fill_(float("inf"))
    torch.save({"state_dict": state}, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match="body.0.weight holds NaN or inf"):
        build_backbone("small", 7, 16, weights=str(tmp_path / "inf.pt"))


@pytest.mark.parametrize("poison", ["nan", "inf", "-inf"])
def test_non_finite_weights_are_never_written_and_the_previous_file_is_kept(tmp_path, saved, poison):
    cfg = Config.from_dict(saved["config"])
    model = FasterRCNN(cfg)
    path = save_model(model, tmp_path / "model.pt", cfg, ["a", "b"])
    before = path.read_bytes()
    with torch.no_grad():
        model.rpn.head.conv.weight[0, 0, 0, 0] = float(poison)
    with pytest.raises(CheckpointError, match="model.pt: not written.*NaN or inf.*rpn.head.conv.weight"):
        save_model(model, path, cfg, ["a", "b"])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    with pytest.raises(CheckpointError, match="NaN or inf.*networks.shared.w"):
        save_checkpoint({"networks": {"shared": {"w": torch.tensor([float(poison)])}}}, tmp_path / "checkpoint.pt")


def test_saved_files_get_the_usual_mode_and_stale_temporaries_go(tmp_path):
    path = save_checkpoint({"x": torch.ones(2)}, tmp_path / "checkpoint.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    stale = [tmp_path / "checkpoint.pt.a1b2c3d4.tmp", tmp_path / "model.pt.zzzz_zzz.tmp"]
    for p in stale + [tmp_path / "mine.tmp"]:
        p.write_bytes(b"half")
    assert stale_temp_files(tmp_path, "checkpoint.pt") == stale[:1]
    assert remove_stale_temp_files(tmp_path) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "mine.tmp"]


@pytest.mark.parametrize("how", ["random bytes", "text", "truncated"])
def test_cli_says_corrupt_in_one_line(tmp_path, how, capsys):
    path = _bad_bytes(tmp_path / "model.pt", how)
    assert main(["eval", "--model", str(path), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "corrupt" in err and "Traceback" not in err


# Issue 25, class 9: a malicious pickle is reported as pickled objects refused, in the words the pinned torch
# really uses ("unsupported GLOBAL ... is blocked" for os/sys/posix/nt, "Unsupported global" otherwise).
class _RunsCode:
    """Unpickling this calls `function(argument)`: what a malicious checkpoint does."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function, wording", [
    (os.system, r"Trying to load unsupported GLOBAL posix\.system whose module posix is blocked"),
    (eval, r"Unsupported global: GLOBAL eval was not an allowed global by default"),
])
def test_a_malicious_pickle_is_refused_as_pickled_objects(tmp_path, function, wording, capsys):
    marker = tmp_path / "code-ran"
    payload = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pt"
    torch.save({"format": "fasterrcnn_edu/1", "kind": "shared", "model": _RunsCode(function, payload)}, path)
    for load in (load_model, load_checkpoint, load_state_dict):
        with pytest.raises(CheckpointError, match=rf"refusing .*{path}: it holds pickled Python objects, which "
                                                  rf"could run code when loaded \({wording}") as info:
            load(path)
        assert "corrupt" not in str(info.value)
    assert main(["detect", str(BACKBONE), "--model", str(path), "--out", str(tmp_path / "det")]) != 0
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("field, value, reason", [
    ("min_size", 10**9, "needs 12 EB"), ("max_size", 10**9, "needs 12 EB"),
    ("roi_output_size", 100_000, "each pooled RoI holds"), ("size_divisible", 10**6, "12 TB per image"),
    ("head_hidden", 10**9, "fc7 alone would hold")])
def test_a_size_beyond_its_upper_bound_in_a_saved_config_is_refused_before_any_allocation(saved, field, value,
                                                                                          reason, tmp_path):
    """Issue 25, item 2: such a model file ended in an allocation traceback when loaded or used."""
    state = copy.deepcopy(saved)
    state["config"][field] = value
    path = tmp_path / f"{field}.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid config: Config field {field}: must be in 1 .. ") and reason in message
