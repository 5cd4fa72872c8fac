"""fasterrcnn_edu: a readable, paper-faithful Faster R-CNN (Ren, He, Girshick, Sun, NeurIPS 2015).

Modules, in the order the book teaches them: `boxes` (IoU, Eq. 2), `anchors` (§3.1.1),
`labeling` (§3.1.2), `losses` (Eq. 1), `nms` and `proposals` (§3.3), `roi_heads` (Fast R-CNN),
`backbones`, `rpn` and `model` (§3, shared features), `training` (§3.2, 4-step), `evaluation`
(§4), `viz` (figures), `data` (VOC/COCO loading and the synthetic shapes set).
"""
__version__ = "0.1.0"

from fasterrcnn_edu.config import Config, StageSchedule, get_config
from fasterrcnn_edu.model import FasterRCNN, UnsharedFasterRCNN
from fasterrcnn_edu.checkpoint import load_model, save_model
from fasterrcnn_edu.training import train

import sys as _sys

if "ipykernel" in _sys.modules:
    # In a Jupyter kernel, every figure a notebook displays records its smallest font size and dpi in
    # the image (`legibility`), so that the book's browser test can check it is legible as displayed.
    from fasterrcnn_edu import legibility as _legibility

    _legibility.install()

__all__ = ["Config", "StageSchedule", "get_config", "FasterRCNN", "UnsharedFasterRCNN",
           "load_model", "save_model", "train"]
