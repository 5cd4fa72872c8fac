"""Smoke-and-count tests for fasterrcnn_edu.viz: every plotting function runs on small inputs,
returns the documented object and draws the expected artists."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from fasterrcnn_edu import viz  # noqa: E402
from fasterrcnn_edu.evaluation import evaluate_voc  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rects(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


IMAGE = torch.rand(3, 48, 64)
BOXES = torch.tensor([[2.0, 3, 20, 30], [10, 10, 40, 40], [30, 5, 60, 45]])


def test_show_image_formats():
    ax = viz.show_image(IMAGE)
    assert isinstance(ax, Axes) and len(ax.images) == 1
    assert ax.images[0].get_array().shape == (48, 64, 3)
    hwc = (np.random.rand(48, 64, 3) * 255).astype(np.uint8)
    ax2 = viz.show_image(hwc)
    assert ax2.images[0].get_array().shape == (48, 64, 3)
    assert ax2.get_xlim() == (0, 64) and ax2.get_ylim() == (48, 0)


def test_draw_boxes_counts_and_labels():
    ax = viz.show_image(IMAGE)
    out = viz.draw_boxes(ax, BOXES, labels=torch.tensor([1, 2, 1]), scores=torch.tensor([0.9, 0.5, 0.3]),
                         class_names=["__background__", "cat", "dog"])
    assert out is ax and len(_rects(ax)) == 3
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["cat 0.90", "dog 0.50", "cat 0.30"]
    # Same class -> same colour; box geometry is exact.
    assert _rects(ax)[0].get_edgecolor() == _rects(ax)[2].get_edgecolor()
    assert _rects(ax)[1].get_xy() == (10.0, 10.0) and _rects(ax)[1].get_width() == 30.0
    ax2 = viz.draw_boxes(plt.subplots()[1], BOXES.numpy(), color="red", linestyle="--")
    assert len(_rects(ax2)) == 3 and len(ax2.texts) == 0


def test_plot_detections_threshold_and_targets():
    det = {"boxes": BOXES, "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.6, 0.2])}
    tgt = {"boxes": BOXES[:2], "labels": torch.tensor([1, 2])}
    ax = viz.plot_detections(IMAGE, det, ["cat", "dog"], score_threshold=0.5, targets=tgt, title="t")
    rects = _rects(ax)
    assert len(rects) == 2 + 2                                 # 2 gt (dashed) + 2 above threshold
    assert sum(r.get_linestyle() == "--" for r in rects) == 2
    assert ax.get_title() == "t"


def test_plot_detections_draws_difficult_objects_dotted_grey():
    det = {"boxes": BOXES[:0], "labels": torch.tensor([], dtype=torch.long), "scores": torch.tensor([])}
    tgt = {"boxes": BOXES, "labels": torch.tensor([1, 2, 1]), "difficult": torch.tensor([False, True, False])}
    rects = _rects(viz.plot_detections(IMAGE, det, ["cat", "dog"], targets=tgt))
    dotted = [r for r in rects if r.get_linestyle() == ":"]
    assert len(rects) == 3 and len(dotted) == 1
    assert dotted[0].get_xy() == tuple(BOXES[1, :2].tolist())          # the difficult one, not a missed object
    from matplotlib.colors import to_rgba
    assert dotted[0].get_edgecolor() == to_rgba(viz._IGNORED_COLOR)      # grey, as plot_detection_verdicts
    with pytest.raises(ValueError, match="2 flags for 3 boxes"):
        viz.plot_detections(IMAGE, det, targets={**tgt, "difficult": torch.tensor([False, True])})
    assert sum(r.get_linestyle() == "--" for r in rects) == 2


def test_plot_anchors_and_grid():
    from fasterrcnn_edu.anchors import base_anchors
    anchors = base_anchors() + torch.tensor([100.0, 80, 100, 80])
    ax = viz.plot_anchors(anchors, image_size=(200, 240), centers=torch.tensor([[108.0, 88.0]]),
                          color_by="scale")
    assert len(_rects(ax)) == 9
    assert len(ax.get_legend().get_texts()) == 3              # three scales
    colors = {r.get_edgecolor() for r in _rects(ax)}
    assert len(colors) == 3
    # a size keeps its colour whatever else is drawn: 128 px as the largest of 32/64/128 and as the
    # smallest of 128/256/512 (the default anchors above)
    side = lambda a: round(float(((a[2] - a[0]) * (a[3] - a[1])) ** 0.5))  # noqa: E731
    small = base_anchors(scales=(2, 4, 8)) + torch.tensor([100.0, 80, 100, 80])
    colors_128 = {r.get_edgecolor() for boxes in (small, anchors)
                  for r, a in zip(_rects(viz.plot_anchors(boxes, image_size=(200, 240))), boxes) if side(a) == 128}
    assert len(colors_128) == 1
    assert len({viz.scale_color(s) for s in (32, 64, 128, 256, 512)}) == 5
    ax = viz.plot_anchors(anchors, image_size=(200, 240), color_by="ratio", image=torch.rand(3, 200, 240))
    assert len(ax.get_legend().get_texts()) == 3
    # Anchors crossing the border stay visible.
    assert ax.get_xlim()[0] < 0 or ax.get_xlim()[1] > 240
    ax = viz.plot_anchor_grid((3, 4), 16, (48, 64))
    assert len(ax.collections[-1].get_offsets()) == 12
    np.testing.assert_allclose(viz.anchor_centers((3, 4), 16)[:2], [[8, 8], [24, 8]])


def test_plot_anchor_labels_counts():
    anchors = torch.tensor([[0.0, 0, 10, 10]] * 100)
    labels = torch.full((100,), -1)
    labels[:3] = 1
    labels[3:83] = 0                                           # 80 negatives, 50 drawn
    ax = viz.plot_anchor_labels(IMAGE, anchors, labels, BOXES[:2], max_negatives=50, seed=0)
    assert len(_rects(ax)) == 3 + 50 + 2


def test_plot_anchor_matches_draws_each_objects_best_anchor_with_its_iou():
    from fasterrcnn_edu.boxes import box_iou

    anchors = torch.tensor([[0.0, 0, 16, 16], [0, 0, 32, 32], [8, 8, 40, 40], [30, 4, 62, 44]])
    iou = box_iou(BOXES, anchors)                              # (G, A)
    ax = viz.plot_anchor_matches(IMAGE, anchors, iou, BOXES, names=["a", "b", "c"])
    assert len(_rects(ax)) == 3 + 3                            # ground truth + one best anchor each
    tags = sorted(t.get_text() for t in ax.texts)
    best = iou.max(dim=1).values
    assert tags == sorted(f"{n} {v:.2f}" for n, v in zip("abc", best.tolist()))
    labels = torch.tensor([1, 0, -1, 0])
    ax = viz.plot_anchor_matches(IMAGE, anchors, iou, BOXES, labels=labels, max_negatives=1)
    # labels as centres (outlines of hundreds of positives would merge): only GT and best anchors are boxes
    assert len(_rects(ax)) == 3 + 3
    negatives, positives = (c.get_offsets() for c in ax.collections[-2:])
    np.testing.assert_allclose(positives, [[8, 8]])            # the centre of anchor 0, the one positive
    assert len(negatives) == 1 and negatives[0].tolist() in ([16, 16], [46, 24])   # 1 of the 2 negatives
    # the best anchors take one colour that is neither the positive green nor the negative red
    best = {r.get_edgecolor() for r in _rects(ax) if r.get_linestyle() != "--"}
    assert best == {matplotlib.colors.to_rgba(viz.BEST_ANCHOR_COLOR)}


def test_plot_proposals_top_and_scores():
    props = torch.tensor([[0.0, 0, 10, 10]] * 80) + torch.arange(80.0)[:, None] % 30
    ax = viz.plot_proposals(IMAGE, props, scores=torch.rand(80), top=20, title="RPN")
    assert len(_rects(ax)) == 20 and ax.get_title() == "RPN"
    ax = viz.plot_proposals(IMAGE, props[:5])
    assert len(_rects(ax)) == 5


def test_plot_nms_steps():
    from fasterrcnn_edu.nms import nms
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [21, 20, 31, 30]])
    keep = nms(boxes, scores, 0.5)
    ax = viz.plot_nms_steps(boxes, scores, keep)
    rects = _rects(ax)
    assert len(rects) == 4
    assert sum(r.get_linestyle() == "--" for r in rects) == 4 - len(keep) == 2
    assert any(t.get_text().startswith("#1 s=0.90") for t in ax.texts)
    assert any(t.get_text() == "s=0.80" for t in ax.texts)              # a score, not an IoU
    ax = viz.plot_nms_steps(boxes, scores, keep, show_index=True)
    assert sorted(t.get_text() for t in ax.texts if t.get_text().startswith("box ")) == [f"box {i}" for i in range(4)]


def test_shared_colour_scale_for_proposal_panels():
    props = torch.tensor([[0.0, 0, 10, 10]] * 8) + torch.arange(8.0)[:, None]
    fig, axes = plt.subplots(1, 2)
    for ax, scores in zip(axes, (torch.linspace(0.2, 0.4, 8), torch.linspace(0.5, 0.9, 8))):
        viz.plot_proposals(IMAGE, props, scores, ax=ax, vmin=0.0, vmax=1.0, colorbar=False)
    assert len(fig.axes) == 2                                            # no colour bar per panel
    bar = viz.score_colorbar(fig, axes, 0.0, 1.0)
    assert len(fig.axes) == 3 and bar.mappable.norm.vmin == 0.0 and bar.mappable.norm.vmax == 1.0
    # the same score has the same colour in both panels
    low = [r.get_edgecolor() for r in _rects(axes[0])]
    assert low[0] != _rects(axes[1])[0].get_edgecolor()


def test_mark_cross_class_duplicates():
    detections = {"boxes": torch.tensor([[0.0, 0, 20, 20], [2, 0, 22, 20], [1, 1, 21, 21], [40, 40, 50, 50]]),
                  "labels": torch.tensor([1, 2, 1, 2]), "scores": torch.tensor([0.9, 0.6, 0.2, 0.8])}
    ax = viz.show_image(IMAGE)
    pairs = viz.mark_cross_class_duplicates(ax, detections, ["ring", "star"], score_threshold=0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)] and pairs[0][2] > 0.3
    assert "star 0.60 survives" in ax.texts[0].get_text()


def test_roi_pool_bins_match_torchvision():
    torch.manual_seed(0)
    fmap = torch.randn(14, 17)
    for roi, size in [((2.0, 3.0, 12.0, 10.0), (7, 7)), ((0.4, 0.6, 16.5, 13.5), (2, 2)),
                      ((5.0, 5.0, 6.0, 7.0), (7, 7)), ((1.2, 2.7, 9.9, 4.4), (3, 5))]:
        _, values, argmax = viz.roi_pool_bins(fmap, torch.tensor(roi), size)
        expected = torchvision.ops.roi_pool(fmap[None, None], [torch.tensor([roi])], size, 1.0)[0, 0]
        np.testing.assert_allclose(values, expected.numpy(), rtol=0, atol=1e-6)
        found = argmax[argmax[..., 0] >= 0]
        np.testing.assert_allclose(fmap.numpy()[found[:, 0], found[:, 1]], values[argmax[..., 0] >= 0])


def test_plot_roi_pool_patches():
    fmap = torch.rand(10, 12)
    ax = viz.plot_roi_pool(fmap, torch.tensor([1.0, 2.0, 9.0, 8.0]), output_size=(2, 2))
    assert len(_rects(ax)) == 1 + 4
    assert len(ax.collections[-1].get_offsets()) == 4             # one max marker per bin
    ax = viz.plot_roi_pool(fmap, torch.tensor([1.0, 2.0, 9.0, 8.0]))
    assert len(_rects(ax)) == 1 + 49


def test_plot_pr_curves():
    targets = [{"boxes": BOXES, "labels": torch.tensor([1, 2, 1])}]
    dets = [{"boxes": BOXES, "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.8, 0.7])}]
    result = evaluate_voc(dets, targets, num_classes=4, class_names=["cat", "dog", "cow"])
    ax = viz.plot_pr_curves(result)
    assert len(ax.lines) == 2                                  # cow has no gt: skipped
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat (100.0)", "dog (100.0)"]


def test_plot_recall_vs_iou():
    t = np.linspace(0.5, 1.0, 11)
    ax = viz.plot_recall_vs_iou({"RPN": (t, 1 - t), "SW": (t, (1 - t) / 2)}, title="300 proposals")
    assert len(ax.lines) == 2 and ax.get_xlim() == (0.5, 1.0) and ax.get_title() == "300 proposals"


def test_plot_loss_curves_records_and_dict():
    log = [{"step": i, "loss_rpn_cls": 1.0 / (i + 1), "loss_rpn_reg": 0.5, "lr": 1e-3, "stage": "rpn1"}
           for i in range(10)]
    log += [{"step": i, "loss_det_cls": 2.0 / i, "loss_det_reg": 0.3, "lr": 1e-3, "stage": "frcn2"}
            for i in range(10, 20)]
    ax = viz.plot_loss_curves(log)
    assert len(ax.lines) == 4 + 1                              # four losses + one stage boundary
    assert len(ax.lines[0].get_xdata()) == 10                  # rpn loss only where logged
    ax = viz.plot_loss_curves(log, keys=["loss_rpn_cls"], smooth=0.6)
    assert len(ax.lines) == 2 + 1                              # raw (faint) + smoothed + boundary
    ax = viz.plot_loss_curves({"loss": [3.0, 2.0, 1.5]})
    assert len(ax.lines) == 1 and list(ax.lines[0].get_xdata()) == [0, 1, 2]


def test_feature_map_and_image_grid():
    fig = viz.plot_feature_map(torch.rand(16, 6, 7), channels=8)
    assert isinstance(fig, Figure) and sum(len(a.images) for a in fig.axes) == 8
    fig, axes = viz.image_grid([IMAGE, IMAGE, IMAGE.numpy().transpose(1, 2, 0)], titles=["a", "b", "c"], ncols=2)
    assert isinstance(fig, Figure) and len(axes) == 4
    assert [a.get_title() for a in axes[:3]] == ["a", "b", "c"] and not axes[3].axison


def test_network_shapes_and_diagrams_come_from_the_model():
    from fasterrcnn_edu import Config, FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(Config.book())
    shapes = viz.network_shapes(model, (256, 320))
    assert shapes["features"] == (128, 16, 20)
    assert shapes["rpn_cls"] == (18, 16, 20) and shapes["rpn_reg"] == (36, 16, 20)
    assert shapes["anchors"] == 16 * 20 * 9
    proposals = shapes["proposals"][0]
    assert 0 < proposals <= 300 and shapes["pooled"] == (proposals, 128, 7, 7)
    assert shapes["scores"] == (proposals, 7) and shapes["deltas"] == (proposals, 24)
    assert model.training                              # the model's mode is restored

    ax = viz.plot_network(model, (256, 320), shapes=shapes)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "128×16×20" in texts and "18×16×20" in texts and f"{proposals}×128×7×7" in texts
    # the detections node says D (the count varies per image), not the probe image's count
    assert "D×4 boxes" in texts and f"{shapes['detections'][0]}×4 boxes" not in texts

    ax = viz.plot_rpn_head(model)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "2k = 18 channels" in texts and "4k = 36 channels" in texts and "128 → 128 ch." in texts


@pytest.mark.parametrize("n, ncols, shape", [(4, 2, (2, 2)), (3, 2, (2, 2)), (1, 2, (1, 1)), (5, 3, (2, 3))])
def test_panels_fit_the_column(n, ncols, shape):
    fig, axes = viz.panels(n, ncols=ncols, panel=(2.6, 2.0))
    assert len(axes) == n and all(isinstance(ax, Axes) for ax in axes)
    assert len(fig.axes) == n                                   # unused cells of the last row are removed
    assert tuple(fig.get_size_inches()) == pytest.approx((2.6 * shape[1], 2.0 * shape[0]))
    fig, _ = viz.panels(4)                                      # the default: two 3.9-inch panels per row
    assert fig.get_size_inches()[0] == pytest.approx(7.8)


def test_detection_verdict_tags_do_not_overlap_and_stay_inside():
    """Crowded false positives (one tag each) on a small image: every tag inside the axes, none over another."""
    from fasterrcnn_edu.viz import panels, plot_detection_verdicts, verdict_legend
    boxes = torch.tensor([[10, 10, 60, 60], [12, 12, 62, 62], [14, 10, 64, 58], [10, 14, 58, 64],
                          [250, 0, 320, 40], [100, 200, 150, 256]], dtype=torch.float32)
    detections = {"boxes": boxes, "scores": torch.tensor([0.9, 0.85, 0.8, 0.75, 0.7, 0.65]),
                  "labels": torch.tensor([1, 2, 1, 2, 1, 2])}
    kinds = ["localisation", "classification", "both", "background", "duplicate", "both"]
    targets = {"boxes": torch.tensor([[0, 0, 50, 50], [200, 100, 260, 160]], dtype=torch.float32),
               "difficult": torch.tensor([False, True])}
    fig, (ax,) = panels(1)
    verdict_legend(fig)
    plot_detection_verdicts(torch.rand(3, 256, 320), detections, kinds, targets, torch.tensor([True, False]),
                            ["a", "b"], ax=ax)
    fig.canvas.draw()
    renderer, frame = fig.canvas.get_renderer(), ax.get_window_extent()
    tags = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(tags) == 6
    for i, a in enumerate(tags):
        assert frame.x0 - 0.5 <= a.x0 and a.x1 <= frame.x1 + 0.5 and frame.y0 - 0.5 <= a.y0 and a.y1 <= frame.y1 + 0.5
        assert not any(a.overlaps(b) for b in tags[i + 1:]), ax.texts[i].get_text()
    plt.close(fig)
    with pytest.raises(ValueError, match="2 verdicts for 6 detections"):
        plot_detection_verdicts(torch.rand(3, 256, 320), detections, kinds[:2], targets, torch.tensor([True, False]))


def test_recall_vs_proposals_tags_one_point_per_distinct_box_count():
    """Two requests that leave the same boxes (a cap) are one point with both N in its tag."""
    ax = viz.plot_recall_vs_proposals({"RPN": [300, 677, 677], "windows": [300, 1000, 2000]},
                                      {"RPN": [0.54, 0.55, 0.55], "windows": [0.31, 0.34, 0.35]}, [300, 1000, 2000])
    assert sorted(t.get_text() for t in ax.texts) == ["N = 1000", "N = 1000, 2000", "N = 2000", "N = 300", "N = 300"]
