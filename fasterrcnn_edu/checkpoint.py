"""Safe checkpoints: atomic writes, `weights_only` reads, clear errors.

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

import torch

FORMAT = "fasterrcnn_edu/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temp file + fsync + rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
