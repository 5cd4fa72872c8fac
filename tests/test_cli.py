"""The detector's command line end to end: train, eval (also under bf16 autocast), detect, and their errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fasterrcnn_edu.cli import main
from fasterrcnn_edu.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference_model.pt"
SHAPES = ROOT / "data" / "shapes"


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, seed=0, num_trainval=4, num_test=2, image_size=(160, 128))
    return root


def _assert_same_model(loaded, expected):
    (model, classes), (other, other_classes) = loaded, expected
    assert classes == other_classes and type(model) is type(other)
    from fasterrcnn_edu.lab.ablations import same_weights
    ours, theirs = model.state_dict(), other.state_dict()
    assert list(ours) == list(theirs) and same_weights(ours, theirs)


def test_an_unshared_runs_checkpoint_loads_as_its_model(tiny_shapes, tmp_path):
    """`load_model` on the training checkpoint of a 2-step (unshared) run: both networks, as in model.pt."""
    from fasterrcnn_edu.checkpoint import load_model
    from fasterrcnn_edu.model import UnsharedFasterRCNN
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_shapes), "--mode", "unshared", "--iterations-scale", "0.0012",
                 "--set", "warmup_iterations=1", "--set", "min_size=128", "--set", "max_size=160",
                 "--threads", "1", "--out", str(run)]) == 0
    model, classes = load_model(run / "model.pt")
    assert isinstance(model, UnsharedFasterRCNN)
    _assert_same_model(load_model(run / "checkpoint.pt"), (model, classes))


def test_train_then_eval_then_detect(tiny_shapes, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_shapes), "--mode", "joint", "--iterations-scale", "0.0012", "--amp", "bf16",
                 "--set", "warmup_iterations=1", "--set", "min_size=128", "--set", "max_size=160",
                 "--threads", "1", "--out", str(run)]) == 0
    assert {"model.pt", "checkpoint.pt", "log.csv", "log.jsonl", "losses.png"} <= {p.name for p in run.iterdir()}
    assert main(["eval", "--model", str(run / "model.pt"), "--data", str(tiny_shapes), "--out", str(tmp_path / "eval"),
                 "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # The number eval reports is the model's VOC07 mAP on the split, computed here without the CLI.
    from fasterrcnn_edu.checkpoint import load_model
    from fasterrcnn_edu.data import VOCDataset
    from fasterrcnn_edu.evaluation import evaluate_voc
    from fasterrcnn_edu.inference import predict_dataset
    model, classes = load_model(run / "model.pt")
    _assert_same_model(load_model(run / "checkpoint.pt"), (model, classes))   # the training file's final state
    detections, targets = predict_dataset(model, VOCDataset(tiny_shapes, "test", classes=classes), "cpu", 4, False)
    expected = evaluate_voc(detections, targets, len(classes) + 1, use_07_metric=True, class_names=classes).map
    assert metrics["images"] == 2 and metrics["voc07_map"] == pytest.approx(expected, abs=1e-12)
    image = next((tiny_shapes / "JPEGImages").glob("*.jpg"))
    assert main(["detect", str(image), "--model", str(run / "model.pt"), "--out", str(tmp_path / "det"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "det" / f"{image.stem}.png").is_file()
    assert str(image) in json.loads((tmp_path / "det" / "detections.json").read_text())["images"]


def test_eval_under_bf16_autocast_is_close_to_fp32(tmp_path):
    """The reference model on 8 test images: bf16 autocast changes mAP by little (boxes stay fp32)."""
    maps = {}
    for amp in (None, "bf16"):
        out = tmp_path / str(amp)
        assert main(["eval", "--model", str(REFERENCE), "--data", str(SHAPES), "--limit", "8", "--device", "cpu",
                     "--out", str(out)] + (["--amp", amp] if amp else [])) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["amp"] == amp
        maps[amp] = metrics["voc07_map"]
    assert maps[None] > 0.5
    assert abs(maps["bf16"] - maps[None]) < 0.1


def test_detect_names_an_unreadable_image_and_still_writes_the_others(tmp_path, capsys):
    good = next((SHAPES / "JPEGImages").glob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    code = main(["detect", str(bad), str(good), "--model", str(REFERENCE), "--out", str(tmp_path / "det"),
                 "--device", "cpu"])
    assert code == 1
    assert "broken.jpg" in capsys.readouterr().err
    report = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert list(report["images"]) == [str(good)] and list(report["errors"]) == [str(bad)]


@pytest.mark.parametrize("command", ["eval", "detect"])
def test_missing_model_file_is_a_clear_error(command, tmp_path, capsys):
    args = [command, "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")]
    if command == "detect":
        args.append(str(next((SHAPES / "JPEGImages").glob("*.jpg"))))
    assert main(args) == 1
    assert "nope.pt" in capsys.readouterr().err


def test_train_rejects_an_unknown_config_field(tiny_shapes, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_shapes), "--set", "no_such_field=1", "--out", str(tmp_path)]) == 2
    assert "no_such_field" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["lambda-sweep", "--data", "{missing}"],
    ["profile", "--data", "{missing}"],
    ["ablation", "recall", "--data", "{missing}"],
    ["errors", "--data", "{missing}"],
    ["eval", "--data", "{missing}"],
    ["train", "--data", "{missing}"],
    ["eval", "--model", "{missing}/model.pt"],
    ["check-data", "{missing}"],
])
def test_a_missing_file_or_folder_is_one_line_in_every_command(args, tmp_path, capsys):
    """Errors of the data and checkpoint layers reach the user as one line (cli.main), whatever the command."""
    args = [a.format(missing=tmp_path / "nowhere") for a in args]
    out = ["--out", str(tmp_path / ("out.json" if args[0] in ("lambda-sweep", "profile", "ablation", "errors")
                                     else "out"))]
    assert main(args + (out if args[0] != "check-data" else [])) == 1
    captured = capsys.readouterr()
    assert "nowhere" in captured.err + captured.out and "Traceback" not in captured.err


def test_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr("fasterrcnn_edu.data.commands.check_data", interrupted)
    assert main(["check-data", str(SHAPES)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
