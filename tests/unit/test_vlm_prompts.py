"""Answer formats: exact round trips and a table of strings every strict parser must reject."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.vlm.families import FAMILIES, get_family
from pipeline.vlm.prompts import COGVLM_BOX, QWEN2_VL_BOX, TINY_BOX, format_angle, format_pose, parse_pose

angles = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)


# ---------------------------------------------------------------- head pose
@given(angles, angles, angles)
def test_pose_round_trip_is_exact_to_one_decimal(yaw, pitch, roll):
    text = format_pose(yaw, pitch, roll)
    assert parse_pose(text) == (round(yaw, 1), round(pitch, 1), round(roll, 1))
    assert format_pose(*parse_pose(text)) == text  # one spelling per value


@pytest.mark.parametrize(
    ("pose", "text"),
    [
        ((-12.3, 4.0, 0.5), "[[-12.3,+4.0,+0.5]]"),
        ((0.0, -0.0, -0.04), "[[+0.0,+0.0,+0.0]]"),  # zero is always +0.0
        ((180.0, -180.0, 99.96), "[[+180.0,-180.0,+100.0]]"),
        ((7.25, -7.25, 0.05), "[[+7.2,-7.2,+0.1]]"),  # round() of the float, no string tricks
    ],
)
def test_pose_format_examples(pose, text):
    assert format_pose(*pose) == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 180.06, -200.0])
def test_pose_format_refuses_values_it_cannot_write(bad):
    with pytest.raises(ValueError):
        format_angle(bad)


INVALID_POSES = [
    "",
    "[[12.3,+4.0,+0.5]]",  # missing sign
    "[[-12.30,+4.0,+0.5]]",  # two decimals
    "[[-12,+4.0,+0.5]]",  # no decimal
    "[[-12.,+4.0,+0.5]]",
    "[[-012.3,+4.0,+0.5]]",  # leading zero
    "[[-12.3, +4.0, +0.5]]",  # spaces
    "[[-12.3,+4.0,+0.5]] ",  # trailing space
    "[[-12.3,+4.0,+0.5]]\n",  # trailing newline
    " [[-12.3,+4.0,+0.5]]",
    "yaw [[-12.3,+4.0,+0.5]]",  # extra text
    "[[-12.3,+4.0,+0.5]][[+1.0,+1.0,+1.0]]",
    "[-12.3,+4.0,+0.5]",  # single brackets
    "[[-12.3,+4.0]]",  # two values
    "[[-12.3,+4.0,+0.5,+1.0]]",
    "[[+180.1,+4.0,+0.5]]",  # beyond ±180
    "[[-999.9,+4.0,+0.5]]",
    "[[+1000.0,+4.0,+0.5]]",
    "[[+nan,+4.0,+0.5]]",
    "[[nan,nan,nan]]",
    "[[+inf,+4.0,+0.5]]",
    "[[-0.0,+4.0,+0.5]]",  # the formatter never writes -0.0
    "[[+1e1,+4.0,+0.5]]",
    "[[+１.0,+4.0,+0.5]]",  # full-width digit
    "[[-12.3;+4.0;+0.5]]",
    "<|box_start|>(1,2),(3,4)<|box_end|>",  # a grounding answer is not a pose
]


@pytest.mark.parametrize("text", INVALID_POSES)
def test_pose_parser_rejects(text):
    assert parse_pose(text) is None


# ---------------------------------------------------------------- boxes, per family
SYNTAXES = {"tiny": TINY_BOX, "qwen2_vl": QWEN2_VL_BOX, "cogvlm": COGVLM_BOX}


def test_every_family_has_its_box_syntax():
    assert {name: f.box for name, f in FAMILIES.items()} == SYNTAXES


@pytest.mark.parametrize(
    ("family", "grid_box", "text"),
    [
        ("cogvlm", (12, 340, 456, 999), "[[012,340,456,999]]"),
        ("cogvlm", (0, 0, 1, 1), "[[000,000,001,001]]"),
        ("qwen2_vl", (0, 7, 456, 1000), "<|box_start|>(0,7),(456,1000)<|box_end|>"),
        ("tiny", (1, 34, 45, 99), "[[<1>,<34>,<45>,<99>]]"),
        ("tiny", (0, 0, 1, 1), "[[<0>,<0>,<1>,<1>]]"),
    ],
)
def test_box_text_examples(family, grid_box, text):
    syntax = SYNTAXES[family]
    assert syntax.format(grid_box) == text
    assert syntax.parse(text) == grid_box


@pytest.mark.parametrize("family", sorted(SYNTAXES))
@given(data=st.data())
def test_box_text_round_trip(family, data):
    syntax = SYNTAXES[family]
    top = syntax.grid.max_value
    x0 = data.draw(st.integers(0, top - 1))
    y0 = data.draw(st.integers(0, top - 1))
    box = (x0, y0, data.draw(st.integers(x0 + 1, top)), data.draw(st.integers(y0 + 1, top)))
    assert syntax.parse(syntax.format(box)) == box


INVALID_BOXES = {
    "cogvlm": [
        "[[12,340,456,789]]",  # not zero-padded to three digits
        "[[0012,340,456,789]]",
        "[[012,340,456,1000]]",  # off the 000-999 grid
        "[[456,340,012,789]]",  # x0 > x1
        "[[012,340,012,789]]",  # empty
        "[[012,789,456,340]]",  # y0 > y1
        "[[012, 340, 456, 789]]",
        "[[012,340,456,789]] ",
        "[[012,340,456]]",
        "[[-12,340,456,789]]",
        "The head is at [[012,340,456,789]]",
        "<|box_start|>(12,340),(456,789)<|box_end|>",
    ],
    "qwen2_vl": [
        "<|box_start|>(012,340),(456,789)<|box_end|>",  # leading zero
        "<|box_start|>(12,340),(456,1001)<|box_end|>",  # beyond 1000
        "<|box_start|>(456,340),(12,789)<|box_end|>",
        "<|box_start|>(12,340),(456,340)<|box_end|>",
        "<|box_start|>(12, 340),(456,789)<|box_end|>",
        "<|box_start|>(12,340),(456,789)",
        "(12,340),(456,789)",
        "<|box_start|>(12,340,456,789)<|box_end|>",
        "<|box_start|>(12,340),(456,789)<|box_end|><|box_start|>(1,2),(3,4)<|box_end|>",
        "[[012,340,456,789]]",
    ],
    "tiny": [
        "[[01,34,45,78]]",  # characters, not number tokens
        "[[<01>,<34>,<45>,<78>]]",  # no leading zeros
        "[[<1>,<34>,<45>,<100>]]",  # off the 0-99 grid
        "[[<45>,<34>,<1>,<78>]]",
        "[[<1>,<78>,<45>,<34>]]",
        "[[<1>,<34>,<1>,<78>]]",
        "[[<1>,<34>,<45>,<78>]]\n",
        "[[<1>,<34>,<45>,<78>]]</s>",
        "[[<1>, <34>,<45>,<78>]]",
        "[[<1>,<34>,<45>]]",
        "[[+<1>,<34>,<45>,<78>]]",
        "[[-<12>,+<4>,+<0>]]",  # a pose is not a box
        "",
    ],
}


@pytest.mark.parametrize(("family", "text"), [(f, t) for f, texts in INVALID_BOXES.items() for t in texts])
def test_box_parser_rejects(family, text):
    fam = get_family(family)
    assert fam.box.parse(text) is None
    assert fam.parse_grounding(text, 128, 96) is None


@pytest.mark.parametrize("family", sorted(SYNTAXES))
def test_box_format_refuses_illegal_boxes(family):
    syntax = SYNTAXES[family]
    for bad in [(5, 5, 5, 9), (5, 9, 9, 5), (0, 0, syntax.grid.max_value + 1, 3), (-1, 0, 3, 3)]:
        with pytest.raises(ValueError):
            syntax.format(bad)


@pytest.mark.parametrize("family", ["qwen2_vl", "cogvlm"])
def test_real_families_answer_head_pose_in_the_decimal_format(family):
    fam = get_family(family)
    assert fam.headpose_answer(-12.34, 4.0, 0.5) == "[[-12.3,+4.0,+0.5]]"
    assert fam.parse_headpose("[[-12.3,+4.0,+0.5]]") == (-12.3, 4.0, 0.5)
    assert fam.parse_headpose("[[-12.3,+4.0,+0.5]] ") is None


# ---------------------------------------------------------------- tiny head pose: number tokens
@pytest.mark.parametrize(
    ("pose", "text"),
    [
        ((-12.34, 4.0, 0.5), "[[-<12>,+<4>,+<0>]]"),  # whole degrees; 0.5 rounds to even
        ((-0.4, 0.0, 99.4), "[[+<0>,+<0>,+<99>]]"),  # zero is +<0>
        ((-150.0, 120.0, -99.6), "[[-<99>,+<99>,-<99>]]"),  # capped at 99°
    ],
)
def test_tiny_pose_format_examples(pose, text):
    fam = get_family("tiny")
    assert fam.headpose_answer(*pose) == text


@given(st.floats(-99.0, 99.0), st.floats(-99.0, 99.0), st.floats(-99.0, 99.0))
def test_tiny_pose_round_trip_is_exact_to_whole_degrees(yaw, pitch, roll):
    fam = get_family("tiny")
    text = fam.headpose_answer(yaw, pitch, roll)
    parsed = fam.parse_headpose(text)
    assert parsed is not None and all(abs(p - v) <= 0.5 for p, v in zip(parsed, (yaw, pitch, roll), strict=True))
    assert fam.headpose_answer(*parsed) == text


@pytest.mark.parametrize(
    "bad",
    [
        "[[-12.3,+4.0,+0.5]]",  # the decimal format is not the tiny one
        "[[<12>,+<4>,+<0>]]",  # missing sign
        "[[-<12>,+<4>,-<0>]]",  # -0
        "[[-<012>,+<4>,+<0>]]",
        "[[-<100>,+<4>,+<0>]]",
        "[[-<12>,+<4>]]",
        "[[-<12>,+<4>,+<0>]] ",
        "[[-<12>, +<4>,+<0>]]",
        "[[<1>,<34>,<45>,<78>]]",  # a box is not a pose
        "",
    ],
)
def test_tiny_pose_parser_rejects(bad):
    assert get_family("tiny").parse_headpose(bad) is None


def test_tiny_pose_refuses_non_finite():
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            get_family("tiny").headpose_answer(bad, 0.0, 0.0)
