"""The settings table of the book (fasterrcnn_edu.lab.settings_table) is read from Config, so it follows the code."""
from __future__ import annotations

from fasterrcnn_edu import Config
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
    assert changed["VOC *difficult* objects"]["`book` preset"] == "dropped from training"
    assert default["images × RoIs per detector mini-batch"]["`paper` preset"] == "2 × 64"


def test_markdown_table_has_a_line_per_setting_and_group():
    text = settings_markdown()
    groups = {s.group for s in SETTINGS}
    assert text.count("\n") + 1 == 2 + len(SETTINGS) + len(groups)
    assert text.startswith("| setting | paper | released code |")
