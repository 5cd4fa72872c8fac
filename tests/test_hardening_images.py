"""Issue 25, class 1: images are read only from regular files, and every decoder error is one image's error.

A PNG whose text chunk inflates past Pillow's limit (or is simply huge) makes Pillow raise
`ValueError`; a FIFO given as an image would make `open()` wait for a writer forever; a COCO
`file_name` with a NUL byte made `open()` raise a bare `ValueError`. Each is now a `DataError`
naming the file, listed per image by `detect`, `eval` and `check-data` while the others go on.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from fasterrcnn_edu.cli import main
from fasterrcnn_edu.data import CocoDataset, DataError, VOCDataset, check_dataset, load_image
from fasterrcnn_edu.data.images import image_size
from fasterrcnn_edu.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference_model.pt"
BIG = 100 * 2**20          # the probe's 100 MB


@contextmanager
def deadline(seconds: int = 10):
    """Fail (instead of hanging the suite) if the block takes longer than `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s (a FIFO opened for reading?)")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text_bomb_png(path: Path, how: str, size: tuple[int, int] = (64, 48)) -> Path:
    """A valid PNG plus one text chunk: "ztxt" inflates to 100 MB (100 kB on disk), "text" is 100 MB raw,
    "ztxt-late" is the zTXt chunk after the pixels (Pillow reads it only when decoding)."""
    import io
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buffer, "PNG")
    png = buffer.getvalue()
    if how == "text":
        chunk = _chunk(b"tEXt", b"comment\x00" + b"a" * BIG)
    else:
        chunk = _chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"a" * BIG, 9))
    at = png.index(b"IEND") - 4 if how == "ztxt-late" else 8 + 25      # before IEND, or after IHDR
    path.write_bytes(png[:at] + chunk + png[at:])
    return path


@pytest.mark.parametrize("how", ["ztxt", "text", "ztxt-late"])
def test_a_png_text_bomb_is_a_data_error_naming_the_file(tmp_path, how):
    path = text_bomb_png(tmp_path / f"{how}.png", how)
    with pytest.raises(DataError, match="MAX_TEXT") as info:
        load_image(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("make, kind", [(os.mkfifo, "a FIFO"), (os.mkdir, "a folder")])
def test_only_regular_files_are_opened(tmp_path, make, kind):
    path = tmp_path / "image.jpg"
    make(path)
    for read in (image_size, load_image):
        with deadline(), pytest.raises(DataError, match=f"image.jpg: is {kind}"):
            read(path)
    with deadline(), pytest.raises(DataError, match="is a character device"):
        load_image("/dev/zero")


def test_detect_lists_a_text_bomb_and_a_fifo_and_detects_the_others(tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (20, 200, 90)).save(good)
    bombs = [text_bomb_png(tmp_path / f"{how}.png", how) for how in ("ztxt", "text", "ztxt-late")]
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    out = tmp_path / "det"
    with deadline(120):
        assert main(["detect", *map(str, bombs), str(fifo), str(good), "--model", str(REFERENCE),
                     "--out", str(out), "--device", "cpu", "--threads", "1"]) == 1
    report = json.loads((out / "detections.json").read_text())
    assert list(report["images"]) == [str(good)]
    assert list(report["errors"]) == [*map(str, bombs), str(fifo)]
    assert "FIFO" in report["errors"][str(fifo)]
    assert "Traceback" not in capsys.readouterr().err


def test_coco_file_name_with_a_nul_byte_or_naming_a_fifo(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "x.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    path = tmp_path / "ann.json"
    for file_name, problem in (("x\x00.jpg", r"file_name 'x\\x00.jpg' contains a NUL byte"),
                               ("pipe.jpg", r"pipe.jpg: is a FIFO")):
        path.write_text(json.dumps({"images": [{"id": 1, "file_name": file_name, "width": 64, "height": 48}],
                                    "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
        with deadline(), pytest.raises(DataError, match=problem):
            CocoDataset(tmp_path, path)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, seed=0, num_trainval=4, num_test=3, image_size=(160, 128))
    return root


def _replace_first_test_image(root: Path, how: str) -> str:
    """Swap the first test image for a text bomb ("ztxt", "text", "ztxt-late") or a FIFO; returns its id."""
    image_id = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    path = root / "JPEGImages" / f"{image_id}.jpg"
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    else:
        text_bomb_png(path, how, size=(160, 128))     # a PNG named .jpg: Pillow goes by the content
    return image_id


@pytest.mark.parametrize("how", ["ztxt", "text", "ztxt-late", "fifo"])
def test_check_data_lists_the_image_and_checks_the_others(tiny_shapes, tmp_path, how):
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    image_id = _replace_first_test_image(root, how)
    with deadline(60):
        report = check_dataset(root)
    assert len(report.errors) == 1 and f"{image_id}.jpg" in report.errors[0], report.errors
    assert report.images == 6


@pytest.mark.parametrize("how", ["text", "ztxt-late", "fifo"])
def test_eval_leaves_the_image_out_and_evaluates_the_others(tiny_shapes, tmp_path, how, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    image_id = _replace_first_test_image(root, how)
    out = tmp_path / "eval"
    with deadline(120):
        assert main(["eval", "--model", str(REFERENCE), "--data", str(root), "--out", str(out),
                     "--device", "cpu", "--threads", "1"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2 and list(metrics["errors"]) == [image_id]
    assert "Traceback" not in capsys.readouterr().err
    # The training loader refuses the same image with the same kind of error, naming it.
    with deadline(60), pytest.raises(DataError, match=f"{image_id}.jpg"):
        dataset = VOCDataset(root, "test")
        dataset[dataset.ids.index(image_id)]
