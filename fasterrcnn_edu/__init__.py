"""fasterrcnn_edu: a readable, paper-faithful Faster R-CNN (Ren et al., NeurIPS 2015)."""
__version__ = "0.1.0"
