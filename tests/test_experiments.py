"""fasterrcnn_edu.lab.experiments: RPN-only training, proposal recall and the λ sweep, on tiny inputs.

These check behaviour (shapes, keys, determinism, that training moves the weights), not accuracy.
"""
import json

import pytest
import torch

from fasterrcnn_edu import Config, FasterRCNN
from fasterrcnn_edu import losses as losses_module
from fasterrcnn_edu.lab import experiments


def _tiny_cfg(**overrides) -> Config:
    return Config.book(min_size=64, max_size=96, rpn_channels=16, head_hidden=16, rpn_batch_size=32,
                       rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, warmup_iterations=0,
                       **overrides)


def _tiny_dataset(n: int = 4, seed: int = 0) -> list:
    """n images 64×80 with one bright rectangle each; targets as VOCDataset gives them."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.rand(3, 64, 80, generator=g) * 0.2
        x1, y1 = 8 + 4 * i, 10
        image[:, y1:y1 + 30, x1:x1 + 36] = 0.9
        target = {"boxes": torch.tensor([[x1, y1, x1 + 36.0, y1 + 30.0]]), "labels": torch.tensor([1]),
                  "difficult": torch.tensor([False])}
        items.append((image, target))
    return items


def test_train_rpn_log_and_weights_change():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    start = FasterRCNN(cfg)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    run = experiments.train_rpn(_tiny_dataset(), cfg, steps=3, lr=0.005, log_every=2, model=start)
    assert run.model is start and not run.model.training
    assert [r["step"] for r in run.log] == [1, 2]
    for record in run.log:
        assert {"loss_objectness", "loss_rpn_box_reg", "lr", "seconds"} <= set(record)
        assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss_objectness", "loss_rpn_box_reg"))
    after = run.model.state_dict()
    assert not torch.equal(before["rpn.head.cls.weight"], after["rpn.head.cls.weight"])
    # The detector head is not part of RPN training.
    assert torch.equal(before["roi_heads.predictor.cls_score.weight"], after["roi_heads.predictor.cls_score.weight"])


def test_train_rpn_is_deterministic():
    cfg = _tiny_cfg()
    a = experiments.train_rpn(_tiny_dataset(), cfg, steps=2, lr=0.005, seed=3)
    b = experiments.train_rpn(_tiny_dataset(), cfg, steps=2, lr=0.005, seed=3)
    assert [r["loss_objectness"] for r in a.log] == [r["loss_objectness"] for r in b.log]
    assert torch.equal(a.model.rpn.head.reg.weight, b.model.rpn.head.reg.weight)


def test_proposal_recall_range_and_keys():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = FasterRCNN(cfg).eval()
    result = experiments.proposal_recall(model, _tiny_dataset(2), top_n=20)
    assert result["top_n"] == 20 and len(result["iou"]) == len(result["recall"]) == 11
    recall = dict(zip((round(t, 2) for t in result["iou"]), result["recall"]))
    assert result["recall@0.5"] == recall[0.5] and result["recall@0.7"] == recall[0.7]   # read off the curve
    assert all(a >= b for a, b in zip(result["recall"], result["recall"][1:]))           # stricter IoU, fewer hits
    assert result["AR"] <= result["recall@0.5"]
    assert 0 < result["proposals_per_image"] <= 20


@pytest.mark.parametrize("normalization", ["locations", "minibatch"])
def test_loss_weights_are_the_weights_rpn_losses_applies(normalization):
    """loss_weights' per-anchor weights are the gradients losses.rpn_losses gives one sampled anchor's
    box error (a small error: the quadratic part of smooth L1, d/dx 0.5 x² / β = x / β) and its class
    loss, with the config's 256 sampled anchors on a 16 x 20 feature map."""
    cfg = Config.book(rpn_reg_normalization=normalization, rpn_smooth_l1_beta=1.0)
    height, width, k = 16, 20, 9
    weights = experiments.loss_weights(cfg, (height, width))
    anchors = height * width * k
    sampled_pos = torch.zeros(1, anchors, dtype=torch.bool)
    sampled_neg = torch.zeros(1, anchors, dtype=torch.bool)
    sampled_pos[0, :64], sampled_neg[0, 64:cfg.rpn_batch_size] = True, True
    deltas = torch.zeros(1, anchors, 4, requires_grad=True)
    objectness = torch.zeros(1, anchors, 2, requires_grad=True)
    target = torch.zeros(1, anchors, 4)
    target[0, 0, 0] = -0.01                                   # one positive anchor off by 0.01 in x
    losses = losses_module.rpn_losses(objectness, deltas, target, sampled_pos, sampled_neg, height * width,
                                      cfg.rpn_lambda, normalization, cfg.rpn_smooth_l1_beta)
    (losses["loss_rpn_box_reg"] + losses["loss_objectness"]).backward()
    assert deltas.grad[0, 0, 0].item() == pytest.approx(weights["reg_weight_per_anchor"] * 0.01, rel=1e-5)
    # Cross-entropy of 2 equal logits: d/d(logit of "object") = p - 1 = -0.5 per sampled positive, / N_cls.
    assert objectness.grad[0, 0, 1].item() == pytest.approx(-0.5 * weights["cls_weight_per_anchor"], rel=1e-5)


def test_loss_weights_paper_and_book():
    paper = experiments.loss_weights(Config.paper(), (40, 60))          # ~2400 locations, paper §3.1.2
    assert paper["N_cls"] == 256 and paper["N_reg"] == 2400 and paper["lambda"] == 10
    assert paper["ratio"] == pytest.approx(10 / 2400 * 256)
    book = experiments.loss_weights(Config.book(), (16, 20))
    assert book["N_reg"] == 320
    minibatch = experiments.loss_weights(Config.book(rpn_reg_normalization="minibatch"), (16, 20))
    assert minibatch["N_reg"] == 256


def test_lambda_sweep_json(tmp_path):
    data = _tiny_dataset()
    result = experiments.lambda_sweep(data, data[:2], lambdas=(1, 10), steps=2, seeds=(0,), top_ns=(10,),
                                      cfg=_tiny_cfg())
    assert [r["lambda"] for r in result["runs"]] == [1.0, 10.0]
    assert [s["lambda"] for s in result["summary"]] == [1.0, 10.0]
    assert {"recall@0.7 top-10", "AR top-10"} <= set(result["summary"][0])
    path = tmp_path / "lambda.json"
    path.write_text(json.dumps(result))                 # JSON-serialisable as it is
    assert json.loads(path.read_text())["settings"]["steps"] == 2


def test_subset():
    data = _tiny_dataset(4)
    assert len(experiments.subset(data, 2)) == 2
    assert experiments.subset(data, 0) is data and experiments.subset(data, 10) is data


def test_proposal_recall_several_top_n_is_prefix_consistent():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = FasterRCNN(cfg).eval()
    data = _tiny_dataset(2)
    both = experiments.proposal_recall(model, data, top_n=[5, 20])
    assert set(both) == {5, 20}
    assert both[20] == experiments.proposal_recall(model, data, top_n=20)
    assert both[5]["recall"] == experiments.proposal_recall(model, data, top_n=5)["recall"]


def test_regression_loss_curves_gradients():
    x = torch.tensor([-5.0, -0.5, 0.0, 0.05, 2.0])
    curves = experiments.regression_loss_curves(x, betas=(1.0, 0.1))
    l2_loss, l2_grad = curves["L2: 0.5 x²"]
    assert torch.allclose(l2_grad, x)                        # d(0.5 x²)/dx = x
    loss, grad = curves["smooth L1, β = 1"]
    assert torch.allclose(grad, torch.tensor([-1.0, -0.5, 0.0, 0.05, 1.0]))
    assert torch.allclose(loss, torch.tensor([4.5, 0.125, 0.0, 0.00125, 1.5]))
    assert grad.abs().max() <= 1.0
    assert len(curves) == 3


def test_plots_run():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = experiments.plot_regression_losses()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 3
    data = _tiny_dataset()
    result = experiments.lambda_sweep(data, data[:2], lambdas=(1, 10), steps=1, top_ns=(10,), cfg=_tiny_cfg())
    ax = experiments.plot_lambda_sweep(result)
    assert len(ax.lines) == 2                            # recall@0.7 and AR of the one top-N
    plt.close("all")


def test_objectness_map_shape_and_plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = FasterRCNN(cfg)
    image = _tiny_dataset(1)[0][0]                       # 64×80 -> resized to 64×80, padded 64×80: 4×5 map
    prob = experiments.objectness_map(model, image)
    assert prob.shape == (4, 5) and float(prob.min()) >= 0 and float(prob.max()) <= 1
    ax = experiments.plot_objectness(prob, title="t", boxes=torch.tensor([[8.0, 10, 44, 40]]))
    assert len(ax.images) == 1 and ax.get_xlim() == (0, 80) and len(ax.patches) == 1
    plt.close("all")
