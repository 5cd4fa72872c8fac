"""The book's "write it yourself" exercises: a checker for every piece, and the reader's pieces in the detector.

`check(name, fn)` runs the reader's function `fn` on hand-made edge cases (ties, empty inputs,
degenerate and cross-boundary boxes) and seeded random ones, and compares it with the package's
own implementation. The result says, in words, which case differs first, with its input, what was
expected and what `fn` returned, and a hint for the usual mistake. The pieces and what `fn` is:

- ``"iou"``: ``fn(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)``;
- ``"base_anchors"``: ``fn(base_size, ratios, scales) -> (k, 4)``, ratio-major;
- ``"grid_anchors"``: ``fn(base (k, 4), feature_size (H, W), stride) -> (H·W·k, 4)``;
- ``"label_anchors"``: ``fn(anchors (A, 4), gt_boxes (G, 4), fg_iou, bg_iou) -> (A,)`` labels 1 / 0 / -1;
- ``"sample_anchors"``: the 256-anchor mini-batch, ``fn(labels (A,), batch_size, positive_fraction, generator)
  -> (sampled_positive (A,), sampled_negative (A,))`` bool masks;
- ``"encode"`` / ``"decode"``: paper Eq. 2, ``fn(anchors (N, 4), boxes or deltas (N, 4)) -> (N, 4)``;
- ``"rpn_loss"``: paper Eq. 1, ``fn(logits (A, 2), deltas (A, 4), target_deltas (A, 4), labels (A,) 1 / 0 / -1,
  num_locations, lam, beta) -> (loss_cls, loss_reg)`` with N_cls the sampled anchors, N_reg = num_locations;
- ``"nms"``: ``fn(boxes (N, 4), scores (N,), iou_threshold) -> (K,)`` kept indices, best first;
- ``"proposals"``: the proposal layer, ``fn(anchors, scores (A,), deltas, image_size, pre_nms_top_n,
  post_nms_top_n, nms_thresh, min_size) -> (boxes (P, 4), scores (P,))``;
- ``"roi_max_pool"``: ``fn(features (C, H, W), roi (4,), output_size, spatial_scale) -> (C, P, P)``; ``"roi_pool"``:
  the same for a batch, ``fn(features (B, C, H, W), rois (R, 5), output_size, spatial_scale) -> (R, C, P, P)``;
- ``"sample_rois"``: ``fn(proposals (P, 4), gt_boxes (G, 4), gt_labels (G,), batch_size, positive_fraction, fg_iou,
  bg_iou_low, bg_iou_high, generator) -> (rois (S, 4), labels (S,))``;
- ``"average_precision"``: ``fn(recall (D,), precision (D,), use_07_metric) -> float`` (11-point and area).

Each call of `fn` gets copies of its inputs (a function that changes them is told so) and a
timeout (`guard.py`: a SIGALRM timer in the main thread, where a notebook kernel runs its cells; a
watchdog thread elsewhere). The references are bound and the package's functions recorded when
this package is imported; a function that patches the package is caught, and the patch undone.
A function that raises `NotImplementedError` (the book's stubs) gets a reminder of what to write.

`use(nms=my_nms, ...)` puts the reader's functions into the real detector (`use.py`).
The answers are not here: they are in the book.
"""
from fasterrcnn_edu.exercises.core import Case, CheckResult
from fasterrcnn_edu.exercises.runner import EXERCISES, cases, check
from fasterrcnn_edu.exercises.use import use

__all__ = ["Case", "CheckResult", "EXERCISES", "cases", "check", "use"]
