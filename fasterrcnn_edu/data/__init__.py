"""The data layer: detection data sets, their checks, and the synthetic "shapes" generator.

    from fasterrcnn_edu.data import VOCDataset, RandomHorizontalFlip, collate_detection
    ds = VOCDataset("data/shapes", "train", transforms=RandomHorizontalFlip())
    image, target = ds[0]   # float32 (3, H, W) in [0, 1]; boxes (N, 4) x1, y1, x2, y2 pixels

Modules: `voc` (VOC layout and XML), `coco` (COCO JSON), `dataset` (shared record/sample
format), `images` (safe decoding), `augment` (horizontal flip), `check` (whole-folder
validation), `synthetic` (the generator), `stats` (statistics and figures), `commands` (CLI).
"""
from fasterrcnn_edu.data.augment import RandomHorizontalFlip, hflip_target
from fasterrcnn_edu.data.check import CheckReport, check_dataset
from fasterrcnn_edu.data.coco import CocoDataset, write_coco_json
from fasterrcnn_edu.data.dataset import DetectionDataset, ImageRecord, collate_detection
from fasterrcnn_edu.data.errors import DataError, DataWarning
from fasterrcnn_edu.data.images import load_image, read_image_tensor
from fasterrcnn_edu.data.stats import dataset_statistics, plot_samples, plot_statistics
from fasterrcnn_edu.data.synthetic import SHAPE_CLASSES, generate_dataset
from fasterrcnn_edu.data.voc import (VOC_CLASSES, VOCAnnotation, VOCDataset, VOCObject, parse_voc_xml,
                                     write_voc_xml)

__all__ = [
    "VOCDataset", "CocoDataset", "DetectionDataset", "ImageRecord", "VOC_CLASSES", "SHAPE_CLASSES",
    "RandomHorizontalFlip", "hflip_target", "collate_detection", "write_coco_json",
    "VOCAnnotation", "VOCObject", "parse_voc_xml", "write_voc_xml",
    "DataError", "DataWarning", "load_image", "read_image_tensor",
    "CheckReport", "check_dataset", "generate_dataset",
    "dataset_statistics", "plot_statistics", "plot_samples",
]
