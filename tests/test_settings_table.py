"""The settings table of the book (fasterrcnn_edu.lab.settings_table) is read from Config, so it follows the code."""
from __future__ import annotations

import dataclasses

from fasterrcnn_edu import Config
from fasterrcnn_edu.config import field_info
from fasterrcnn_edu.lab.settings_table import SETTINGS, settings_markdown, settings_rows


def test_every_setting_has_all_four_columns():
    rows = settings_rows()
    assert len(rows) == len(SETTINGS) > 25
    for row in rows:
        assert all(row[column] for column in ("paper", "released code", "`paper` preset", "`book` preset")), row


def test_preset_columns_follow_the_config():
    by_name = lambda rows: {r["setting"]: r for r in rows}  # noqa: E731
    default = by_name(settings_rows())
    changed = by_name(settings_rows(book=Config.book(alt_reinit_heads=False, rpn_lambda=1.0, difficult="drop")))
    assert "fresh RPN head" in default["step 3: RPN, shared layers fixed"]["`book` preset"]
    assert "step-1 RPN head (ours)" in changed["step 3: RPN, shared layers fixed"]["`book` preset"]
    assert changed["loss weights (Eq. 1)"]["`book` preset"].startswith("λ = 1,")
    assert changed["VOC *difficult* objects"]["`book` preset"].startswith("dropped from training;")
    assert default["images × RoIs per detector mini-batch"]["`paper` preset"] == "2 × 64"


def test_markdown_table_has_a_line_per_setting_and_group():
    text = settings_markdown()
    groups = {s.group for s in SETTINGS}
    assert sum(line.startswith("| ") for line in text.splitlines()) == 2 + len(SETTINGS) + len(groups)
    assert text.startswith("| setting | paper | released code |")


# Config fields the table leaves out: data-set facts, file paths, speed switches and the seed.
NOT_TABULATED = {"num_classes", "image_mean", "image_std", "size_divisible", "backbone_weights", "channels_last",
                 "seed", "alt_proposal_pre_nms_top_n", "alt_proposal_post_nms_top_n", "det_smooth_l1_beta"}


def test_every_config_field_is_in_the_table_or_named_as_left_out():
    """A new Config field fails here until it gets a row (or is named above): the table cannot drift."""
    fields = {f.name for f in dataclasses.fields(Config)}
    shown = {name for s in SETTINGS for name in s.fields}
    assert shown <= fields, sorted(shown - fields)
    assert fields - shown == NOT_TABULATED


def test_each_row_names_the_sources_of_its_fields():
    rows = {r["setting"]: r for r in settings_rows()}
    assert rows["image scale"]["fields"] == "min_size, max_size"
    assert field_info("min_size")["source"] == "paper §3.3" and field_info("min_size")["unit"] == "px"
