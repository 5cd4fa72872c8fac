"""Result files of the lab: where a measurement was taken and by which command (`fileio.write_json` writes them).

Every JSON result the book shows records the command that wrote it (`command_line`), the machine
and versions (`environment`) and the SHA-256 of the files it read (`file_sha256`), so a number in
a chapter can be traced to the run that produced it.
"""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import platform
import sys
from pathlib import Path

import torch
import torchvision


def command_line(argv: list[str] | None = None) -> str:
    """The `python -m fasterrcnn_edu ...` command of this process (or of `argv`), for the record."""
    return " ".join(["python -m fasterrcnn_edu", *(sys.argv[1:] if argv is None else argv)])


def recorded_arguments(args) -> dict[str, str]:
    """A command's parsed arguments as text for a result file, paths under the current folder made
    relative to it: the defaults are absolute paths into this checkout, which no result file may name."""
    here = Path.cwd().resolve()

    def text(value) -> str:
        if isinstance(value, Path) and value.is_absolute() and value.resolve().is_relative_to(here):
            return str(value.resolve().relative_to(here))
        return str(value)

    return {key: text(value) for key, value in vars(args).items() if key != "func"}


def environment(device: torch.device | str = "cpu") -> dict:
    """Where a measurement was taken: date, versions, CPU/GPU, threads, load average."""
    device = torch.device(device)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, hex: results record the model and data files they were computed from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(path: str | Path) -> str:
    """One line naming a model file and the first 12 hex digits of its SHA-256.

    Chapters print it in a checked cell next to outputs that depend on the model, so a notebook
    whose stored outputs came from another model file fails its tests until it is re-executed.
    """
    return f"{Path(path).name}: sha256 {file_sha256(path)[:12]}"


def round_floats(data, digits: int = 6):
    """Round every float in nested dicts/lists (NaN becomes None) so the JSON files diff cleanly."""
    if isinstance(data, float):
        return None if math.isnan(data) else round(data, digits)
    if isinstance(data, dict):
        return {k: round_floats(v, digits) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [round_floats(v, digits) for v in data]
    return data


