"""Bad data must be refused with a `DataError` naming the file, or repaired and counted; never
lost silently and never a raw traceback from a parser."""
from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from fasterrcnn_edu import cli
from fasterrcnn_edu.data import CocoDataset, DataError, DataWarning, VOCDataset, check_dataset, load_image
from fasterrcnn_edu.data.images import image_size


def voc_xml(objects=(), size=(64, 48), filename="x.jpg") -> str:
    """A VOC annotation; objects: (name, (xmin, ymin, xmax, ymax)) with VOC's 1-based values."""
    body = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for name, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>")


def make_voc(root, annotations: dict, image_sizes: dict | None = None, split=None, classes=("dog", "cat")):
    """A VOC folder: annotations {id: xml text}; images {id: (w, h)} (default 64 x 48 for each id)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    sizes = image_sizes if image_sizes is not None else {image_id: (64, 48) for image_id in annotations}
    for image_id, (w, h) in sizes.items():
        Image.new("RGB", (w, h), (200, 100, 50)).save(root / "JPEGImages" / f"{image_id}.jpg")
    ids = list(annotations) if split is None else split
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


GOOD = voc_xml([("dog", (1, 1, 10, 10))])


# --- annotation files -----------------------------------------------------------------------

def test_malformed_xml_names_file_and_position(tmp_path):
    make_voc(tmp_path, {"a": GOOD, "b": "<annotation>\n  <object><name>dog</name>\n</annotation>"})
    with pytest.raises(DataError) as info:
        VOCDataset(tmp_path)
    message = str(info.value)
    assert "Annotations/b.xml" in message and "malformed XML" in message and "line 3, column" in message
    assert info.value.path.endswith("b.xml")


def test_missing_annotation_file(tmp_path):
    make_voc(tmp_path, {"a": GOOD}, split=["a", "ghost"])
    with pytest.raises(DataError, match=r"Annotations/ghost\.xml.*not found.*'ghost'.*train\.txt"):
        VOCDataset(tmp_path)


def test_missing_image(tmp_path):
    make_voc(tmp_path, {"a": GOOD, "b": GOOD}, image_sizes={"a": (64, 48)})
    with pytest.raises(DataError, match=r"JPEGImages/b\.jpg: image file not found for annotation .*b\.xml"):
        VOCDataset(tmp_path)


def test_missing_split_file(tmp_path):
    make_voc(tmp_path, {"a": GOOD})
    with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt: split file not found; splits present: \['train'\]"):
        VOCDataset(tmp_path, "test")


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        VOCDataset(tmp_path / "nowhere")


def test_bad_split_file_lines(tmp_path):
    make_voc(tmp_path, {"a": GOOD}, split=["a", "../../etc/passwd"])
    with pytest.raises(DataError, match=r"train\.txt \(line 2\): expected one image id per line"):
        VOCDataset(tmp_path)
    make_voc(tmp_path, {"a": GOOD}, split=["a", "a"])
    with pytest.raises(DataError, match=r"train\.txt \(line 2\): image id 'a' is listed twice"):
        VOCDataset(tmp_path)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><object><name>&lol4;</name></object></annotation>"""


def test_entity_expansion_is_refused(tmp_path):
    make_voc(tmp_path, {"a": BILLION_LAUGHS})
    with pytest.raises(DataError, match=r"a\.xml: refused: the XML declares entities"):
        VOCDataset(tmp_path)


def test_external_entity_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           "<annotation><object><name>&xxe;</name></object></annotation>")
    make_voc(tmp_path / "voc", {"a": xxe})
    with pytest.raises(DataError, match=r"a\.xml: refused") as info:
        VOCDataset(tmp_path / "voc")
    assert "TOP-SECRET" not in str(info.value)
    report = check_dataset(tmp_path / "voc")
    assert not report.ok and "TOP-SECRET" not in report.summary()


def test_unknown_class_lists_known_classes(tmp_path):
    make_voc(tmp_path, {"a": voc_xml([("dog", (1, 1, 5, 5)), ("zebra", (1, 1, 5, 5))])})
    with pytest.raises(DataError, match=r"a\.xml \(object 2 of 2\): unknown class 'zebra'; known classes: dog, cat"):
        VOCDataset(tmp_path)


@pytest.mark.parametrize("bndbox, problem", [
    ("<xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>", "missing <ymax>"),
    ("<xmin>1</xmin><ymin>one</ymin><xmax>9</xmax><ymax>9</ymax>", "<ymin> is not a number: 'one'"),
    ("<xmin>nan</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>", "<xmin> is not finite: 'nan'"),
])
def test_bad_bndbox_names_file_and_object(tmp_path, bndbox, problem):
    bad = f"<annotation><object><name>cat</name><bndbox>{bndbox}</bndbox></object></annotation>"
    xml = GOOD.replace("</annotation>", bad.replace("<annotation>", "").replace("</annotation>", "") + "</annotation>")
    make_voc(tmp_path, {"a": xml})
    with pytest.raises(DataError) as info:
        VOCDataset(tmp_path)
    assert str(info.value) == f"{tmp_path / 'Annotations' / 'a.xml'} (object 2 of 2): {problem}"


def test_missing_bndbox_element(tmp_path):
    make_voc(tmp_path, {"a": "<annotation><object><name>dog</name></object></annotation>"})
    with pytest.raises(DataError, match=r"a\.xml \(object 1 of 1\): 'dog' has no <bndbox>"):
        VOCDataset(tmp_path)


def test_bad_classes_file(tmp_path):
    make_voc(tmp_path, {"a": GOOD}, classes=("dog", "cat", "dog"))
    with pytest.raises(DataError, match=r"classes\.txt: class names listed more than once: \['dog'\]"):
        VOCDataset(tmp_path)


# --- repaired, counted, warned about once ---------------------------------------------------

def test_boxes_outside_are_clipped_and_degenerate_dropped(tmp_path):
    make_voc(tmp_path, {
        "a": voc_xml([("dog", (-5, 1, 10, 10)), ("cat", (50, 40, 80, 60)), ("dog", (20, 20, 10, 30))]),
        "b": voc_xml([("cat", (70, 1, 90, 10)), ("cat", (5, 5, 5, 9))]),  # fully outside; one pixel wide
    })
    with pytest.warns(DataWarning) as record:
        ds = VOCDataset(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "boxes_clipped=2" in message and "boxes_dropped_degenerate=2" in message and "a.xml" in message
    assert ds.report["boxes_clipped"] == 2 and ds.report["boxes_dropped_degenerate"] == 2
    assert ds.get_target(0)["boxes"].tolist() == [[0, 0, 10, 10], [49, 39, 64, 48]]
    assert ds.get_target(0)["labels"].tolist() == [1, 2]
    assert ds.get_target(1)["boxes"].tolist() == [[4, 4, 5, 9]]  # xmin = xmax: one pixel, kept


def test_image_without_objects_loads_quietly(tmp_path):
    make_voc(tmp_path, {"a": voc_xml([]), "b": GOOD})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = VOCDataset(tmp_path)
    image, target = ds[0]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["difficult"].shape == (0,) and target["boxes"].dtype.is_floating_point
    assert ds.report["images_without_objects"] == 1


def test_size_mismatch_uses_real_size(tmp_path):
    make_voc(tmp_path, {"a": voc_xml([("dog", (11, 11, 150, 40))], size=(500, 400))}, image_sizes={"a": (100, 80)})
    with pytest.warns(DataWarning, match="size_mismatch=1"):
        ds = VOCDataset(tmp_path)
    assert ds.report["size_mismatch"] == 1 and ds.report["boxes_clipped"] == 1
    image, target = ds[0]
    assert image.shape == (3, 80, 100) and target["orig_size"].tolist() == [80, 100]
    assert target["boxes"].tolist() == [[10, 10, 100, 40]]


# --- image files ----------------------------------------------------------------------------

def test_truncated_jpeg(tmp_path):
    make_voc(tmp_path, {"a": GOOD}, image_sizes={})
    noisy = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    path = tmp_path / "JPEGImages" / "a.jpg"
    Image.fromarray(noisy).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = VOCDataset(tmp_path)  # the header is intact, so construction works ...
    with pytest.raises(DataError, match=r"a\.jpg: cannot decode image, file truncated or corrupt"):
        ds[0]  # ... and decoding fails, naming the file
    report = check_dataset(tmp_path)
    assert report.images == 0 and len(report.errors) == 1 and "a.jpg" in report.errors[0]


def test_corrupt_image_file(tmp_path):
    make_voc(tmp_path, {"a": GOOD}, image_sizes={})
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG" * 10)
    with pytest.raises(DataError, match=r"a\.jpg: not an image file Pillow can read"):
        VOCDataset(tmp_path)


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def test_image_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.putpixel((2, 0), (0, 0, 255, 128))  # half transparent blue over white
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    cases = {
        "grey.png": (Image.new("L", (4, 2), 77), (77, 77, 77)),
        "la.png": (Image.new("LA", (4, 2), (77, 0)), (255, 255, 255)),
        "rgba.png": (rgba, (255, 0, 0)),
        "palette.png": (palette, (10, 200, 30)),
        "cmyk.jpg": (Image.new("CMYK", (4, 2), (0, 255, 255, 0)), None),
        "bw.png": (Image.new("1", (4, 2), 1), (255, 255, 255)),
        "i16.png": (Image.fromarray(np.full((2, 4), 65535, dtype=np.uint16)), (255, 255, 255)),
        "i32.tif": (Image.fromarray(np.full((2, 4), 257 * 100, dtype=np.int32)), (100, 100, 100)),
    }
    for name, (img, first_pixel) in cases.items():
        loaded = load_image(_save(img, tmp_path / name))
        assert loaded.mode == "RGB" and loaded.size == (4, 2), name
        if first_pixel is not None:
            assert loaded.getpixel((0, 0)) == first_pixel, name
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")  # really 16-bit on disk
    red = load_image(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    rgba_loaded = load_image(tmp_path / "rgba.png")
    assert rgba_loaded.getpixel((1, 0)) == (255, 255, 255)
    assert rgba_loaded.getpixel((2, 0)) == pytest.approx((127, 127, 255), abs=1)


def test_float_image_is_refused(tmp_path):
    path = _save(Image.fromarray(np.zeros((2, 4), dtype=np.float32)), tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif: floating-point image"):
        load_image(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    big = _save(Image.new("L", (50, 50)), tmp_path / "big.png")       # 2500 px > 2 x 1000: Pillow's error
    large = _save(Image.new("L", (40, 40)), tmp_path / "large.png")   # 1600 px > 1000: Pillow's warning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for path in (big, large):
        with pytest.raises(DataError, match=rf"{path.name}: refused, too many pixels"):
            load_image(path)
        with pytest.raises(DataError, match=path.name):
            image_size(path)
    assert load_image(_save(Image.new("L", (30, 30)), tmp_path / "ok.png")).size == (30, 30)


def test_missing_image_file_in_loader(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")


def test_data_error_survives_pickling():
    error = pickle.loads(pickle.dumps(DataError("a/b.xml", "broken", "object 2 of 3")))
    assert str(error) == "a/b.xml (object 2 of 3): broken" and error.where == "object 2 of 3"


# --- whole-folder check ---------------------------------------------------------------------

def test_check_dataset_collects_every_error(tmp_path, capsys):
    make_voc(tmp_path, {
        "good": GOOD,
        "clipped": voc_xml([("dog", (1, 1, 100, 10))]),
        "broken": "<annotation><object>",
        "zebra": voc_xml([("zebra", (1, 1, 5, 5))]),
        "noimage": GOOD,
    }, image_sizes={"good": (64, 48), "clipped": (64, 48), "broken": (64, 48), "zebra": (64, 48)})
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("good\nmissing\n")
    report = check_dataset(tmp_path)
    assert report.splits == {"train": 5, "val": 2}
    assert report.images == 2 and report.objects == 2 and report.fixed == 1
    assert len(report.errors) == 4
    for name in ("broken.xml", "zebra.xml", "noimage.jpg", "missing.xml"):
        assert sum(name in e for e in report.errors) == 1, name
    assert "errors: 4 file(s) refused" in report.summary() and "clipped.xml" in report.summary()
    assert cli.main(["check-data", str(tmp_path)]) == 1
    assert "zebra.xml" in capsys.readouterr().out
    assert cli.main(["check-data", str(tmp_path), "--splits", "nosuch"]) == 1


# --- COCO JSON ------------------------------------------------------------------------------

def _coco(tmp_path, data) -> tuple:
    Image.new("RGB", (64, 48)).save(tmp_path / "x.jpg")
    path = tmp_path / "ann.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return tmp_path, path


def _coco_data(**changes) -> dict:
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
            "categories": [{"id": 1, "name": "dog"}]}
    data.update(changes)
    return data


@pytest.mark.parametrize("data, pattern", [
    ('{"images": [\n  {"id": 1,}\n]}', r"ann\.json \(line 2, column 12\): malformed JSON"),
    (_coco_data(categories=[{"id": 2, "name": "cat"}]), r"\(annotations\[0\] \(id 5\)\): unknown category_id 1; known categories: 2=cat"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, "a", 3, 4]}]), r"\(annotations\[0\]\): bbox has a non-numeric"),
    (_coco_data(annotations=[{"image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]}]), r"image_id 9 is not in 'images'"),
    (_coco_data(images=[{"id": 1, "file_name": "../x.jpg", "width": 64, "height": 48}]), r"points outside the image folder"),
    (_coco_data(images=[{"id": 1, "width": 64, "height": 48}]), r"\(images\[0\]\): missing key\(s\) \['file_name'\]"),
    ([1, 2], r"expected a JSON object at the top"),
])
def test_bad_coco_json(tmp_path, data, pattern):
    image_dir, path = _coco(tmp_path, data)
    with pytest.raises(DataError, match=pattern) as info:
        CocoDataset(image_dir, path)
    assert str(info.value).startswith(str(path))


def test_coco_degenerate_box_dropped(tmp_path):
    data = _coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 0, 4], "iscrowd": 0},
                                   {"image_id": 1, "category_id": 1, "bbox": [60, 2, 10, 4], "iscrowd": 0}])
    with pytest.warns(DataWarning, match="boxes_clipped=1.*boxes_dropped_degenerate=1"):
        ds = CocoDataset(*_coco(tmp_path, data))
    assert ds.get_target(0)["boxes"].tolist() == [[60, 2, 64, 6]]
