"""Issue 13, class 6: resource warnings where they surprise, and --threads for eval and detect."""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from fasterrcnn_edu.cli import main
from fasterrcnn_edu.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference_model.pt"
IMAGE = next((ROOT / "data" / "shapes" / "JPEGImages").glob("*.jpg"))
PAPER_WARNING = "--preset paper without --backbone-weights: VGG-16 starts from random weights"


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, seed=0, num_trainval=2, num_test=2, image_size=(160, 128))
    return root


@pytest.fixture
def no_training(monkeypatch):
    """`train` replaced by a stub: these tests are about what the command says before training."""
    calls = []

    def fake_train(dataset, cfg, mode, out, device, resume, **kwargs):
        calls.append((cfg, kwargs))
        return types.SimpleNamespace(model=None, seconds=0.0, log=[])

    monkeypatch.setattr("fasterrcnn_edu.training.train", fake_train)
    return calls


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("extra, warned", [
    ([], True),
    (["--set", "backbone=zf"], False),                   # the warning names the backbone: ZF below
    (["--backbone-weights", str(ROOT / "data" / "backbone_small.pt")], False),
])
def test_paper_preset_without_weights_warns(tiny_shapes, tmp_path, no_training, capsys, extra, warned):
    assert main(["train", "--data", str(tiny_shapes), "--preset", "paper", "--device", "cpu",
                 "--out", str(tmp_path / "run"), *extra]) == 0
    err = capsys.readouterr().err
    assert (PAPER_WARNING in err) == warned, err
    if extra[:2] == ["--set", "backbone=zf"]:
        assert "ZF starts from random weights" in err
    if warned:
        assert "vgg16-397923af.pth" in err and "--backbone-weights PATH" in err and err.startswith("warning: ")


def test_book_preset_trains_from_scratch_without_a_warning(tiny_shapes, tmp_path, no_training, capsys):
    assert main(["train", "--data", str(tiny_shapes), "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("amp, warned", [("fp16", True), ("bf16", False), (None, False)])
def test_fp16_on_cpu_warns_and_suggests_bf16(tiny_shapes, tmp_path, no_training, capsys, command, amp, warned):
    args = [command, "--data", str(tiny_shapes), "--device", "cpu", "--out", str(tmp_path / "out")]
    if command == "eval":
        args += ["--model", str(REFERENCE), "--split", "test", "--limit", "1"]
    assert main(args + (["--amp", amp] if amp else [])) == 0
    err = capsys.readouterr().err
    assert ("--amp fp16 on a CPU is slow" in err and "bf16" in err) == warned, err


@pytest.mark.parametrize("command", ["eval", "detect", "train"])
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option_is_accepted_and_applied(tiny_shapes, tmp_path, no_training, keep_threads, command, threads):
    args = {"eval": ["eval", "--model", str(REFERENCE), "--data", str(tiny_shapes), "--split", "test"],
            "detect": ["detect", str(IMAGE), "--model", str(REFERENCE)],
            "train": ["train", "--data", str(tiny_shapes)]}[command]
    assert main(args + ["--threads", str(threads), "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    assert torch.get_num_threads() == threads
