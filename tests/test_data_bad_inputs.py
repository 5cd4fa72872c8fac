"""Bad data must be refused with a `DataError` naming the file, or repaired and counted; never
lost silently and never a raw traceback from a parser."""
from __future__ import annotations

import json
import os
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
        # voc_xml's default <filename> stands for "this id's image"
        xml = xml.replace("<filename>x.jpg</filename>", f"<filename>{image_id}.jpg</filename>")
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


# --- text files and names (issue 13) -------------------------------------------------------

SPLIT = "ImageSets/Main/train.txt"


@pytest.mark.parametrize("encoded", [
    "a\nb\n".encode("utf-8-sig"),                 # UTF-8 with a byte-order mark: stripped
    "a\r\nb\r\n".encode("utf-8"),                # Windows line ends
    "a\nb\n".encode("utf-16"),                   # UTF-16 with its BOM: decoded
    "a\nb\n".encode("utf-32"),
])
def test_split_file_encodings_that_are_read(tmp_path, encoded):
    make_voc(tmp_path, {"a": GOOD, "b": GOOD})
    (tmp_path / SPLIT).write_bytes(encoded)
    assert VOCDataset(tmp_path).ids == ["a", "b"]


@pytest.mark.parametrize("encoded, problem", [
    ("a\ncaf\u00e9\n".encode("latin-1"), r"train\.txt \(line 2\): split file is not UTF-8 text \(byte 0xe9"),
    ("a\nb\n".encode("utf-16-le"), r"train\.txt: split file contains NUL bytes \(UTF-16 without a byte-order mark"),
])
def test_split_file_encodings_that_are_named(tmp_path, encoded, problem):
    make_voc(tmp_path, {"a": GOOD, "b": GOOD})
    (tmp_path / SPLIT).write_bytes(encoded)
    with pytest.raises(DataError, match=problem):
        VOCDataset(tmp_path)
    assert len(check_dataset(tmp_path).errors) == 1


@pytest.mark.parametrize("encoded, classes", [
    ("dog\ncat\n".encode("utf-8-sig"), ("dog", "cat")),
    ("dog\r\ncat\r\n".encode("utf-16"), ("dog", "cat")),
])
def test_classes_file_with_a_bom(tmp_path, encoded, classes):
    make_voc(tmp_path, {"a": GOOD})
    (tmp_path / "classes.txt").write_bytes(encoded)
    assert VOCDataset(tmp_path).classes == classes


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.mkdir(), "class list is a folder"),
    (lambda p: p.symlink_to(p.parent / "nowhere.txt"), "class list is a broken link"),
    (lambda p: os.mkfifo(p), "class list is not a regular file"),
    (lambda p: p.write_bytes("dog\nc\u00e4t\n".encode("latin-1")), "class list is not UTF-8"),
    (lambda p: p.write_text("\n\n"), "the class list is empty"),
])
def test_classes_file_that_is_not_a_usable_text_file(tmp_path, make, problem):
    if make.__code__.co_names == ("mkfifo",) and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    make_voc(tmp_path, {"a": GOOD}, classes=None)
    make(tmp_path / "classes.txt")
    with pytest.raises(DataError, match=rf"classes\.txt( \(line \d\))?: {problem}"):
        VOCDataset(tmp_path)
    report = check_dataset(tmp_path)
    assert len(report.errors) == 1 and "classes.txt" in report.errors[0]


@pytest.mark.parametrize("split, problem", [
    (["a", "x" * 252], r"\(line 2\): image id is 252 bytes long, more than 251"),
    (["a", "\u00e9" * 126], r"\(line 2\): image id is 252 bytes long"),
    (["a", "b\u200bc"], r"\(line 2\): image id .* contains the invisible or control character U\+200B \(ZERO WIDTH"),
    (["a", "b\u202ec"], r"U\+202E"),
    (["caf\u00e9", "cafe\u0301"], r"\(lines 1 and 2\): image ids .* look identical .*U\+0301 COMBINING ACUTE"),
    (["dog1", "d\u043eg1"], r"\(lines 1 and 2\): image ids 'dog1' and 'd.g1' look identical but differ in .*U\+043E"),
    (["x1", "\uff58\uff11"], r"look identical"),                        # fullwidth letters
    ([], r"the split lists no image ids"),
    (["", "  "], r"the split lists no image ids"),
])
def test_split_ids_that_are_refused(tmp_path, split, problem):
    make_voc(tmp_path, {"a": GOOD}, split=split)
    with pytest.raises(DataError, match=r"train\.txt.*" + problem):
        VOCDataset(tmp_path)
    assert len(check_dataset(tmp_path).errors) == 1


@pytest.mark.parametrize("classes, problem", [
    (("dog", "d\u043eg"), r"class names 'dog' and 'd.g' look identical but differ in .*U\+043E CYRILLIC"),
    (("caf\u00e9", "cafe\u0301"), r"look identical"),
    (("dog", "c\u200dat"), r"contains the invisible or control character U\+200D"),
    (("dog", "x" * 300), r"class name is 300 bytes long"),
])
def test_class_names_that_are_refused(tmp_path, classes, problem):
    make_voc(tmp_path, {"a": GOOD}, classes=classes)
    with pytest.raises(DataError, match=r"classes\.txt: .*" + problem):
        VOCDataset(tmp_path)


def test_an_object_named_with_a_look_alike_says_so(tmp_path):
    make_voc(tmp_path, {"a": voc_xml([("d\u043eg", (1, 1, 5, 5))])})
    with pytest.raises(DataError, match=r"unknown class 'd.g' \(it looks like 'dog' but differs in .*U\+043E"):
        VOCDataset(tmp_path)


@pytest.mark.parametrize("filename, ok", [("a.jpg", True), ("a.JPG", True), ("a.png", True), ("a", True),
                                          ("C:\\\\images\\\\a.jpg", True), ("b.jpg", False), ("aa.jpg", False)])
def test_annotation_filename_must_match_its_id(tmp_path, filename, ok):
    make_voc(tmp_path, {"a": GOOD.replace("<filename>x.jpg</filename>", f"<filename>{filename}</filename>")})
    if ok:
        assert len(VOCDataset(tmp_path)) == 1
    else:
        with pytest.raises(DataError, match=rf"a\.xml: <filename> '{filename}' does not match the annotation's id 'a'"):
            VOCDataset(tmp_path)


@pytest.mark.parametrize("xml, problem", [
    (voc_xml([("dog", (1, 1, 1e300, 10))]), r"<xmax> is 1e\+300, beyond any image"),
    (voc_xml([("dog", (1, 1, 10, 10))]).replace("<difficult>0</difficult>", "<difficult>2</difficult>"),
     r"<difficult> must be 0 or 1, got '2'"),
    (voc_xml([("dog", (1, 1, 10, 10))]).replace("<difficult>0</difficult>", "<difficult>0.5</difficult>"),
     r"<difficult> must be 0 or 1"),
    (voc_xml([("dog", (1, 1, 10, 10))], size=(10**7, 48)), r"<width> is 10000000, beyond any image"),
])
def test_annotation_numbers_out_of_any_range(tmp_path, xml, problem):
    make_voc(tmp_path, {"a": xml})
    with pytest.raises(DataError, match=r"a\.xml.*" + problem):
        VOCDataset(tmp_path)


def test_split_name_cannot_be_a_path(tmp_path):
    make_voc(tmp_path, {"a": GOOD})
    with pytest.raises(DataError, match="split name '../../x' is not a file name"):
        VOCDataset(tmp_path, "../../x")


def test_check_data_collects_the_new_problems_instead_of_stopping(tmp_path, capsys):
    make_voc(tmp_path, {"good": GOOD,
                        "badname": GOOD.replace("<filename>x.jpg</filename>", "<filename>other.jpg</filename>"),
                        "flag": GOOD.replace("<difficult>0</difficult>", "<difficult>7</difficult>")})
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_bytes("good\ncaf\u00e9\n".encode("latin-1"))
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("")
    report = check_dataset(tmp_path)
    assert report.images == 1 and len(report.errors) == 4, report.errors
    for expected in ("badname.xml", "flag.xml", "val.txt", "test.txt"):
        assert sum(expected in e for e in report.errors) == 1, expected
    assert cli.main(["check-data", str(tmp_path)]) == 1


def test_eval_of_a_split_without_ids_is_an_error_not_nan(tmp_path, capsys):
    make_voc(tmp_path, {"a": GOOD}, split=[])
    assert cli.main(["eval", "--data", str(tmp_path), "--split", "train", "--out", str(tmp_path / "e")]) == 1
    assert "the split lists no image ids" in capsys.readouterr().err and not (tmp_path / "e" / "metrics.json").exists()


# --- COCO JSON, hostile (issue 13) ------------------------------------------------------------

@pytest.mark.parametrize("data, pattern", [
    (_coco_data(images=[{"id": [1], "file_name": "x.jpg", "width": 64, "height": 48}]),
     r"\(images\[0\]\): 'id' must be an integer or a non-empty string, got \[1\]"),
    (_coco_data(images=[{"id": 1, "file_name": "x.jpg", "width": "64", "height": 48}]), r"'width' must be a whole number"),
    (_coco_data(images=[{"id": 1, "file_name": "x.jpg", "width": 64, "height": 1e300}]), r"'height' must be a whole number"),
    (_coco_data(images=[{"id": 1, "file_name": 7, "width": 64, "height": 48}]), r"'file_name' must be a non-empty string"),
    (_coco_data(images=[{"id": 1, "file_name": "y" * 300 + ".jpg", "width": 64, "height": 48}]), r"more than 255 bytes"),
    (_coco_data(images=[]), r"'images' is empty"),
    (_coco_data(categories=[{"id": "1", "name": "dog"}]), r"\(categories\[0\]\): 'id' must be an integer"),
    (_coco_data(categories=[{"id": True, "name": "dog"}]), r"'id' must be an integer, got True"),
    (_coco_data(categories=[{"id": 1, "name": 5}]), r"'name' must be a non-empty string"),
    (_coco_data(categories=[{"id": 1, "name": "dog"}, {"id": 2, "name": "d\u043eg"}]), r"look identical"),
    (_coco_data(annotations=[{"image_id": {"a": 1}, "category_id": 1, "bbox": [1, 2, 3, 4]}]), r"'image_id' must be"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 2}]),
     r"\(annotations\[0\]\): 'iscrowd' must be 0 or 1, got 2"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": "yes"}]), r"'iscrowd'"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 1e300, 4]}]), r"beyond any image"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10**400, 4]}]), r"beyond any image"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, True, 4]}]), r"non-numeric"),
    (_coco_data(annotations=[{"image_id": 1, "category_id": 1}]), r"missing key\(s\) \['bbox'\]"),
    ('{"images": ' + "[" * 100000 + "]" * 100000 + "}", r"nested too deeply"),
    ('{"images": [], "n": ' + "9" * 5000 + "}", r"malformed JSON"),
    ("\ufeff" + json.dumps(_coco_data(images=[])), r"'images' is empty"),     # a BOM is skipped
])
def test_hostile_coco_json(tmp_path, data, pattern):
    image_dir, path = _coco(tmp_path, data)
    with pytest.raises(DataError, match=pattern) as info:
        CocoDataset(image_dir, path)
    assert str(info.value).startswith(str(path))


def test_coco_annotation_file_that_is_a_folder(tmp_path):
    (tmp_path / "ann.json").mkdir()
    with pytest.raises(DataError, match=r"ann\.json: annotation file is not a regular file"):
        CocoDataset(tmp_path, tmp_path / "ann.json")
