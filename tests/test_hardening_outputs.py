"""Issue 13, class 2: outputs are checked before any work starts, in every command.

`--out` that is a file where a folder is expected (or the reverse), under a system folder, below a
file, or not writable, is refused with one `error: --out ...` line and status 2 before anything is
read or computed; `train --out` on another run's folder needs --resume or --overwrite; temporary
files of interrupted writes are removed when the next command writing there starts.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from fasterrcnn_edu import options
from fasterrcnn_edu.cli import build_parser, main
from fasterrcnn_edu.commands import check_new_run
from fasterrcnn_edu.data.synthetic import generate_dataset
from fasterrcnn_edu.options import OUTPUT_KINDS, UsageError

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "data" / "shapes"
IMAGE = next((SHAPES / "JPEGImages").glob("*.jpg"))
# Each command with arguments that would make it do real work, were --out acceptable.
COMMANDS = {
    "train": ["train", "--data", str(SHAPES)],
    "eval": ["eval", "--data", str(SHAPES)],
    "detect": ["detect", str(IMAGE)],
    "pretrain": ["pretrain", "--data", str(SHAPES)],
    "lambda-sweep": ["lambda-sweep", "--data", str(SHAPES)],
    "ablation": ["ablation", "recall", "--data", str(SHAPES)],
    "profile": ["profile"],
    "bench": ["bench", "--tiny"],
    "side-by-side": ["side-by-side", "--data", str(SHAPES)],
    "errors": ["errors"],
    "capstone": ["capstone", "--seeds", "0"],
    "ddp-traffic": ["ddp-traffic"],
}


def _registered_commands_with_out() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = set()
    for name, p in sub.choices.items():
        parsers = [p] + [q for a in p._actions if isinstance(a, argparse._SubParsersAction) for q in a.choices.values()]
        if any(a.dest == "out" for q in parsers for a in q._actions):
            found.add(name)
    return found


def test_every_command_with_out_is_known_and_tested():
    commands = _registered_commands_with_out()
    assert commands <= set(OUTPUT_KINDS), "add the command to options.OUTPUT_KINDS"
    assert commands <= set(COMMANDS), "add the command to COMMANDS above"


def _bad_out(tmp_path: Path, case: str, kind: str) -> str:
    suffix = ".json" if kind == "file" else ""
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    if case == "wrong kind":
        if kind == "dir":
            return str(afile)
        (tmp_path / "folder.json").mkdir()
        return str(tmp_path / "folder.json")
    if case == "below a file":
        return str(afile / f"sub{suffix}")
    if case == "system folder":
        return f"/etc/fasterrcnn_edu_test/out{suffix}"
    if case == "root":
        return "/" if kind == "dir" else "/out.json"
    if case == "not writable":
        return str(tmp_path / "locked" / f"out{suffix}")
    raise ValueError(case)


@pytest.mark.parametrize("case", ["wrong kind", "below a file", "system folder", "root", "not writable"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_out_is_refused_before_any_work(command, case, tmp_path, monkeypatch, capsys):
    out = _bad_out(tmp_path, case, OUTPUT_KINDS[command])
    if case == "not writable":
        (tmp_path / "locked").mkdir()
        real_access = os.access
        monkeypatch.setattr(options.os, "access",
                            lambda p, mode: False if Path(p) == tmp_path / "locked" else real_access(p, mode))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(COMMANDS[command] + ["--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # nothing written anywhere


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_really_read_only_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["eval", "--out", str(locked / "eval")]) == 2
        assert "cannot write in" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, seed=0, num_trainval=4, num_test=2, image_size=(160, 128))
    return root


@pytest.mark.parametrize("existing", [["model.pt"], ["checkpoint.pt"], ["model.pt", "checkpoint.pt"]])
def test_train_refuses_another_runs_folder(tiny_shapes, tmp_path, existing, capsys):
    for name in existing:
        (tmp_path / name).write_bytes(b"earlier run")
    assert main(["train", "--data", str(tiny_shapes), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds another run" in err and "--resume" in err and "--overwrite" in err
    assert all((tmp_path / name).read_bytes() == b"earlier run" for name in existing)   # untouched


@pytest.mark.parametrize("resume, overwrite, refused", [(None, False, True), (Path("c.pt"), False, False),
                                                          (None, True, False)])
def test_resume_or_overwrite_lets_train_use_a_run_folder(tmp_path, resume, overwrite, refused):
    (tmp_path / "model.pt").write_bytes(b"x")
    if refused:
        with pytest.raises(UsageError, match="already holds another run"):
            check_new_run(tmp_path, resume, overwrite)
    else:
        check_new_run(tmp_path, resume, overwrite)
    check_new_run(tmp_path / "fresh", None, False)     # a new folder is always fine


def test_train_overwrite_replaces_the_earlier_run(tiny_shapes, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"earlier run")
    assert main(["train", "--data", str(tiny_shapes), "--mode", "joint", "--iterations-scale", "0.0008",
                 "--set", "warmup_iterations=0", "--set", "min_size=96", "--set", "max_size=128",
                 "--threads", "1", "--device", "cpu", "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "model.pt").read_bytes() != b"earlier run"


STALE = ["checkpoint.pt.ab12cd34.tmp", "model.pt.zz_zz_zz.tmp", "metrics.json.0a1b2c3d.tmp"]
KEPT = ["notes.tmp", "x.abcdefghi.tmp", "data.tmp.bak"]


@pytest.mark.parametrize("command", ["eval", "detect"])
def test_temporary_files_of_interrupted_writes_are_removed_at_start(tiny_shapes, tmp_path, command, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in STALE + KEPT:
        (out / name).write_bytes(b"half a file")
    extra = ["--data", str(tiny_shapes), "--limit", "1"] if command == "eval" else [str(IMAGE)]
    assert main([command, "--out", str(out), "--device", "cpu", *extra]) == 0
    left = {p.name for p in out.iterdir()}
    assert not left & set(STALE) and set(KEPT) <= left
    assert f"removed {len(STALE)} temporary file(s)" in capsys.readouterr().err


def test_a_file_output_removes_only_its_own_temporary_files(tmp_path, capsys):
    for name in STALE + KEPT:
        (tmp_path / name).write_bytes(b"half a file")
    options.prepare_output(tmp_path / "metrics.json", "file")
    left = {p.name for p in tmp_path.iterdir()}
    assert "metrics.json.0a1b2c3d.tmp" not in left and set(STALE[:2] + KEPT) <= left
    assert "removed 1 temporary file(s)" in capsys.readouterr().err


def test_json_results_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """`write_json` (every command's JSON result) writes NumPy, tensor and path values; a value it
    cannot write, or a write that fails half-way (the disk full), leaves the earlier file as it was,
    with no temporary file beside it."""
    import json

    import numpy as np
    import torch

    from fasterrcnn_edu.fileio import write_json
    path = tmp_path / "result.json"
    write_json({"map": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True), "ap": np.array([0.25, 1.0]),
                "boxes": torch.tensor([[1.0, 2.0]]), "file": Path("data/x.pt")}, path)
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == {"map": 0.5, "n": 3, "ok": True, "ap": [0.25, 1.0],
                                                         "boxes": [[1.0, 2.0]], "file": "data/x.pt"}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json({"map": object()}, path)
    assert path.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_json({"map": 0.9}, path)
    assert path.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
