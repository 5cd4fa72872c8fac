"""The detector's replaceable pieces: one seam per piece, where the detector looks it up.

Every call site of a piece the book teaches reads `piece(NAME, default)` at call time, with the
package's own function as the default, so replacing a piece changes the real detector in
training and inference without a copy of it:

    keep = piece("nms", nms)(boxes, scores, threshold, max_kept=300)

Nothing is replaced unless someone calls `replace` (the book's `fasterrcnn_edu.exercises.use`
does, and puts everything back afterwards). An override must keep the call site's contract
(arguments, shapes, return type); `fasterrcnn_edu.exercises` adapts the reader's simpler,
one-image functions to it. This module imports nothing from the package, so any core module
can import it.

The pieces and the call sites that read them:

=====================  ==========================================================================
``iou``                `labeling.label_anchors`, `nms.nms_steps` (so `nms_readable`), `roi_heads.sample_rois`
``base_anchors``       `anchors.AnchorGenerator.__call__`
``grid_anchors``       `anchors.AnchorGenerator.__call__`
``label_anchors``      `rpn.RegionProposalNetwork.losses`
``sample_anchors``     `rpn.RegionProposalNetwork.losses` (the 256-anchor mini-batch)
``encode``             `rpn.RegionProposalNetwork.losses`, `roi_heads.sample_rois`
``decode``             `proposals.generate_proposals`, `proposals.proposal_steps`, `roi_heads.RoIHeads`
``rpn_loss``           `rpn.RegionProposalNetwork.losses`
``nms``                `proposals.generate_proposals`, `proposals.proposal_steps`, `nms.batched_nms`
``proposals``          `rpn.RegionProposalNetwork.forward`
``roi_pool``           `roi_heads.RoIHeads.classify`
``sample_rois``        `roi_heads.RoIHeads.losses`
``average_precision``  `evaluation.evaluate_voc`
=====================  ==========================================================================
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

NAMES = ("iou", "base_anchors", "grid_anchors", "label_anchors", "sample_anchors", "encode", "decode", "rpn_loss",
         "nms", "proposals", "roi_pool", "sample_rois", "average_precision")

_overrides: dict[str, Callable] = {}


def piece(name: str, default: Callable) -> Callable:
    """The implementation of piece `name` in force now: an override, or `default` (the package's own)."""
    return _overrides.get(name, default)


def overrides() -> dict[str, Callable]:
    """A copy of the pieces replaced now, by name (empty: the package's own everywhere)."""
    return dict(_overrides)


@contextmanager
def replace(**functions: Callable) -> Iterator[None]:
    """Use `functions` (NAME=callable, names from `NAMES`) in place of the package's pieces inside the block.

    Nested blocks stack; on leaving (also by an exception) the overrides in force before return.
    """
    unknown = sorted(set(functions) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown piece(s) {unknown}; the pieces are {list(NAMES)}")
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"piece {name!r}: expected a function, got {type(fn).__name__}")
    before = dict(_overrides)
    _overrides.update(functions)
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(before)


@contextmanager
def package_only() -> Iterator[None]:
    """No override inside the block: every piece is the package's own (the exercise checkers'
    references run this way, so a reader's piece can never be its own reference)."""
    before = dict(_overrides)
    _overrides.clear()
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(before)
