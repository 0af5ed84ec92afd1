"""Prompt and answer formats, and their strict parsers.

Head-pose answer (ours, the same for every family)
--------------------------------------------------
``[[yaw,pitch,roll]]``: three angles in degrees (``pipeline.geometry`` convention), each with an
explicit sign, no leading zeros and exactly one decimal, no spaces::

    [[-12.3,+4.0,+0.5]]      yaw -12.3°, pitch +4.0°, roll +0.5°

* zero is written ``+0.0`` (``-0.0`` is never written, so it is invalid);
* every magnitude is at most ``180.0`` (no Euler decomposition gives more);
* values are rounded to one decimal before formatting, so ``parse(format(v)) == round(v, 1)``.

Grounding answers (per family, see ``pipeline.vlm.boxes`` for the grids)
-----------------------------------------------------------------------
* ``cogvlm`` — ``[[x0,y0,x1,y1]]`` on 000–999, each value exactly three digits: ``[[012,340,456,789]]``.
* ``qwen2_vl`` — ``<|box_start|>(x0,y0),(x1,y1)<|box_end|>`` on 0–1000, no leading zeros.
* ``tiny`` — ``[[x0,y0,x1,y1]]`` on 0–99, each value one number token (``pipeline.vlm.numbers``):
  ``[[<1>,<34>,<45>,<78>]]``. A 100-step grid is already finer than its 64-pixel input, and one
  token per value is what lets the tiny model read numbers out at all (docs/vlm_learning.md).

Tiny head-pose answer
---------------------
The tiny family writes each angle as its sign and whole degrees as one number token,
``[[-<12>,+<4>,+<0>]]`` (yaw −12°, pitch +4°, roll 0°): zero is ``+<0>``, magnitudes are
rounded to whole degrees and capped at 99° (beyond the test protocol's ±99°; the cap is where
the training targets of the rare wider renders land). The prompt's placeholder stays
``[[yaw,pitch,roll]]``.

Strictness
----------
An answer is valid only if the *whole* string matches its format exactly (``re.fullmatch``) and
the values are legal (angles within ±180°, boxes on the grid with ``x0 < x1`` and ``y0 < y1``).
Anything else — missing sign, two decimals, spaces, extra text, a trailing newline, ``nan`` —
parses to ``None``. Callers count those as invalid answers (a reported metric); nothing here ever
repairs an answer, because a merge that breaks the format must show up as broken.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipeline.vlm.boxes import COGVLM_GRID, QWEN2_VL_GRID, TINY_GRID, Grid, GridBox
from pipeline.vlm.numbers import NUMBER_MAX, NUMBER_PATTERN

Pose = tuple[float, float, float]

POSE_DECIMALS = 1
MAX_ABS_ANGLE = 180.0
POSE_TEMPLATE = "[[yaw,pitch,roll]]"

_ANGLE = r"([+-](?:0|[1-9][0-9]{0,2})\.[0-9])"
_POSE_RE = re.compile(rf"\[\[{_ANGLE},{_ANGLE},{_ANGLE}\]\]")


def format_angle(value: float) -> str:
    """One angle in the answer format (``+4.0``, ``-12.3``).

    Raises:
        ValueError: if ``value`` is not finite or its magnitude exceeds 180° after rounding.
    """
    if not math.isfinite(value):
        raise ValueError(f"angle {value} is not a finite number")
    rounded = round(float(value), POSE_DECIMALS)
    if abs(rounded) > MAX_ABS_ANGLE:
        raise ValueError(f"angle {value}° is outside ±{MAX_ABS_ANGLE:g}°")
    if rounded == 0.0:
        return "+0.0"  # never "-0.0": one spelling per value
    return f"{rounded:+.{POSE_DECIMALS}f}"


def format_pose(yaw: float, pitch: float, roll: float) -> str:
    """The head-pose answer ``[[yaw,pitch,roll]]`` (degrees, signed, one decimal).

    Raises:
        ValueError: if an angle is not finite or beyond ±180°.
    """
    return "[[" + ",".join(format_angle(v) for v in (yaw, pitch, roll)) + "]]"


def parse_pose(text: str) -> Pose | None:
    """``(yaw, pitch, roll)`` from a head-pose answer, or ``None`` if it is not exactly valid."""
    match = _POSE_RE.fullmatch(text)
    if match is None:
        return None
    values = []
    for token in match.groups():
        if token == "-0.0":
            return None
        value = float(token)
        if abs(value) > MAX_ABS_ANGLE:
            return None
        values.append(value)
    return values[0], values[1], values[2]


_TOKEN_ANGLE = rf"([+-]){NUMBER_PATTERN}"
_TOKEN_POSE_RE = re.compile(rf"\[\[{_TOKEN_ANGLE},{_TOKEN_ANGLE},{_TOKEN_ANGLE}\]\]")


def format_token_angle(value: float) -> str:
    """One angle in the tiny format (``+<4>``, ``-<12>``): whole degrees, capped at 99.

    Raises:
        ValueError: if ``value`` is not finite or beyond ±180° (no Euler decomposition gives
            that: a broken label, as for the decimal format).
    """
    if not math.isfinite(value):
        raise ValueError(f"angle {value} is not a finite number")
    if abs(value) > MAX_ABS_ANGLE:
        raise ValueError(f"angle {value}° is outside ±{MAX_ABS_ANGLE:g}°")
    magnitude = min(NUMBER_MAX, round(abs(float(value))))
    sign = "-" if value < 0 and magnitude > 0 else "+"
    return f"{sign}<{magnitude}>"


def format_token_pose(yaw: float, pitch: float, roll: float) -> str:
    """The tiny family's head-pose answer ``[[±<yaw>,±<pitch>,±<roll>]]``."""
    return "[[" + ",".join(format_token_angle(v) for v in (yaw, pitch, roll)) + "]]"


def parse_token_pose(text: str) -> Pose | None:
    """``(yaw, pitch, roll)`` of a tiny head-pose answer, or ``None`` if it is not exactly valid."""
    match = _TOKEN_POSE_RE.fullmatch(text)
    if match is None:
        return None
    groups = match.groups()
    values = []
    for sign, magnitude in zip(groups[0::2], groups[1::2], strict=True):
        if sign == "-" and magnitude == "0":
            return None  # one spelling per value: zero is +<0>
        values.append(float(int(magnitude)) * (-1.0 if sign == "-" else 1.0))
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class BoxSyntax:
    """How one family writes a grid box in text, and its strict parser.

    Attributes:
        grid: the integer grid the values live on.
        template: ``str.format`` template with ``{x0} {y0} {x1} {y1}`` (already padded values).
        placeholder: the box as named in prompts, e.g. ``[[x0,y0,x1,y1]]``.
        pattern: regex that must match the whole answer, four groups in x0, y0, x1, y1 order.
    """

    grid: Grid
    template: str
    placeholder: str
    pattern: re.Pattern[str]

    def format(self, grid_box: GridBox) -> str:
        """Text of a grid box.

        Raises:
            ValueError: if a value is off the grid or the box is empty.
        """
        if not self.is_legal(grid_box):
            raise ValueError(f"box {grid_box} is not a non-empty box on the 0–{self.grid.max_value} grid")
        width = self.grid.digits
        x0, y0, x1, y1 = (f"{v:0{width}d}" for v in grid_box)
        return self.template.format(x0=x0, y0=y0, x1=x1, y1=y1)

    def parse(self, text: str) -> GridBox | None:
        """Grid values from a box answer, or ``None`` if it is not exactly valid."""
        match = self.pattern.fullmatch(text)
        if match is None:
            return None
        x0, y0, x1, y1 = (int(g) for g in match.groups())
        box = (x0, y0, x1, y1)
        return box if self.is_legal(box) else None

    def is_legal(self, grid_box: GridBox) -> bool:
        """On the grid and non-empty (``x0 < x1``, ``y0 < y1``)."""
        x0, y0, x1, y1 = grid_box
        return all(self.grid.on_grid(v) for v in grid_box) and x0 < x1 and y0 < y1


def _fixed(digits: int) -> str:
    return f"([0-9]{{{digits}}})"


_FREE = r"(0|[1-9][0-9]{0,3})"  # an integer without leading zeros

COGVLM_BOX = BoxSyntax(
    grid=COGVLM_GRID,
    template="[[{x0},{y0},{x1},{y1}]]",
    placeholder="[[x0,y0,x1,y1]]",
    pattern=re.compile(rf"\[\[{_fixed(3)},{_fixed(3)},{_fixed(3)},{_fixed(3)}\]\]"),
)
QWEN2_VL_BOX = BoxSyntax(
    grid=QWEN2_VL_GRID,
    template="<|box_start|>({x0},{y0}),({x1},{y1})<|box_end|>",
    placeholder="<|box_start|>(x0,y0),(x1,y1)<|box_end|>",
    pattern=re.compile(rf"<\|box_start\|>\({_FREE},{_FREE}\),\({_FREE},{_FREE}\)<\|box_end\|>"),
)
TINY_BOX = BoxSyntax(
    grid=TINY_GRID,
    template="[[<{x0}>,<{y0}>,<{x1}>,<{y1}>]]",
    placeholder="[[x0,y0,x1,y1]]",
    pattern=re.compile(rf"\[\[{NUMBER_PATTERN},{NUMBER_PATTERN},{NUMBER_PATTERN},{NUMBER_PATTERN}\]\]"),
)


@dataclass(frozen=True)
class PromptSet:
    """The two questions a family is asked.

    Attributes:
        grounding: template for "where is the head?"; ``{box_format}`` is filled with the
            family's box placeholder.
        headpose: template for "what is the pose of the head at this box?"; ``{box}`` is the
            head box in the family's syntax, ``{pose_format}`` the pose placeholder.
    """

    grounding: str = "Where is the head of the person? answer in {box_format} format."
    headpose: str = "What is the head pose of the person at {box}? answer in {pose_format} format."

    def grounding_prompt(self, syntax: BoxSyntax) -> str:
        """The grounding question in the family's box syntax."""
        return self.grounding.format(box_format=syntax.placeholder)

    def headpose_prompt(self, box_text: str) -> str:
        """The head-pose question about the head at ``box_text`` (already in the family's syntax)."""
        return self.headpose.format(box=box_text, pose_format=POSE_TEMPLATE)
