"""fasterrcnn_edu.lab.profiling: the staged forward equals the model's forward; results have the
documented keys and sensible counts. Timing values are only checked to be positive numbers."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fasterrcnn_edu import Config, FasterRCNN  # noqa: E402
from fasterrcnn_edu.lab import profiling  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Config.book(min_size=64, max_size=96, rpn_channels=16, head_hidden=16, rpn_pre_nms_top_n_test=200,
                      rpn_post_nms_top_n_test=40, score_thresh=0.0)
    return FasterRCNN(cfg).eval()


def _image(h=64, w=80, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_staged_forward_equals_model_forward(model):
    images = [_image(), _image(48, 72, seed=1)]
    detections, times, counts = profiling.staged_forward(model, images)
    with torch.no_grad():
        expected = model(images)
    for ours, theirs in zip(detections, expected):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(ours[key], theirs[key])
    assert list(times) == list(profiling.STAGES)
    assert all(t >= 0 for t in times.values())
    assert len(counts["proposals"]) == 2 and all(0 < p <= 40 for p in counts["proposals"])
    assert counts["image_size"][0] % 16 == 0 and counts["feature_size"][0] * 16 == counts["image_size"][0]


def test_staged_forward_rejects_unshared(model):
    from fasterrcnn_edu import UnsharedFasterRCNN
    with pytest.raises(TypeError):
        profiling.staged_forward(UnsharedFasterRCNN(model, model), [_image()])


def test_profile_stages_keys(model):
    result = profiling.profile_stages(model, [_image()], repeats=2, warmup=1)
    assert set(result["stages"]) == set(profiling.STAGES)
    assert result["total"] > 0 and result["forward"] > 0
    assert result["repeats"] == 2 and result["images"] == 1 and result["device"] == "cpu"
    assert 0 < result["proposals"] <= 40


def test_with_settings_copies(model):
    other = profiling.with_settings(model, min_size=128, max_size=200, rpn_post_nms_top_n_test=7)
    assert model.cfg.min_size == 64 and model.transform.min_size == 64 and model.cfg.rpn_post_nms_top_n_test == 40
    assert other.cfg.min_size == 128 and other.transform.min_size == 128 and other.transform.max_size == 200
    assert other.rpn.cfg is other.cfg and other.roi_heads.cfg is other.cfg
    assert torch.equal(other.rpn.head.cls.weight, model.rpn.head.cls.weight)
    with pytest.raises(AttributeError):
        profiling.with_settings(model, no_such_field=1)


def test_time_vs_image_size_resizes(model):
    rows = profiling.time_vs_image_size(model, _image(), sizes=(32, 96), repeats=1, warmup=0)
    assert [r["min_size"] for r in rows] == [32, 96]
    # 64×80 scaled to shorter side 96 -> 96×120, padded to multiples of 16 -> 96×128
    assert rows[1]["image_size"] == [96, 128]
    assert rows[0]["image_size"][0] < rows[1]["image_size"][0]


def test_time_vs_num_proposals_caps_counts(model):
    rows = profiling.time_vs_num_proposals(model, _image(), counts=(5, 30), min_size=96, repeats=1, warmup=0)
    assert [r["top_n"] for r in rows] == [5, 30]
    assert rows[0]["proposals"] <= 5 and rows[1]["proposals"] <= 30
    assert rows[0]["proposals"] <= rows[1]["proposals"]


def test_measure_scaling_and_plots(model):
    result = profiling.measure_scaling(model, _image(), sizes=(48, 64), counts=(5, 10), proposals_min_size=64,
                                       repeats=1, warmup=0)
    assert {"environment", "default", "image_size", "num_proposals"} <= set(result)
    assert result["environment"]["threads"] >= 1
    ax = profiling.plot_scaling(result["image_size"], "min_size")
    assert len(ax.collections) == len(profiling.STAGES)
    grouped = profiling.group_stages(result["default"]["stages"])
    assert list(grouped) == ["conv", "proposal", "region-wise"]
    assert sum(grouped.values()) == pytest.approx(sum(result["default"]["stages"].values()))
    paper = {k: {g: v[g] / 1e3 for g in profiling.PAPER_GROUPS} for k, v in profiling.PAPER_TABLE5_MS.items()}
    ax = profiling.plot_stage_times({"ours": grouped, **paper}, normalize=True)
    assert len(ax.patches) == 3 * (1 + len(paper))


def test_paper_table_adds_up():
    for row in profiling.PAPER_TABLE5_MS.values():
        assert row["conv"] + row["proposal"] + row["region-wise"] == row["total"]


def test_count_macs_counts_conv_and_linear_by_hand():
    # conv 3->4, 3x3, padding 1 on 5x6: 4*5*6 outputs x 3*9 each; then a linear 120->2: 2 outputs x 120
    build = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(120, 2))
    assert profiling.count_macs(build, (1, 3, 5, 6)) == 4 * 5 * 6 * 3 * 9 + 2 * 120


def test_stage_colors_are_one_palette():
    # a stage has the same colour in the bar chart and the stack plot, and its group's hue
    assert profiling.stage_color("rpn_head") == profiling.stage_color("proposal")
    assert profiling.stage_color("backbone") == profiling.stage_color("conv")
    assert profiling.stage_color("transform") != profiling.stage_color("backbone")
