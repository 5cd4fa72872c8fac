"""Safe files, below the model: atomic writes, `weights_only` reads, and weights checked before loading.

Everything here knows files and tensors, nothing of the detector: `backbones` reads ImageNet or
`pretrain` weights through it, and `checkpoint` (above `model`) builds the package's model and
training files on it. Writes go to a temporary file in the same folder, are flushed to disk, then
renamed over the target: a crash never leaves half a file, and the temporary file an interrupted
write leaves is removed when the next run starts (`remove_stale_temp_files`). Reads use
`torch.load(weights_only=True)`, which refuses arbitrary Python objects (a pickled object can run
code when loaded). Every problem is a `CheckpointError` whose message starts with the file.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from torch import nn

# The `format` entry of every model and training file this package writes (`checkpoint.save_checkpoint`).
FORMAT = "fasterrcnn_edu/1"
# The temporary name `atomic_write` gives `target`: "target.XXXXXXXX.tmp" (mkstemp's 8 random characters).
_TEMP_NAME = re.compile(r"^(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


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


def _jsonable(value):
    """What `json` cannot write itself: NumPy scalars, arrays and tensors (as lists) and paths (as POSIX strings)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_json(data: dict | list, path: str | Path, indent: int = 1) -> Path:
    """Write `data` as JSON atomically (a crash never leaves half a file), ending in a newline."""
    text = json.dumps(data, indent=indent, default=_jsonable) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


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

