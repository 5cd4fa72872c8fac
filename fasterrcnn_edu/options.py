"""The command line's validation layer: every option checked before any work, in one place.

`cli.main` runs `check_arguments` on the parsed options of every command before the command
starts: each numeric option against its range (`OPTION_RULES`, by option name, so a new command
inherits the rules of the options it shares), split names, input files, the device, and `--out`
(`prepare_output`: a folder or a file as `OUTPUT_KINDS` says, writable, not a system folder).
A problem is a `UsageError` whose message names the option; `cli.main` prints it as one line,
`error: ...`, and exits with status 2 (argparse's status for a bad command line).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from fasterrcnn_edu.config import field_info
from fasterrcnn_edu.fileio import remove_stale_temp_files


class UsageError(ValueError):
    """A command-line option that cannot be used; the message names the option and what is wrong."""


def option_name(dest: str) -> str:
    """"iterations_scale" -> "--iterations-scale"."""
    return "--" + dest.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Numbers and names
# ---------------------------------------------------------------------------------------------
def _integer(low: int, high: int | None = None) -> tuple:
    test = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high))
    return test, f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"


def _number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = False) -> tuple:
    def test(v) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (v > low if low_open else v >= low)
                and (high is None or (v < high if high_open else v <= high)))
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return test, (f"a finite number in {left}{low:g}, {high:g}{right}" if high is not None
                  else f"a finite number {'>' if low_open else '>='} {low:g}")


def _plain_name(v) -> bool:
    """A split name: a file name in ImageSets/Main, never a path."""
    return isinstance(v, str) and v not in ("", ".", "..") and not any(c in v for c in "/\\\0")


def config_rule(name: str) -> tuple:
    """The range of the integer Config field `name` (its metadata): an option that sets the field shares it."""
    rule = field_info(name)["rule"]
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and rule.test(v)), f"an integer {rule.words}"


SEED = config_rule("seed")
# Option (argparse dest) -> (test, what the value must be). A list-valued option is checked item by item.
OPTION_RULES: dict[str, tuple] = {
    "threads": _integer(0, 1024), "checkpoint_every": _integer(1), "steps": _integer(1),
    "limit": _integer(0), "repeats": _integer(1), "warmup": _integer(0), "index": _integer(0),
    "max_errors": _integer(0), "top": _integer(0), "val_images": _integer(0), "num_trainval": _integer(0), "num_test": _integer(0),
    "top_n": _integer(1), "sizes": _integer(1, 100_000), "counts": _integer(1), "proposals_min_size": _integer(1, 100_000),
    "image_size": _integer(1, 100_000), "jpeg_quality": _integer(1, 95),
    "seed": SEED, "seeds": SEED,
    "iterations_scale": _number(0, low_open=True), "score_threshold": _number(0, 1),
    "val_fraction": _number(0, 1, high_open=True), "lambdas": _number(0),
    "split": (_plain_name, "a split name (a file name in ImageSets/Main without .txt, not a path)"),
    "train_split": (_plain_name, "a split name"), "val_split": (_plain_name, "a split name"),
    "test_split": (_plain_name, "a split name"), "splits": (_plain_name, "a split name"),
}
# Options naming a file that must exist before anything starts (others are checked by their readers).
INPUT_FILES = ("backbone_weights", "resume")
# What each command's --out names: a folder it fills, or the one file it writes. A command not
# listed here is judged by the path: with a suffix (".json") a file, else a folder.
OUTPUT_KINDS = {"train": "dir", "eval": "dir", "detect": "dir", "pretrain": "file", "lambda-sweep": "file",
                "ablation": "file", "profile": "file", "bench": "file", "side-by-side": "file", "errors": "file",
                "capstone": "file", "ddp-traffic": "file"}


def output_kind(command: str | None, out: Path) -> str:
    """"dir" or "file": what `--out` of `command` names (see OUTPUT_KINDS)."""
    return OUTPUT_KINDS.get(command or "", "file" if Path(out).suffix else "dir")


def check_arguments(args: argparse.Namespace, command: str | None = None) -> None:
    """Check every option of `args` that has a rule, the input files, the device and --out
    (`prepare_output`, as `output_kind(command)` says); UsageError naming the option otherwise."""
    for dest, value in vars(args).items():
        rule = OPTION_RULES.get(dest)
        if rule is None or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not rule[0](item):
                raise UsageError(f"{option_name(dest)} must be {rule[1]}, got {item!r}")
    for dest in INPUT_FILES:
        path = getattr(args, dest, None)
        if path is not None and not Path(path).expanduser().is_file():
            what = "a folder, not a file" if Path(path).expanduser().is_dir() else "not found"
            raise UsageError(f"{option_name(dest)} {path}: {what}")
    if getattr(args, "device", None) is not None:
        pick_device(args.device)
    if getattr(args, "out", None) is not None:
        prepare_output(args.out, output_kind(command, args.out))


# ---------------------------------------------------------------------------------------------
# Devices and threads
# ---------------------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """"auto" means CUDA when present, else CPU; "cpu", "cuda", "cuda:N" and "mps" are checked to exist.

    UsageError (one line) for an unknown device string or a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}"
                             f"{', built without CUDA' if torch.version.cuda is None else ''}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered 0..{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: Apple's MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: unsupported device type {device.type!r}; use 'auto', 'cpu', 'cuda' or 'mps'")
    return device


def set_threads(threads: int) -> None:
    """torch's CPU threads (0: keep torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)


def warn(message: str) -> None:
    """One `warning: ...` line on stderr: something the user should know, that does not stop the command."""
    print(f"warning: {message}", file=sys.stderr)


def amp_warning(amp: str | None, device: torch.device) -> None:
    """fp16 autocast on a CPU works but is slow there (few CPUs have fp16 arithmetic); bf16 is not."""
    if amp == "fp16" and device.type == "cpu":
        warn("--amp fp16 on a CPU is slow (most CPUs have no fast fp16 arithmetic, and fp16 adds loss "
             "scaling); use --amp bf16 on a CPU, or fp16 on a CUDA device")


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
# Folders of the operating system: nothing of ours is ever written there.
SYSTEM_FOLDERS = tuple(Path(p) for p in (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr",
    "/System", "/private/etc", "C:/Windows", "C:/Program Files", "C:/Program Files (x86)"))


def _system_folder(resolved: Path) -> Path | None:
    if resolved == Path(resolved.anchor):
        return resolved
    return next((s for s in SYSTEM_FOLDERS if resolved == s or s in resolved.parents), None)


def prepare_output(path: str | os.PathLike, kind: str = "dir", option: str = "--out") -> Path:
    """Check an output path before any work, and clear what an interrupted earlier write left there.

    kind: "dir" (a folder the command writes files into) or "file" (the file it writes). Refused
    with a UsageError naming `option`: a file where a folder is expected or the reverse, a path in a
    system folder (/etc, /usr, ...) or the file system root, a parent that is a file, a folder that is
    not writable. Temporary files of interrupted atomic writes (`fileio.remove_stale_temp_files`)
    are deleted, and said so on stderr.
    """
    path = Path(path).expanduser()
    system = _system_folder(path.resolve() if kind == "dir" else path.resolve().parent)
    if system is not None:
        raise UsageError(f"{option} {path}: refusing to write into the system folder {system}; choose a folder of "
                         "your own, e.g. runs/NAME")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file, expected a folder")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, expected a file name (e.g. {path / 'result.json'})")
    folder = path if kind == "dir" else path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {existing} (permission denied or read-only)")
    if kind == "file" and path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and is not writable")
    removed = remove_stale_temp_files(folder, None if kind == "dir" else path.name)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) left by an interrupted write: "
              + ", ".join(str(p) for p in removed), file=sys.stderr)
    return path
