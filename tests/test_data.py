"""Tests of the data layer on good input: generator, VOC and COCO reading, flipping, CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn_edu import cli
from fasterrcnn_edu.data import (SHAPE_CLASSES, VOC_CLASSES, CocoDataset, RandomHorizontalFlip, VOCAnnotation,
                                 VOCDataset, VOCObject, check_dataset, collate_detection, dataset_statistics,
                                 generate_dataset, parse_voc_xml, write_coco_json, write_voc_xml)
from fasterrcnn_edu.data.synthetic import mask_box, place, rasterize, render_image, unit_shape


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """A tiny generated set: 8 trainval (6 train + 2 val) and 4 test images of 160 x 128."""
    root = tmp_path_factory.mktemp("shapes")
    stats = generate_dataset(root, seed=0, num_trainval=8, num_test=4, image_size=(160, 128))
    return root, stats


# --- the generator --------------------------------------------------------------------------

def test_generator_writes_voc_layout(shapes_root):
    root, stats = shapes_root
    split = lambda name: (root / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
    assert split("trainval") == [f"{i:06d}" for i in range(1, 9)]
    assert split("test") == [f"{i:06d}" for i in range(9, 13)]
    assert len(split("train")) == 6 and len(split("val")) == 2
    assert sorted(split("train") + split("val")) == split("trainval")
    assert sorted(p.name for p in (root / "JPEGImages").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 13)]
    assert (root / "classes.txt").read_text().split() == list(SHAPE_CLASSES)
    assert stats["splits"] == {"train": 6, "val": 2, "trainval": 8, "test": 4}
    with Image.open(root / "JPEGImages" / "000001.jpg") as img:
        assert (img.size, img.mode, img.format) == ((160, 128), "RGB", "JPEG")
    xml = (root / "Annotations" / "000001.xml").read_text()
    for tag in ("<folder>", "<filename>000001.jpg</filename>", "<width>160</width>", "<height>128</height>",
                "<depth>3</depth>", "<segmented>0</segmented>"):
        assert tag in xml


def test_generator_is_deterministic(tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_dataset(tmp_path / name, seed=seed, num_trainval=3, num_test=1, image_size=(96, 80))
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 4 + 4 + 4 + 1  # 4 images, 4 XMLs, 4 split files, classes.txt
    assert a == b
    assert a["JPEGImages/000001.jpg"] != c["JPEGImages/000001.jpg"]


def test_generator_refuses_to_overwrite(tmp_path):
    generate_dataset(tmp_path, num_trainval=1, num_test=0, image_size=(96, 80))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="Annotations"):
        generate_dataset(tmp_path, num_trainval=1, num_test=0, image_size=(96, 80))
    generate_dataset(tmp_path, num_trainval=2, num_test=0, image_size=(96, 80), overwrite=True)
    assert len(list((tmp_path / "JPEGImages").iterdir())) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not ours: kept


def test_statistics_match_what_was_written(shapes_root):
    root, stats = shapes_root
    datasets = [VOCDataset(root, "trainval"), VOCDataset(root, "test")]
    objects = [(ds.classes[k - 1], d, t) for ds in datasets for i in range(len(ds))
               for k, d, t in zip(ds.get_target(i)["labels"].tolist(), ds.get_target(i)["difficult"].tolist(),
                                  ds.get_target(i)["truncated"].tolist())]
    assert len(objects) == stats["objects"] > 0
    assert sum(d for _, d, _ in objects) == stats["difficult"]
    assert sum(t for _, _, t in objects) == stats["truncated"]
    for name in SHAPE_CLASSES:
        assert sum(n == name for n, _, _ in objects) == stats["objects_per_class"][name]


def test_rasterize_and_tight_box():
    # A 20 x 30 axis-aligned rectangle centred on (40.5, 30.5): PIL fills the pixels whose
    # centres lie inside (edges included), i.e. columns 31..50 and rows 16..45.
    polygons = place(unit_shape("rectangle", np.random.default_rng(0)), (40.5, 30.5), (19, 29), 0.0)
    mask, full_area = rasterize(polygons, 100, 80)
    assert mask_box(mask) == (31, 16, 51, 46)
    assert mask.sum() == full_area == 20 * 30
    # Half outside the left border: clipped box, part of the area lost (=> truncated).
    polygons = place(unit_shape("rectangle", np.random.default_rng(0)), (0.5, 30.5), (19, 29), 0.0)
    mask, full_area = rasterize(polygons, 100, 80)
    assert mask_box(mask) == (0, 16, 11, 46)
    assert mask.sum() == 11 * 30 and full_area == 20 * 30


def test_ring_has_a_hole():
    polygons = place(unit_shape("ring", np.random.default_rng(0)), (50, 50), (60, 60), 0.0)
    mask, _ = rasterize(polygons, 100, 100)
    assert not mask[50, 50] and mask[50, 22] and mask[50, 78]
    assert mask_box(mask)[0] <= 21 and mask_box(mask)[2] >= 79


def test_rendered_objects_are_annotated_consistently():
    counts = {"objects": 0, "truncated": 0, "difficult": 0, "touching": 0}
    for i in range(20):
        pixels, objects = render_image(np.random.default_rng([1, i]), 160, 128)
        assert pixels.shape == (128, 160, 3) and pixels.dtype == np.uint8
        assert len(objects) <= 6
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 128
            assert obj.name in SHAPE_CLASSES
            if min(x2 - x1, y2 - y1) < 10:
                assert obj.difficult  # tiny => difficult
            counts["objects"] += 1
            counts["truncated"] += obj.truncated
            counts["difficult"] += obj.difficult
            counts["touching"] += obj.truncated and (x1 == 0 or y1 == 0 or x2 == 160 or y2 == 128)
    assert counts["objects"] > 40
    assert 0 < counts["truncated"] < counts["objects"] / 2
    assert 0 < counts["difficult"] < counts["objects"] / 2
    # A cut-off object's visible box reaches the border unless a later object hides that part.
    assert counts["touching"] >= 0.8 * counts["truncated"]


def test_colour_does_not_depend_on_class():
    colours = {name: [] for name in SHAPE_CLASSES}
    for i in range(30):
        pixels, objects = render_image(np.random.default_rng([2, i]), 160, 128)
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            if not obj.difficult and obj.name in ("rectangle", "ellipse"):  # solid in the middle
                colours[obj.name].append(pixels[(y1 + y2) // 2, (x1 + x2) // 2].astype(float))
    for name in ("rectangle", "ellipse"):
        spread = np.std(colours[name], axis=0)
        assert len(colours[name]) >= 5 and (spread > 40).all(), (name, spread)


# --- VOC reading and writing ----------------------------------------------------------------

def test_voc_xml_coordinates_are_one_based_on_disk(tmp_path):
    ann = VOCAnnotation(filename="a.jpg", width=50, height=40, objects=[
        VOCObject("dog", (0, 5, 10, 20), difficult=True), VOCObject("cat", (2.5, 3, 49, 40), truncated=True)])
    write_voc_xml(ann, tmp_path / "a.xml")
    xml = (tmp_path / "a.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<ymin>6</ymin>" in xml and "<xmax>10</xmax>" in xml
    assert "<xmin>3.5</xmin>" in xml and "<difficult>1</difficult>" in xml
    back = parse_voc_xml(tmp_path / "a.xml")
    assert [o.box for o in back.objects] == [(0, 5, 10, 20), (2.5, 3, 49, 40)]
    assert [(o.name, o.difficult, o.truncated) for o in back.objects] == [("dog", True, False), ("cat", False, True)]
    assert (back.width, back.height, back.filename) == (50, 40, "a.jpg")


REAL_VOC_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>{id}.jpg</filename>
	<source>
		<database>The VOC2007 Database</database>
		<annotation>PASCAL VOC2007</annotation>
		<image>flickr</image>
	</source>
	<owner><flickrid>someone</flickrid><name>?</name></owner>
	<size>
		<width>{w}</width>
		<height>{h}</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
	{objects}
</annotation>
"""
REAL_VOC_OBJECT = """<object>
		<name>{name}</name>
		<pose>Left</pose>
		<truncated>{t}</truncated>
		<difficult>{d}</difficult>
		<bndbox>
			<xmin>{box[0]}</xmin>
			<ymin>{box[1]}</ymin>
			<xmax>{box[2]}</xmax>
			<ymax>{box[3]}</ymax>
		</bndbox>{extra}
	</object>"""


def make_real_voc(root):
    """A hand-made miniature of VOCdevkit/VOC2007: 20-class names, 1-based boxes, no classes.txt."""
    images = {  # id: ((width, height), [(name, (xmin, ymin, xmax, ymax), truncated, difficult)])
        "000005": ((500, 375), [("chair", (263, 211, 324, 339), 0, 0), ("chair", (5, 244, 67, 374), 1, 1),
                                ("pottedplant", (150, 100, 200, 170), 0, 0)]),
        "000007": ((500, 333), [("person", (141, 50, 500, 330), 1, 0)]),
        "000009": ((353, 500), []),
    }
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for image_id, ((w, h), objects) in images.items():
        body = "\n\t".join(REAL_VOC_OBJECT.format(
            name=n, box=b, t=t, d=d,
            # VOC person layout: a <part> with its own <bndbox>, which must not be read as the object's
            extra="\n\t\t<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
                  "<ymax>2</ymax></bndbox></part>" if n == "person" else "")
            for n, b, t, d in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(REAL_VOC_XML.format(id=image_id, w=w, h=h, objects=body))
        Image.new("RGB", (w, h), (90, 120, 150)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n000009\n")
    (root / "ImageSets" / "Main" / "chair_trainval.txt").write_text("000005  1\n000007 -1\n")  # per-class list
    return root


def test_reads_real_voc2007_layout(tmp_path):
    root = make_real_voc(tmp_path / "VOCdevkit" / "VOC2007")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean set: no repair warning
        ds = VOCDataset(root, "trainval")
    assert ds.classes == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert ds.ids == ["000005", "000007", "000009"] and len(ds) == 3 and ds.root == root
    image, target = ds[0]
    assert image.shape == (3, 375, 500) and image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 0], torch.tensor([90, 120, 150]) / 255, atol=3 / 255)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[262, 210, 324, 339], [4, 243, 67, 374], [149, 99, 200, 170]]
    chair, plant = VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("pottedplant") + 1
    assert target["labels"].tolist() == [chair, chair, plant] == [9, 9, 16]
    assert target["difficult"].tolist() == [False, True, False]
    assert target["truncated"].tolist() == [False, True, False]
    assert target["image_id"] == "000005" and target["orig_size"].tolist() == [375, 500]
    _, target = ds[1]
    assert target["boxes"].tolist() == [[140, 49, 500, 330]]  # not the <part>'s box
    assert target["labels"].tolist() == [15]
    _, target = ds[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert ds.report["images_without_objects"] == 1 and ds.report["boxes_clipped"] == 0
    assert check_dataset(root).ok

    easy = VOCDataset(root, "trainval", keep_difficult=False)
    assert easy.get_target(0)["boxes"].tolist() == [[262, 210, 324, 339], [149, 99, 200, 170]]
    assert easy.get_target(1)["boxes"].tolist() == [[140, 49, 500, 330]]  # truncated, not difficult


def test_home_folder_in_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_real_voc(tmp_path / "VOCdevkit" / "VOC2007")
    ds = VOCDataset("~/VOCdevkit/VOC2007", "trainval")
    assert ds.root == tmp_path / "VOCdevkit" / "VOC2007" and len(ds) == 3
    assert check_dataset("~/VOCdevkit/VOC2007").images == 3


def test_explicit_class_list(tmp_path):
    root = make_real_voc(tmp_path)
    ds = VOCDataset(root, "trainval", classes=["person", "chair", "pottedplant"])
    assert ds.classes == ("person", "chair", "pottedplant")
    assert ds.get_target(0)["labels"].tolist() == [2, 2, 3] and ds.get_target(1)["labels"].tolist() == [1]


def test_generated_set_reads_back(shapes_root):
    root, _ = shapes_root
    ds = VOCDataset(root, "train")
    assert ds.classes == SHAPE_CLASSES and len(ds) == 6
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 128, 160) and 0 <= image.min() and image.max() <= 1
        boxes = target["boxes"]
        assert boxes.shape[1] == 4 and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 128).all()
        assert ((target["labels"] >= 1) & (target["labels"] <= 6)).all()
        assert target["difficult"].dtype == torch.bool and target["truncated"].dtype == torch.bool
    assert sum(ds.report[k] for k in ("boxes_clipped", "boxes_dropped_degenerate", "size_mismatch")) == 0


# --- flipping and batching ------------------------------------------------------------------

def test_horizontal_flip():
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    target = {"boxes": torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.5, 0.0, 5.0, 2.0]]), "labels": torch.tensor([1, 2])}
    flipped, new = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1)) and flipped[0, 0, 0] == image[0, 0, 4]
    assert new["boxes"].tolist() == [[3.0, 1.0, 5.0, 3.0], [0.0, 0.0, 3.5, 2.0]]
    assert target["boxes"].tolist() == [[0.0, 1.0, 2.0, 3.0], [1.5, 0.0, 5.0, 2.0]]  # input untouched
    assert torch.equal(new["labels"], target["labels"])
    twice, back = RandomHorizontalFlip(p=1.0)(flipped, new)
    assert torch.equal(twice, image) and torch.equal(back["boxes"], target["boxes"])
    same, kept = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and kept is target
    empty = {"boxes": torch.zeros(0, 4)}
    assert RandomHorizontalFlip(p=1.0)(image, empty)[1]["boxes"].shape == (0, 4)


def test_flip_is_reproducible_with_a_generator():
    image, target = torch.zeros(3, 2, 4), {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]])}

    def decisions(seed):
        flip = RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(seed))
        return [flip(image, target)[1]["boxes"][0, 0].item() for _ in range(32)]

    assert decisions(0) == decisions(0)
    assert 4 < decisions(0).count(3.0) < 28  # both outcomes happen


def test_dataset_transforms_and_collate(tmp_path):
    root = make_real_voc(tmp_path)
    ds = VOCDataset(root, "trainval", transforms=RandomHorizontalFlip(p=1.0))
    image, target = ds[0]
    assert target["boxes"][0].tolist() == [500 - 324, 210, 500 - 262, 339]
    assert ds.get_target(0)["boxes"][0].tolist() == [262, 210, 324, 339]  # cached record unchanged
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert [tuple(im.shape) for im in images] == [(3, 375, 500), (3, 333, 500), (3, 500, 353)]
    assert [t["image_id"] for t in targets] == ["000005", "000007", "000009"]


# --- COCO -----------------------------------------------------------------------------------

def test_coco_round_trip(shapes_root, tmp_path):
    root, _ = shapes_root
    voc = VOCDataset(root, "trainval")
    write_coco_json(voc, tmp_path / "trainval.json")
    coco = CocoDataset(root / "JPEGImages", tmp_path / "trainval.json")
    assert coco.classes == voc.classes and len(coco) == len(voc) and coco.ids == list(range(1, 9))
    for i in range(len(voc)):
        a, b = voc.get_target(i), coco.get_target(i)
        for key in ("boxes", "labels", "difficult", "truncated", "orig_size"):
            assert torch.equal(a[key], b[key]), key
    image_a, _ = voc[0]
    image_b, target_b = coco[0]
    assert torch.equal(image_a, image_b) and target_b["image_id"] == "1"


def test_coco_categories_and_boxes(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "x.jpg")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "sub" / "y.png")
    data = {
        "images": [{"id": 42, "file_name": "x.jpg", "width": 64, "height": 48},
                   {"id": 7, "file_name": "sub/y.png", "width": 32, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 90, "bbox": [10, 5, 20.5, 30], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path, tmp_path / "ann.json")
    assert ds.classes == ("car", "toothbrush") and ds.category_ids == [3, 90] and ds.ids == [42, 7]
    target = ds.get_target(0)
    assert target["boxes"].tolist() == [[10, 5, 30.5, 35], [0, 0, 4, 4]]
    assert target["labels"].tolist() == [2, 1] and target["difficult"].tolist() == [False, True]
    assert target["image_id"] == "42" and ds.get_target(1)["boxes"].shape == (0, 4)
    assert ds[1][0].shape == (3, 32, 32)


# --- statistics, check and CLI --------------------------------------------------------------

def test_dataset_statistics(tmp_path):
    s = dataset_statistics(VOCDataset(make_real_voc(tmp_path), "trainval"))
    assert (s["images"], s["objects"], s["difficult"], s["truncated"]) == (3, 4, 1, 2)
    assert s["objects_per_class"]["chair"] == 2 and s["objects_per_class"]["dog"] == 0
    assert s["boxes_per_image"] == {0: 1, 1: 1, 3: 1}
    assert s["aspect"][0] == pytest.approx(62 / 129)
    assert s["scale"][0] == pytest.approx(np.sqrt(62 * 129) / 375)


def test_plots(shapes_root):
    import matplotlib

    matplotlib.use("Agg")
    from fasterrcnn_edu.data.stats import plot_samples, plot_statistics

    ds = VOCDataset(shapes_root[0], "train")
    assert len(plot_statistics(ds).axes) == 4
    assert len(plot_samples(ds, indices=[0, 1, 2], ncols=2).axes) == 4


def test_check_dataset_on_a_clean_set(shapes_root):
    root, stats = shapes_root
    report = check_dataset(root)
    assert report.ok and report.errors == []
    assert report.splits == {"test": 4, "train": 6, "trainval": 8, "val": 2}
    assert report.images == 12 and report.objects == stats["objects"]
    assert dict(report.objects_per_class) == {k: v for k, v in stats["objects_per_class"].items() if v}
    assert "errors: none" in report.summary()
    assert check_dataset(root, splits=["test"]).images == 4


def test_cli_make_data_and_check_data(tmp_path, capsys):
    root = tmp_path / "tiny"
    args = ["make-data", str(root), "--num-trainval", "3", "--num-test", "1", "--image-size", "96", "80"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 4 images of 96x80" in out and "train 2, val 1, trainval 3, test 1" in out and "MiB" in out
    assert cli.main(args) == 2  # refuses to overwrite
    assert "already holds" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite", "--seed", "1"]) == 0
    assert cli.main(["check-data", str(root), "--splits", "train", "test"]) == 0
    out = capsys.readouterr().out
    assert "splits: train (2), test (1)" in out and "errors: none" in out
