"""Tests for fasterrcnn_edu.lab.ablations on tiny inputs: which weights train per stage, the test-time
proposal variants (paper Table 2), the one-stage dense-window detector (Table 10), recall vs IoU
and the anchor sweep (Table 8)."""
import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from fasterrcnn_edu import Config, FasterRCNN, StageSchedule
from fasterrcnn_edu.lab.ablations import (ANCHOR_SETTINGS, ProposalVariant, anchor_experiment, anchor_variant,
                                      detect_variants, finetune_steps_3_4,
                                      evaluate_variants, file_sha256, plot_training_stages, proposals_for_image, read_log,
                                      recall_experiment, same_weights, stage_table, variant_proposals)
from fasterrcnn_edu.boxes import clip_boxes

H, W = 64, 80


def tiny_cfg(**overrides) -> Config:
    one = StageSchedule(1, 0.001, 1)
    base = dict(num_classes=3, min_size=H, max_size=W, rpn_channels=16, head_hidden=16, roi_batch_size=16,
                rpn_batch_size=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50,
                rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30, warmup_iterations=0,
                images_per_batch=1, stage_rpn1=one, stage_det1=one, stage_rpn2=one, stage_det2=one, joint=one)
    base.update(overrides)
    return Config.book(**base)


def tiny_data(n: int = 3, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.rand(3, H, W, generator=g) * 0.2
        image[:, 10:40, 20:60] += 0.7                         # one bright object
        target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0], [2.0, 44.0, 22.0, 62.0]]),
                  "labels": torch.tensor([1, 2]), "difficult": torch.tensor([False, i == 0])}
        items.append((image.clamp(0, 1), target))
    return items


def _batch():
    images, targets = zip(*tiny_data(1))
    return list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]


# ---------------------------------------------------------------------------------------------
# stage_table
# ---------------------------------------------------------------------------------------------
def test_stage_table_alternating_follows_the_four_steps():
    images, targets = _batch()
    rows = stage_table("alternating", tiny_cfg(), images, targets)
    assert [r["stage"] for r in rows] == ["1-rpn", "2-detector", "3-rpn-frozen", "4-detector-frozen"]

    def state(row, key):
        p = row["parts"][key]
        return "train" if p["used"] and p["trainable"] else ("frozen" if p["used"] else "unused")

    expected = {   # (rpn.backbone, rpn.rpn, shared.backbone, shared.rpn, shared.roi_heads)
        "1-rpn": ("train", "train", "unused", "unused", "unused"),
        "2-detector": ("frozen", "frozen", "train", "unused", "train"),
        "3-rpn-frozen": ("unused", "unused", "frozen", "train", "unused"),
        "4-detector-frozen": ("unused", "unused", "frozen", "frozen", "train"),
    }
    keys = ("rpn.backbone", "rpn.rpn", "shared.backbone", "shared.rpn", "shared.roi_heads")
    for row in rows:
        assert tuple(state(row, k) for k in keys) == expected[row["stage"]], row["stage"]
    # Trainable counts are whole modules here (the book preset freezes no backbone layer).
    step1 = rows[0]["parts"]
    assert step1["rpn.backbone"]["trainable"] == step1["rpn.backbone"]["total"] > 0
    assert rows[3]["parts"]["shared.backbone"]["frozen"] == rows[3]["parts"]["shared.backbone"]["total"]
    assert rows[0]["losses"] == ["loss_objectness", "loss_rpn_box_reg"]


def test_stage_table_joint_trains_everything_at_once():
    images, targets = _batch()
    rows = stage_table("joint", tiny_cfg(), images, targets)
    assert len(rows) == 1
    parts = rows[0]["parts"]
    assert set(parts) == {"shared.backbone", "shared.rpn", "shared.roi_heads"}
    assert all(p["used"] and p["trainable"] == p["total"] for p in parts.values())
    assert len(rows[0]["losses"]) == 4


def test_plot_training_stages_draws_one_cell_per_stage_and_used_part():
    images, targets = _batch()
    rows = stage_table("alternating", tiny_cfg(), images, targets)
    ax = plot_training_stages(rows)
    # 5 parts are used in some stage (rpn.roi_heads never is) -> 4 x 5 cells.
    assert len(ax.patches) == 4 * 5
    assert len(ax.get_xticklabels()) == 5
    matplotlib.pyplot.close(ax.figure)


def test_same_weights_and_read_log(tmp_path):
    a = {"w": torch.ones(2), "b": torch.zeros(1)}
    assert same_weights(a, {k: v.clone() for k, v in a.items()})
    assert not same_weights(a, {"w": torch.ones(2), "b": torch.full((1,), 1e-8)})
    assert not same_weights(a, {"w": torch.ones(2)})
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"stage": "1-rpn", "step": 0}) + "\n\n" + json.dumps({"step": 1}) + "\n")
    assert read_log(path) == [{"stage": "1-rpn", "step": 0}, {"step": 1}]
    (tmp_path / "abc").write_bytes(b"abc")
    assert file_sha256(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------------------------------------
# Test-time variants
# ---------------------------------------------------------------------------------------------
def _rpn_outputs(model, images):
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    objectness, deltas = model.rpn.head(features)
    anchors = model.rpn.anchor_generator(features.shape[-2:], features.device)
    return batch, anchors, objectness, deltas


@torch.no_grad()
def test_variant_proposals_shapes_and_meaning():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = FasterRCNN(cfg).eval()
    images = [image for image, _ in tiny_data(2)]
    batch, anchors, objectness, deltas = _rpn_outputs(model, images)
    args = (cfg, anchors, objectness, deltas, batch.image_sizes, batch.scales)
    clipped = clip_boxes(anchors, batch.image_sizes[0])
    big = ((clipped[:, 2] - clipped[:, 0]) >= cfg.rpn_min_size) & ((clipped[:, 3] - clipped[:, 1]) >= cfg.rpn_min_size)

    dense = variant_proposals(ProposalVariant("d", "dense"), *args)
    # every anchor, in anchor order (decoding zero deltas may move a coordinate by a rounding error)
    assert len(dense) == 2 and all(d.shape == clipped[big].shape and torch.allclose(d, clipped[big], atol=1e-4)
                                   for d in dense)

    no_nms = variant_proposals(ProposalVariant("n", "no_nms", 20), *args)
    assert all(len(p) == 20 for p in no_nms)
    rpn = variant_proposals(ProposalVariant("r", "rpn", 20), *args)
    assert all(len(p) <= 20 for p in rpn)
    assert torch.equal(rpn[0][0], no_nms[0][0])          # the best box is the same with or without NMS

    no_reg = variant_proposals(ProposalVariant("g", "no_reg", 10), *args)
    for p in no_reg:                                       # every box is a (clipped) anchor
        assert all(bool(((clipped - box).abs() < 1e-4).all(dim=1).any()) for box in p)

    # the variant's own pre-NMS cap, not the config's: NMS over the top 20 keeps fewer than 20,
    # NMS over every anchor fills all 20 (the paper's "RPN N" is N of a 6000-box pre-NMS list)
    capped = variant_proposals(ProposalVariant("r", "rpn", 20, pre_nms_top_n=20), *args)
    wide = variant_proposals(ProposalVariant("r", "rpn", 20, pre_nms_top_n=len(anchors)), *args)
    assert sum(len(p) for p in wide) > sum(len(p) for p in capped)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        ProposalVariant("bad", "rpn", 300, pre_nms_top_n=100)

    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = variant_proposals(ProposalVariant("c", "no_cls", 15), *args, generator=g1)
    b = variant_proposals(ProposalVariant("c", "no_cls", 15), *args, generator=g2)
    assert all(len(p) == 15 for p in a) and all(torch.equal(x, y) for x, y in zip(a, b))

    with pytest.raises(ValueError):
        ProposalVariant("x", "nonsense")


def test_detect_variants_default_rpn_equals_the_model_itself():
    torch.manual_seed(0)
    cfg = tiny_cfg(score_thresh=0.0)
    model = FasterRCNN(cfg).eval()
    data = tiny_data(3)
    variants = [ProposalVariant("RPN default", "rpn", cfg.rpn_post_nms_top_n_test),
                ProposalVariant("dense", "dense")]
    detections, targets, boxes_in = detect_variants(model, data, variants, batch_size=2)
    with torch.no_grad():
        images = [image for image, _ in data]
        expected = model(images[:2]) + model(images[2:])        # the same batches as detect_variants
    for got, want in zip(detections["RPN default"], expected):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(got[key], want[key])
    assert len(targets) == 3 and len(detections["dense"]) == 3
    assert boxes_in["dense"] > boxes_in["RPN default"] > 0


def test_evaluate_variants_reports_map_per_variant():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_cfg()).eval()
    variants = [ProposalVariant("RPN 10", "rpn", 10), ProposalVariant("RPN 10 of 40", "rpn", 10, 40),
                ProposalVariant("no cls 10", "no_cls", 10)]
    out = evaluate_variants(model, tiny_data(2), ["a", "b"], variants)
    assert set(out) == {"RPN 10", "RPN 10 of 40", "no cls 10"}
    # the file says which pre-NMS list each row used: the config's cap, the variant's own, none without NMS
    assert [out[v.name]["pre_nms_top_n"] for v in variants] == [model.cfg.rpn_pre_nms_top_n_test, 40, None]
    for entry in out.values():
        assert set(entry["ap"]) == {"a", "b"}
        assert entry["voc07_map"] == pytest.approx(sum(entry["ap"].values()) / 2)     # the mean of the class APs
        assert entry["boxes_per_image"] <= 10


def test_proposals_for_image_maps_back_to_the_original_pixels():
    torch.manual_seed(0)
    cfg = tiny_cfg(min_size=2 * H, max_size=2 * W)        # the model works at twice the image size
    model = FasterRCNN(cfg).eval()
    image = tiny_data(1)[0][0]
    variants = [ProposalVariant("RPN 20", "rpn", 20), ProposalVariant("dense", "dense")]
    boxes = proposals_for_image(model, image, variants)
    assert set(boxes) == {"RPN 20", "dense"} and 0 < len(boxes["RPN 20"]) <= 20
    for b in boxes.values():                                # inside the original 64 x 80 image
        assert float(b[:, 2].max()) <= W + 1e-3 and float(b[:, 3].max()) <= H + 1e-3
    assert float(boxes["dense"][:, 2].max()) > W / 2        # and not squeezed into a corner


def test_detect_variants_refuses_unshared_models():
    from fasterrcnn_edu import UnsharedFasterRCNN
    cfg = tiny_cfg()
    with pytest.raises(TypeError):
        detect_variants(UnsharedFasterRCNN(FasterRCNN(cfg), FasterRCNN(cfg)), tiny_data(1))


# ---------------------------------------------------------------------------------------------
# Recall and the anchor sweep
# ---------------------------------------------------------------------------------------------
def test_recall_experiment_curves():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_cfg()).eval()
    out = recall_experiment(model, tiny_data(2), counts=(5, 20), sliding_window={"scales": (16, 32), "stride": 8})
    assert out["counts"] == [5, 20]
    assert out["ground_truth"] == 3                       # 2 + 2 objects, one difficult
    for method in ("RPN", "sliding windows"):
        curves = out["methods"][method]
        for n in ("5", "20"):
            recall = curves[n]["recall"]
            assert len(recall) == len(curves[n]["iou"]) == 11
            assert all(a >= b for a, b in zip(recall, recall[1:]))      # falls with the IoU threshold
        assert all(a <= b + 1e-12 for a, b in zip(curves["5"]["recall"], curves["20"]["recall"]))


def test_anchor_variant_keeps_the_features_and_replaces_the_rpn_head():
    torch.manual_seed(0)
    reference = FasterRCNN(tiny_cfg())
    variant = anchor_variant(reference, anchor_scales=(4,), anchor_ratios=(1.0,))
    assert variant.cfg.num_anchors == 1 and reference.cfg.num_anchors == 9
    assert same_weights(reference.backbone.state_dict(), variant.backbone.state_dict())
    assert same_weights(reference.roi_heads.state_dict(), variant.roi_heads.state_dict())
    assert variant.rpn.head.cls.out_channels == 2 and variant.rpn.head.reg.out_channels == 4
    assert not any(p.requires_grad for p in variant.backbone.parameters())
    # A weights file named in the reference's config (maybe on another machine) is not opened.
    reference.cfg = Config.from_dict({**reference.cfg.to_dict(), "backbone_weights": "/nonexistent/backbone.pt"})
    assert anchor_variant(reference).cfg.backbone_weights is None


def test_finetune_steps_3_4_moves_only_the_heads():
    torch.manual_seed(0)
    two = StageSchedule(2, 0.01, 2)
    reference = FasterRCNN(tiny_cfg())
    model = anchor_variant(reference, anchor_scales=(2, 4), stage_rpn2=two, stage_det2=two)
    rpn_before = {k: v.clone() for k, v in model.rpn.state_dict().items()}
    log, seconds = finetune_steps_3_4(model, tiny_data(2), log_every=1)
    assert [r["stage"] for r in log] == ["3-rpn-frozen"] * 2 + ["4-detector-frozen"] * 2
    assert "loss_objectness" in log[0] and "loss_classifier" in log[-1] and seconds > 0
    assert same_weights(reference.backbone.state_dict(), model.backbone.state_dict())
    assert not same_weights(rpn_before, model.rpn.state_dict())
    assert not same_weights(reference.roi_heads.state_dict(), model.roi_heads.state_dict())
    assert not model.training


def test_anchor_experiment_tiny_sweep(tmp_path):
    settings = {k: ANCHOR_SETTINGS[k] for k in ("1 scale (32²), 1 ratio", "3 scales, 3 ratios")}
    one = StageSchedule(1, 0.001, 1)
    reference = FasterRCNN(tiny_cfg(stage_rpn2=StageSchedule(2, 0.001, 2), stage_det2=one))
    out = tmp_path / "anchors.json"
    data = tiny_data(2)
    report = anchor_experiment(reference, data, data, ["a", "b"], settings, out=out)
    assert list(report["results"]) == list(settings)
    first, last = report["results"].values()
    assert first["k"] == 1 and last["k"] == 9
    assert first["anchor_sides"] == [32]
    assert first["iterations"] == {"3-rpn-frozen": 2, "4-detector-frozen": 1}
    for entry in (first, last):        # the headline numbers are the ones their parts give
        assert entry["voc07_map"] == pytest.approx(sum(entry["ap"].values()) / len(entry["ap"]))
        assert entry["recall_300_at_0.7"] <= entry["recall_300_at_0.5"]
    assert set(first["final_losses"]) == {"3-rpn-frozen", "4-detector-frozen"}
    assert json.loads(out.read_text())["results"].keys() == report["results"].keys()


def test_plot_against_paper_draws_changes_relative_to_the_reference_row():
    import matplotlib
    matplotlib.use("Agg")
    from fasterrcnn_edu.lab.ablations import plot_against_paper

    results = {"RPN 300": {"voc07_map": 0.80}, "RPN 100": {"voc07_map": 0.75}, "RPN 50": {"voc07_map": 0.70}}
    paper = {"RPN 300": 56.8, "RPN 100": 55.1, "RPN 50": None}
    ax = plot_against_paper(results, paper)
    widths = sorted(round(bar.get_width(), 6) for bar in ax.patches)
    assert widths == [-5.0, round(55.1 - 56.8, 6)]              # one row (RPN 100): ours, then the paper's
    assert [t.get_text() for t in ax.get_yticklabels()] == ["RPN 100"]


def test_recall_experiment_ranks_the_papers_pre_nms_list_for_every_n():
    """"RPN N" = the top N of what NMS keeps from the `pre_nms_top_n` best boxes (Figure 4, Table 2),
    not a pre-NMS cap that moves with N: a small cap yields fewer boxes after NMS than the full list."""
    from fasterrcnn_edu.inference import predict_proposals
    torch.manual_seed(0)
    cfg = tiny_cfg().replace(rpn_pre_nms_top_n_test=20)
    model = FasterRCNN(cfg).eval()
    data = tiny_data(2)
    out = recall_experiment(model, data, counts=(5, 20), sliding_window={"scales": (16, 32), "stride": 8},
                            pre_nms_top_n=10 ** 6)
    assert out["pre_nms_top_n"] == 10 ** 6
    full = predict_proposals(model, data, 20, pre_nms_top_n=10 ** 6)
    capped = predict_proposals(model, data, 20)                     # the config's 20 enter NMS
    assert out["proposals_per_image"]["RPN"]["20"] == sum(min(len(p), 20) for p in full) / len(full)
    assert sum(map(len, full)) > sum(map(len, capped))
