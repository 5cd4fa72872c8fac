"""Safe checkpoints and model files: atomic writes, `weights_only` reads, validated contents, clear errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing pickled — so
it loads with `torch.load(weights_only=True)`, which refuses arbitrary Python objects (a pickled
object in a checkpoint can run code when loaded). Writes go to a temporary file in the same
folder, are flushed to disk, then renamed over the target: a crash never leaves half a file, and
the temporary file an interrupted write leaves is removed when the next run starts
(`remove_stale_temp_files`). Nothing with NaN or infinite weights is ever written.

Three kinds of file are read, and each reader checks that it got the kind it expects:

    model      `save_model`:           {"format", "kind", "model", "config", "classes", "info"}
    training   `train`'s checkpoint.pt: {"format", "mode", "networks", "optimizer", ..., "config", "classes"}
    backbone   ImageNet or `pretrain` weights: a plain state dict (or {"state_dict": ...}), no "format"

Every problem is a `CheckpointError` whose message starts with the file and names what is wrong:
the field, class list or tensor that differs, or "corrupt" for bytes that are no PyTorch file.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

import torch
from torch import nn

from fasterrcnn_edu.config import STAGE_FIELDS, Config

FORMAT = "fasterrcnn_edu/1"
# The temporary name `atomic_write` gives `target`: "target.XXXXXXXX.tmp" (mkstemp's 8 random characters).
_TEMP_NAME = re.compile(r"^(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
# Config fields that only steer training. A model file written before one of them existed still
# loads (the field takes its default, which cannot change detections); any other missing field is
# refused, since a default there (e.g. min_size) would silently change the detector.
TRAINING_ONLY_FIELDS = frozenset({
    "backbone_weights", "frozen_layers", "rpn_fg_iou", "rpn_bg_iou", "rpn_batch_size", "rpn_positive_fraction",
    "rpn_ignore_cross_boundary", "rpn_lambda", "rpn_reg_normalization", "rpn_smooth_l1_beta",
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "roi_batch_size", "roi_positive_fraction",
    "roi_fg_iou", "roi_bg_iou_low", "roi_bg_iou_high", "det_lambda", "det_smooth_l1_beta", "images_per_batch",
    "det_images_per_batch", "momentum", "weight_decay", "bias_lr_mult", "bias_weight_decay", "warmup_iterations",
    "flip", "difficult", "channels_last", "stage_rpn1", "stage_det1", "stage_rpn2", "stage_det2", "joint",
    "alt_reinit_heads", "alt_precomputed_proposals", "alt_proposal_pre_nms_top_n", "alt_proposal_post_nms_top_n",
    "seed",
})
MODEL_KINDS = ("shared", "unshared")
TRAINING_MODES = ("alternating", "joint", "unshared")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used; the message names the file and the reason."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint or weights file does not exist (also a FileNotFoundError, for callers that expect one)."""


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, flush it to disk, then rename it over
    `path`: readers see the old file or the new one, never half of one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())    # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temp_files(folder: str | Path, target: str | None = None) -> list[Path]:
    """The temporary files `atomic_write` left in `folder` when a write was killed (SIGKILL, power
    loss: its clean-up never ran); only those of `target` (a file name) if given."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.iterdir()):
        match = _TEMP_NAME.match(p.name)
        if match and (target is None or match["target"] == target) and (p.is_file() or p.is_symlink()):
            found.append(p)
    return found


def remove_stale_temp_files(folder: str | Path, target: str | None = None) -> list[Path]:
    """Delete `stale_temp_files(folder, target)`; returns them, so the caller can say what it removed.

    Call it when a run starts, before anything of this run writes to `folder`.
    """
    removed = stale_temp_files(folder, target)
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def non_finite_tensors(state, prefix: str = "") -> list[str]:
    """Names ("networks.shared.rpn.head.cls.weight") of the floating-point tensors holding NaN or inf."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "<tensor>"] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [name for key, value in items for name in non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


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
# How torch's weights-only reader words a refused object (torch 2.14.1, torch/_weights_only_unpickler.py):
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked." (os, sys, posix, nt),
# "Unsupported global: GLOBAL x.Y was not an allowed global by default...", and the refused NEWOBJ and
# REDUCE of a class or function that is not allow-listed. Its other errors ("Unsupported operand 149")
# are bytes it cannot parse at all: random data as much as a pickle, so those are called corrupt.
_REFUSED_OBJECT = re.compile(r"unsupported global|can only create new object|call reduce for unrecognized function",
                             re.IGNORECASE)


def read_torch_file(path: str | Path, what: str = "checkpoint"):
    """`torch.load(path, weights_only=True)` on the CPU; CheckpointError names the file and says why not:
    missing, not a regular file, pickled Python objects (refused: they could run code), or corrupt.
    `what` names the file in messages ("checkpoint", "weights file")."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: {what} not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a folder or a device), expected a .pt file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} is corrupt or truncated: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = next((line for line in str(exc).splitlines() if _REFUSED_OBJECT.search(line)), None)
        if refusal:
            # Torch's first sentence only: the rest advises allow-listing the global, i.e. running the code.
            refusal = refusal.replace("WeightsUnpickler error:", "").strip().split(". ")[0].rstrip(".")
            raise CheckpointError(f"refusing {what} {path}: it holds pickled Python objects, which could "
                                  f"run code when loaded ({refusal})") from None
        raise CheckpointError(f"{path}: {what} is corrupt or truncated: not a PyTorch file") from None
    except (KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, ValueError):
        # What torch.load's legacy reader raises for bytes that are no PyTorch file at all (text, random data).
        raise CheckpointError(f"{path}: {what} is corrupt or truncated: not a PyTorch file") from None
    except (EOFError, RuntimeError, OSError, zipfile.BadZipFile, MemoryError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else "the file ends early"
        raise CheckpointError(f"{path}: {what} is corrupt or truncated ({reason})") from None


def file_kind(state) -> str:
    """What a loaded file holds: "model", "training", "backbone" (a state dict) or "unknown"."""
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return "model" if "model" in state else "training" if "networks" in state else "unknown"
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if isinstance(weights, dict) and weights and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in weights.items()):
        return "backbone"
    return "unknown"


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
    unknown = sorted(k for k in saved if k not in names)
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


def state_dict_differences(expected: dict, given: dict) -> list[str]:
    """How `given` (name -> tensor) fails to fit `expected`: tensors missing or unexpected (counted, with
    an example), and each tensor of the wrong type or shape, or holding NaN or inf."""
    problems = []
    for word, names in (("missing", [k for k in expected if k not in given]),
                        ("unexpected", [k for k in given if k not in expected])):
        if names:
            problems.append(f"{len(names)} tensor(s) {word} (e.g. {names[0]})")
    for k, v in given.items():
        if k in expected and not isinstance(v, torch.Tensor):
            problems.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif k in expected and tuple(v.shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    problems += [f"{k} holds NaN or inf" for k in non_finite_tensors({k: v for k, v in given.items() if k in expected})]
    return problems


def load_weights(module: nn.Module, weights: dict, path: str | Path, what: str) -> None:
    """`module.load_state_dict(weights)` after checking names, shapes and values; CheckpointError says
    what differs (up to 4 problems, and how many more)."""
    problems = state_dict_differences(module.state_dict(), weights)
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(f"{path}: the weights do not fit {what}: " + "; ".join(problems[:4]) + more)
    module.load_state_dict(weights)


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
    # Imported here: model -> backbones reads weights files through this module.
    from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN

    state = load_checkpoint(path, expect=("model", "training"))
    # The saved weights include the backbone: never reopen the (machine-specific) file it started from.
    cfg = dataclasses.replace(config_of(state, path), backbone_weights=None)
    classes = check_classes(state.get("classes"), cfg, path)
    kind, weights = model_weights(state, path)
    model = FasterRCNN(cfg) if kind == "shared" else UnsharedFasterRCNN(FasterRCNN(cfg), FasterRCNN(cfg))
    load_weights(model, weights, path, f"a {cfg.backbone} {kind} model with {cfg.num_classes} classes")
    return model.to(device).eval(), classes
