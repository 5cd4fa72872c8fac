"""Safe checkpoints and model files: atomic writes, `weights_only` reads, clear errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing pickled — so
it loads with `torch.load(weights_only=True)`, which refuses arbitrary Python objects (a pickled
object in a checkpoint can run code when loaded). Writes go to a temporary file in the same
folder, are flushed to disk, then renamed over the target: a crash never leaves half a file.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import dataclasses

import torch
from torch import nn

from fasterrcnn_edu.config import Config
from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN

FORMAT = "fasterrcnn_edu/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


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


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temp file + fsync + rename). Returns the path."""
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`, refusing pickled objects and damaged files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing checkpoint {path}: it holds pickled Python objects, which could run "
                              f"code when loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    except (EOFError, RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fasterrcnn_edu checkpoint (expected format {FORMAT!r})")
    return state


def save_model(model: nn.Module, path: str | Path, cfg: Config, classes: list[str], info: dict | None = None) -> Path:
    """Save weights + config + class names (no optimiser): what `load_model` needs to detect."""
    kind = "unshared" if isinstance(model, UnsharedFasterRCNN) else "shared"
    return save_checkpoint({"kind": kind, "model": model.state_dict(), "config": cfg.to_dict(),
                            "classes": list(classes), "info": info or {}}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str]]:
    """Load a model saved by `save_model` (or the final state of a training checkpoint) in eval mode."""
    state = load_checkpoint(path)
    # The saved weights include the backbone: never reopen the (machine-specific) file it started from.
    cfg = dataclasses.replace(Config.from_dict(state["config"]), backbone_weights=None)
    if "model" in state:
        kind, weights = state["kind"], state["model"]
    else:   # a training checkpoint
        kind = "unshared" if state["mode"] == "unshared" else "shared"
        nets = state["networks"]
        weights = (nets["shared"] if kind == "shared"
                   else {**{f"rpn_net.{k}": v for k, v in nets["rpn"].items()},
                         **{f"detector_net.{k}": v for k, v in nets["shared"].items()}})
    model = FasterRCNN(cfg) if kind == "shared" else UnsharedFasterRCNN(FasterRCNN(cfg), FasterRCNN(cfg))
    model.load_state_dict(weights)
    return model.to(device).eval(), list(state["classes"])
