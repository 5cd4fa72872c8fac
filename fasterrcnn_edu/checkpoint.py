"""The package's model and training files, above `model`: their contents validated, `load_model`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing pickled — so
it loads with `torch.load(weights_only=True)` (`fileio.read_torch_file`); it is written atomically
(`fileio.atomic_write`), and nothing with NaN or infinite weights is ever written.

Three kinds of file are read, and each reader checks that it got the kind it expects::

    model      `save_model`:           {"format", "kind", "model", "config", "classes", "info"}
    training   `train`'s checkpoint.pt: {"format", "mode", "networks", "optimizer", ..., "config", "classes"}
    backbone   ImageNet or `pretrain` weights: a plain state dict (or {"state_dict": ...}), no "format"
               (read by `backbones`, through `fileio`)

Every problem is a `CheckpointError` whose message starts with the file and names what is wrong:
the field, class list or tensor that differs, or "corrupt" for bytes that are no PyTorch file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from fasterrcnn_edu.config import STAGE_FIELDS, TRAINING_ONLY_FIELDS, Config
from fasterrcnn_edu.fileio import (FORMAT, CheckpointError, atomic_write, file_kind, load_weights,
                                   non_finite_tensors, read_torch_file)
from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN

MODEL_KINDS = ("shared", "unshared")
TRAINING_MODES = ("alternating", "joint", "unshared")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temp file + fsync + rename). Returns the path.

    Refuses (CheckpointError, the previous file kept) a state with NaN or infinite tensors: a
    checkpoint must always hold the last finite state of a run.
    """
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f"{path}: not written, {len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]}); "
                              "the previous file is kept")
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def save_model(model: nn.Module, path: str | Path, cfg: Config, classes: list[str], info: dict | None = None) -> Path:
    """Save weights + config + class names (no optimiser): what `load_model` needs to detect."""
    kind = "unshared" if hasattr(model, "rpn_net") else "shared"
    return save_checkpoint({"kind": kind, "model": model.state_dict(), "config": cfg.to_dict(),
                            "classes": list(classes), "info": info or {}}, path)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
_KIND_WORDS = {"model": "a model file (model.pt, from save_model)",
               "training": "a training checkpoint (checkpoint.pt)",
               "backbone": "backbone weights (a state dict)",
               "unknown": "a checkpoint of neither kind"}
_KIND_HINTS = {"model": "pass it as --model", "training": "pass it as --resume or --model",
               "backbone": "pass it as --backbone-weights"}


def load_checkpoint(path: str | Path, map_location="cpu", expect: str | tuple[str, ...] | None = None) -> dict:
    """Read a file written by `save_checkpoint`, refusing pickled objects, damaged files and other kinds.

    expect: "model", "training" or a tuple of them; None accepts both (any fasterrcnn_edu file).
    """
    state = read_torch_file(path)
    kind = file_kind(state)
    if not (isinstance(state, dict) and state.get("format") == FORMAT):
        hint = f"; it holds {_KIND_WORDS[kind]}: {_KIND_HINTS[kind]}" if kind in _KIND_HINTS else ""
        raise CheckpointError(f"{path} is not a fasterrcnn_edu checkpoint (expected format {FORMAT!r}){hint}")
    expected = (expect,) if isinstance(expect, str) else expect
    if expected is not None and kind not in expected:
        hint = f": {_KIND_HINTS[kind]}" if kind in _KIND_HINTS else ""
        raise CheckpointError(f"{path} is {_KIND_WORDS[kind]}, expected "
                              + " or ".join(_KIND_WORDS[k] for k in expected) + hint)
    if map_location != "cpu":
        state = _to_device(state, map_location)
    return state


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_device(v, device) for v in state]
    return state


def config_of(state: dict, path: str | Path) -> Config:
    """The Config saved in a checkpoint, every field checked; CheckpointError names the file and field."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: config is missing or not a dict of fields")
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted((k for k in saved if k not in names), key=repr)    # repr: keys may mix int and str
    if unknown:
        raise CheckpointError(f"{path}: config field(s) {unknown} unknown to this version of fasterrcnn_edu "
                              "(written by a newer or different version)")
    missing = sorted(names - set(saved) - TRAINING_ONLY_FIELDS)
    if missing:
        raise CheckpointError(f"{path}: config field(s) {missing} missing (the file is damaged or from an "
                              "older version); a default there would change the detector")
    for name in STAGE_FIELDS:
        schedule = saved.get(name)
        if isinstance(schedule, dict) and set(schedule) != {"iterations", "lr", "lr_step"}:
            raise CheckpointError(f"{path}: config field {name} must hold iterations, lr and lr_step, "
                                  f"got {sorted(schedule)}")
    # Saved before joint-training accumulation existed: those runs took one image's RoI batch per update.
    saved = {"joint_iter_size": 1, "joint_roi_batch_size": saved.get("roi_batch_size"), **saved}
    try:
        return Config.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from None


def check_classes(classes, cfg: Config, path: str | Path) -> list[str]:
    """The class list saved with a model: unique non-empty strings, as many as cfg.num_classes - 1."""
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c for c in classes):
        raise CheckpointError(f"{path}: classes must be a list of non-empty names, got {classes!r:.200}")
    if len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: classes listed more than once: "
                              f"{sorted({c for c in classes if list(classes).count(c) > 1})}")
    if len(classes) != cfg.num_classes - 1:
        raise CheckpointError(f"{path}: {len(classes)} classes but config num_classes = {cfg.num_classes} "
                              f"(expected {cfg.num_classes - 1} classes plus the background)")
    return list(classes)



def model_weights(state: dict, path: str | Path) -> tuple[str, dict]:
    """(kind, state dict) of the final model in a model file or a training checkpoint."""
    if "model" in state:
        kind, weights = state.get("kind"), state["model"]
        if kind not in MODEL_KINDS:
            raise CheckpointError(f"{path}: kind must be one of {MODEL_KINDS}, got {kind!r:.100}")
    else:
        mode, nets = state.get("mode"), state.get("networks")
        if mode not in TRAINING_MODES:
            raise CheckpointError(f"{path}: mode must be one of {TRAINING_MODES}, got {mode!r:.100}")
        needed = ("shared",) if mode != "unshared" else ("rpn", "shared")
        if not isinstance(nets, dict) or any(not isinstance(nets.get(n), dict) for n in needed):
            raise CheckpointError(f"{path}: networks must hold the state dicts {list(needed)}")
        kind = "unshared" if mode == "unshared" else "shared"
        weights = (nets["shared"] if kind == "shared"
                   else {**{f"rpn_net.{k}": v for k, v in nets["rpn"].items()},
                         **{f"detector_net.{k}": v for k, v in nets["shared"].items()}})
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the model's weights are not a state dict")
    return kind, weights


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str]]:
    """Load a model saved by `save_model` (or the final state of a training checkpoint) in eval mode.

    Checks kind, config (unknown, missing or invalid fields), class list and every tensor's name,
    shape and values; any problem is a CheckpointError naming the file and what differs.
    """
    state = load_checkpoint(path, expect=("model", "training"))
    # The saved weights include the backbone: never reopen the (machine-specific) file it started from.
    cfg = dataclasses.replace(config_of(state, path), backbone_weights=None)
    classes = check_classes(state.get("classes"), cfg, path)
    kind, weights = model_weights(state, path)
    model = FasterRCNN(cfg) if kind == "shared" else UnsharedFasterRCNN(FasterRCNN(cfg), FasterRCNN(cfg))
    load_weights(model, weights, path, f"a {cfg.backbone} {kind} model with {cfg.num_classes} classes")
    return model.to(device).eval(), classes
