"""The released code's facts (fasterrcnn_edu.released_code.RELEASED) against the paper preset and the
settings page: the "released code" column is that table, and Config.paper() follows it except where
a test below names why not."""
from __future__ import annotations

import dataclasses

import pytest

from fasterrcnn_edu import Config
from fasterrcnn_edu.config import field_info
from fasterrcnn_edu.lab.settings_table import SETTINGS, Setting, settings_markdown, settings_rows
from fasterrcnn_edu.released_code import RELEASED

# Where Config.paper() deliberately does not take the released value, and why. The reason's first
# word is what the field's Config source must say: "paper" (the paper decides, released code only
# where it is silent), "Fast R-CNN" (the paper's Eq. 1 takes its smooth L1 from there) or "ours".
PAPER_DIFFERS = {
    "legacy_anchors": "ours: continuous box coordinates throughout; True gives the released +1-pixel anchors",
    "rpn_lambda": "paper §3.1.2: λ = 10 (the released code's λ = 1 goes with N_reg = 256)",
    "rpn_reg_normalization": "paper Eq. 1: N_reg = the number of anchor locations",
    "rpn_smooth_l1_beta": "Fast R-CNN: the paper's smooth L1 is Fast R-CNN's, β = 1 (released: σ = 3)",
}

# The files of py-faster-rcnn at commit 781a917 under lib/{fast_rcnn,rpn,roi_data_layer,datasets}/*.py,
# tools/*.py, experiments/{cfgs,scripts}/ and models/pascal_voc/VGG16/, as `git ls-tree -r 781a917
# --name-only` lists them (the repository is not available to CI, so the listing is written here).
RELEASED_FILES = {
    "experiments/cfgs/faster_rcnn_alt_opt.yml",
    "experiments/cfgs/faster_rcnn_end2end.yml",
    "experiments/scripts/fast_rcnn.sh",
    "experiments/scripts/faster_rcnn_alt_opt.sh",
    "experiments/scripts/faster_rcnn_end2end.sh",
    "lib/datasets/__init__.py",
    "lib/datasets/coco.py",
    "lib/datasets/ds_utils.py",
    "lib/datasets/factory.py",
    "lib/datasets/imdb.py",
    "lib/datasets/pascal_voc.py",
    "lib/datasets/voc_eval.py",
    "lib/fast_rcnn/__init__.py",
    "lib/fast_rcnn/bbox_transform.py",
    "lib/fast_rcnn/config.py",
    "lib/fast_rcnn/nms_wrapper.py",
    "lib/fast_rcnn/test.py",
    "lib/fast_rcnn/train.py",
    "lib/roi_data_layer/__init__.py",
    "lib/roi_data_layer/layer.py",
    "lib/roi_data_layer/minibatch.py",
    "lib/roi_data_layer/roidb.py",
    "lib/rpn/__init__.py",
    "lib/rpn/anchor_target_layer.py",
    "lib/rpn/generate.py",
    "lib/rpn/generate_anchors.py",
    "lib/rpn/proposal_layer.py",
    "lib/rpn/proposal_target_layer.py",
    "models/pascal_voc/VGG16/fast_rcnn/solver.prototxt",
    "models/pascal_voc/VGG16/fast_rcnn/test.prototxt",
    "models/pascal_voc/VGG16/fast_rcnn/train.prototxt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/faster_rcnn_test.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/rpn_test.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage1_fast_rcnn_solver30k40k.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage1_fast_rcnn_train.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage1_rpn_solver60k80k.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage1_rpn_train.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage2_fast_rcnn_solver30k40k.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage2_fast_rcnn_train.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage2_rpn_solver60k80k.pt",
    "models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage2_rpn_train.pt",
    "models/pascal_voc/VGG16/faster_rcnn_end2end/solver.prototxt",
    "models/pascal_voc/VGG16/faster_rcnn_end2end/test.prototxt",
    "models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt",
    "tools/_init_paths.py",
    "tools/compress_net.py",
    "tools/demo.py",
    "tools/eval_recall.py",
    "tools/reval.py",
    "tools/rpn_generate.py",
    "tools/test_net.py",
    "tools/train_faster_rcnn_alt_opt.py",
    "tools/train_net.py",
    "tools/train_svms.py",
}


def paper_mismatches(cfg: Config) -> list[str]:
    """The fields of `cfg` that differ from their released value and are not in PAPER_DIFFERS."""
    return [f"{field}: {getattr(cfg, field)!r} != released {value!r} ({row.setting})"
            for row in RELEASED for field, value in row.values.items()
            if field not in PAPER_DIFFERS and getattr(cfg, field) != value]


def test_paper_preset_follows_the_released_code():
    assert paper_mismatches(Config.paper()) == []


@pytest.mark.parametrize("change", [{"roi_bg_iou_low": 0.1}, {"bias_weight_decay": False}, {"joint_iter_size": 1},
                                    {"joint_roi_batch_size": 64}, {"anchor_ratios": (1.0,)}])
def test_a_paper_preset_off_the_released_value_is_caught(change):
    (field,) = change
    assert [m.split(":")[0] for m in paper_mismatches(Config.paper(**change))] == [field]


def test_each_deliberate_difference_differs_and_is_labelled_in_the_config():
    released = {field: value for row in RELEASED for field, value in row.values.items()}
    assert set(PAPER_DIFFERS) <= set(released), sorted(set(PAPER_DIFFERS) - set(released))
    for field, reason in PAPER_DIFFERS.items():
        assert getattr(Config.paper(), field) != released[field], f"{field} now equals the released value"
        source, label = field_info(field)["source"], reason.split(":")[0]
        assert (("ours" in source) if label == "ours" else source.startswith(label)), (field, source, label)


def test_released_values_are_valid_config_values():
    """Each value is spelled as the Config spells it (a tuple, a float, a StageSchedule ...)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    for row in RELEASED:
        assert set(row.values) <= fields, (row.setting, sorted(set(row.values) - fields))
        Config.paper(**row.values)


def test_every_row_cites_files_of_the_released_repository():
    for row in RELEASED:
        assert row.cites, row.setting
        for path, key in row.cites:
            assert path in RELEASED_FILES, (row.setting, path)
            assert key.strip(), (row.setting, path)


def test_the_settings_page_column_is_this_table():
    names = [s.name for s in SETTINGS]
    assert len({r.setting for r in RELEASED}) == len(RELEASED)
    assert {r.setting for r in RELEASED} <= set(names), sorted({r.setting for r in RELEASED} - set(names))
    assert "released" not in {f.name for f in dataclasses.fields(Setting)}     # no hand-written column left
    by_name = {r.setting: r for r in RELEASED}
    for row in settings_rows():
        released = by_name.get(row["setting"])
        assert row["released code"] == (released.text if released else "—"), row["setting"]
    text = settings_markdown()
    for n, released in enumerate((by_name[s.name] for s in SETTINGS if s.name in by_name), 1):
        assert f"| {released.text} [{n}] |" in text
        assert f"\n{n}. `{released.cites[0][0]}`: `{released.cites[0][1]}`" in text
