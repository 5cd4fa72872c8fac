"""Issue 13, class 1: `detect` and `eval` never abort on a valid image, and one bad image loses no run.

Any size the loader accepts gives zero or more detections (the transform never resizes a side to
zero, the RoI head takes zero proposals); unreadable images are listed by name while the others
are processed; outputs of inputs sharing a file name do not overwrite each other.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn_edu.checkpoint import load_model
from fasterrcnn_edu.cli import main
from fasterrcnn_edu.config import Config
from fasterrcnn_edu.data.synthetic import generate_dataset
from fasterrcnn_edu.transforms import ImageTransform

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference_model.pt"
ODD_SIZES = [(1, 1), (1, 1000), (1000, 1), (20000, 4), (4, 20000), (3, 5), (2, 3)]   # (H, W)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return load_model(REFERENCE)[0]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, seed=0, num_trainval=4, num_test=3, image_size=(160, 128))
    return root


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("preset", ["book", "paper"])
def test_transform_never_resizes_a_side_to_zero(size, preset):
    cfg = Config.book() if preset == "book" else Config.paper()
    transform = ImageTransform(cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std, cfg.size_divisible)
    batch, _ = transform([torch.rand(3, *size)])
    assert (batch.image_sizes >= 1).all() and batch.image_sizes.max() <= cfg.max_size
    resized_h, resized_w = batch.image_sizes[0].tolist()
    whole = torch.tensor([[0.0, 0.0, resized_w, resized_h]])
    back = transform.postprocess([{"boxes": whole}], batch)[0]["boxes"]
    assert torch.allclose(back, torch.tensor([[0.0, 0.0, size[1], size[0]]]))   # exactly the original frame


@pytest.mark.parametrize("size", ODD_SIZES)
def test_detector_gives_zero_or_more_detections_on_any_size(reference, size):
    with torch.no_grad():
        out = reference([torch.rand(3, *size)])[0]
    assert out["boxes"].shape[1:] == (4,) and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
    h, w = size
    assert (out["boxes"][:, 2] <= w + 1e-3).all() and (out["boxes"][:, 3] <= h + 1e-3).all()


@pytest.mark.parametrize("images", [0, 1, 2])
def test_roi_heads_take_zero_proposals(reference, images):
    """An image whose RPN keeps no proposal (all below rpn_min_size) yields no detections, not an error."""
    features = torch.zeros(max(images, 1), reference.backbone.out_channels, 4, 5)
    proposals = [torch.zeros(0, 4)] * max(images, 1)
    sizes = torch.tensor([[64, 80]] * max(images, 1))
    with torch.no_grad():
        detections, losses = reference.roi_heads(features, proposals, sizes)
    assert losses == {} and all(len(d["boxes"]) == 0 and d["boxes"].shape == (0, 4) for d in detections)


def _save_image(path: Path, kind: str) -> Path:
    rng = np.random.default_rng(0)
    if kind == "grey":
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), "L").save(path)
    elif kind == "palette":
        img = Image.new("P", (64, 48), 1)
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        img.save(path)
    elif kind == "1x1":
        Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    elif kind == "1x1000":
        Image.new("RGB", (1000, 1), (90, 90, 90)).save(path)
    elif kind == "20000x4":
        Image.new("RGB", (4, 20000), (90, 90, 90)).save(path)
    elif kind == "rgba":
        Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(path)
    elif kind == "16-bit":
        Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(path)
    return path


@pytest.mark.parametrize("kind", ["grey", "palette", "1x1", "1x1000", "20000x4", "rgba", "16-bit"])
def test_detect_cli_accepts_every_valid_image(tmp_path, kind, capsys):
    image = _save_image(tmp_path / f"{kind}.png", kind)
    assert main(["detect", str(image), "--model", str(REFERENCE), "--out", str(tmp_path / "det"),
                 "--device", "cpu", "--threads", "1"]) == 0
    report = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert report["errors"] == {} and isinstance(report["images"][str(image)]["detections"], list)
    assert (tmp_path / "det" / report["images"][str(image)]["output"]).is_file()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["garbage", "missing", "folder", "truncated", "empty"])
def test_detect_lists_an_unreadable_image_and_processes_the_others(tmp_path, bad, capsys):
    good = _save_image(tmp_path / "good.png", "grey")
    path = tmp_path / f"bad_{bad}.jpg"
    if bad == "garbage":
        path.write_bytes(b"not an image at all")
    elif bad == "folder":
        path.mkdir()
    elif bad == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif bad == "empty":
        path.write_bytes(b"")
    out = tmp_path / "det"
    assert main(["detect", str(path), str(good), "--model", str(REFERENCE), "--out", str(out), "--device", "cpu"]) == 1
    report = json.loads((out / "detections.json").read_text())
    assert list(report["images"]) == [str(good)]
    assert list(report["errors"]) == [str(path)] and path.name in report["errors"][str(path)]
    err = capsys.readouterr().err
    assert path.name in err and "Traceback" not in err


def test_detect_inputs_sharing_a_file_name_get_distinct_outputs(tmp_path):
    paths = []
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        paths.append(_save_image(tmp_path / folder / "img.png", "grey"))
    paths.append(_save_image(tmp_path / "a" / "IMG-2.png", "palette"))   # collides with a generated name
    out = tmp_path / "det"
    assert main(["detect", *map(str, paths), str(paths[0]), "--model", str(REFERENCE), "--out", str(out),
                 "--device", "cpu"]) == 0
    report = json.loads((out / "detections.json").read_text())
    outputs = [report["images"][str(p)]["output"] for p in paths]
    assert len({o.lower() for o in outputs}) == 4 and outputs[:3] == ["img.png", "img-2.png", "img-3.png"]
    assert all((out / o).is_file() for o in outputs)


def _break(root: Path, how: str) -> str:
    """Damage the first test image of a VOC folder; returns its id."""
    image_id = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    path = root / "JPEGImages" / f"{image_id}.jpg"
    if how == "header":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "pixels":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "missing":
        path.unlink()
    elif how == "annotation":
        (root / "Annotations" / f"{image_id}.xml").write_text("<annotation><object>")
    return image_id


@pytest.mark.parametrize("how", ["header", "pixels", "missing", "annotation"])
def test_eval_leaves_out_an_unreadable_image_and_evaluates_the_others(tiny_shapes, tmp_path, how, capsys):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    image_id = _break(root, how)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(REFERENCE), "--data", str(root), "--out", str(out), "--device", "cpu"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2 and list(metrics["errors"]) == [image_id]
    err = capsys.readouterr().err
    assert image_id in err and "Traceback" not in err


def test_eval_refuses_an_empty_split_and_a_split_without_objects(tiny_shapes, tmp_path, capsys):
    import re
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    (root / "ImageSets" / "Main" / "empty.txt").write_text("\n\n")
    assert main(["eval", "--model", str(REFERENCE), "--data", str(root), "--split", "empty",
                 "--out", str(tmp_path / "e1"), "--device", "cpu"]) == 1
    assert "empty.txt: the split lists no image ids" in capsys.readouterr().err
    for xml in (root / "Annotations").glob("*.xml"):
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    assert main(["eval", "--model", str(REFERENCE), "--data", str(root), "--out", str(tmp_path / "e2"),
                 "--device", "cpu"]) == 1
    assert "mAP is undefined" in capsys.readouterr().err


def test_errors_on_a_split_without_objects_says_the_breakdown_is_undefined(tiny_shapes, tmp_path, capsys):
    """Issue 25, class 7: `errors` ended in a matplotlib traceback ("Axis limits cannot be NaN or Inf")."""
    import re
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    for xml in (root / "Annotations").glob("*.xml"):
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    out = tmp_path / "errors.json"
    assert main(["errors", "--model", str(REFERENCE), "--data", str(root), "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "hold no (non-difficult) ground-truth object, so the mAP and its breakdown by error type are undefined" in err
    assert "Traceback" not in err and not out.exists()
    # With objects it runs (the check counts objects, it does not refuse every split).
    assert main(["errors", "--model", str(REFERENCE), "--data", str(tiny_shapes), "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 0 and out.is_file()
