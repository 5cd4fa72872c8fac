"""The annotated photographs (data/photos): scikit-image's pixels plus our VOC boxes."""
import pytest
import torch

pytest.importorskip("skimage")

from fasterrcnn_edu.data import DataError, parse_voc_xml  # noqa: E402
from fasterrcnn_edu.data import photos  # noqa: E402
from fasterrcnn_edu.data.voc import read_split  # noqa: E402


def test_ids_are_listed_and_each_has_an_annotation_and_a_source():
    ids = photos.photo_ids()
    assert ids == read_split(photos.PHOTOS, "test") == ["astronaut", "coffee", "rocket"]
    assert set(ids) == set(photos.SOURCES) == set(photos.CREDITS)
    listed = sorted(p.stem for p in (photos.PHOTOS / "Annotations").glob("*.xml"))
    assert listed == sorted(ids)


def test_every_annotation_parses_and_its_boxes_lie_inside_the_image():
    classes = photos.photo_classes()
    for photo_id in photos.photo_ids():
        annotation = parse_voc_xml(photos.PHOTOS / "Annotations" / f"{photo_id}.xml")
        image, target = photos.load_photo(photo_id)
        height, width = image.shape[-2:]
        assert (annotation.height, annotation.width) == (height, width)
        assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() <= image.max() <= 1
        boxes = target["boxes"]
        assert len(boxes) == len(annotation.objects) >= 3
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert [classes[k - 1] for k in target["labels"].tolist()] == target["names"]
        assert target["orig_size"].tolist() == [height, width] and target["image_id"] == photo_id


def test_pixels_are_scikit_images_own():
    import skimage.data

    image, _ = photos.load_photo("coffee")
    assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(skimage.data.coffee()))


def test_unknown_id_and_a_wrong_size_are_refused(tmp_path):
    with pytest.raises(KeyError, match="unknown photograph"):
        photos.load_photo("lena")
    for sub in ("Annotations", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("cup\n")
    (tmp_path / "ImageSets/Main/test.txt").write_text("coffee\n")
    (tmp_path / "Annotations/coffee.xml").write_text(
        "<annotation><size><width>60</width><height>40</height></size>"
        "<object><name>cup</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox>"
        "</object></annotation>")
    with pytest.raises(DataError, match="600x400"):
        photos.load_photo("coffee", tmp_path)
