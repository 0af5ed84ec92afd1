"""One box schema, several conventions.

Parquet stores every box as ``[x0, y0, x1, y1]`` in *continuous pixel coordinates of the stored
frame* (pixel ``i`` covers ``[i, i + 1)``, so a box may reach ``x1 = width``). A VLM family
writes boxes as integers on a grid over the image, normalised to its width and height:

============ ============== ===========================================================
family       grid           cell
============ ============== ===========================================================
``cogvlm``   000–999        ``round(x / width * 1000)`` clamped to 999 (CogVLM-grounding)
``qwen2_vl`` 0–1000         ``round(x / width * 1000)`` (Qwen2-VL ``<|box_start|>``)
``tiny``     0–99           ``round(x / width * 100)`` clamped to 99 (one number token each)
============ ============== ===========================================================

A normalised grid is independent of the processor's resize *as long as the processor resizes the
whole frame* (no centre crop, no padding): the tiny processor resizes to ``image_size``² without a
crop, Qwen2-VL's resizes to a multiple of 28 without a crop, and CogVLM's to 490² — so a box at
``x / width`` of the stored frame is at the same fraction of the image the model sees.
:func:`frame_to_model_pixels` makes that explicit for the checks that draw on the model's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Box = tuple[float, float, float, float]
GridBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Grid:
    """An integer coordinate grid over an image, normalised to its width and height.

    Attributes:
        cells: grid steps across the whole image (a coordinate ``x`` maps to ``x / extent * cells``).
        max_value: largest value written (``cells - 1`` for CogVLM's 000–999, ``cells`` for 0–1000).
        digits: zero-padded width of a value in text, or 0 for no padding.
    """

    cells: int
    max_value: int
    digits: int = 0

    def to_grid(self, x: float, extent: float) -> int:
        """Grid value of coordinate ``x`` on an axis of length ``extent`` (rounded, clamped)."""
        return min(self.max_value, max(0, round(x / extent * self.cells)))

    def from_grid(self, value: int, extent: float) -> float:
        """Pixel coordinate of grid ``value`` on an axis of length ``extent``."""
        return value / self.cells * extent

    def box_to_grid(self, box: Box, width: float, height: float) -> GridBox:
        """A pixel box on this grid; never degenerate.

        A box thinner than a cell would round to ``x0 == x1``, which no parser accepts as an
        answer: the far edge is pushed one cell out (or the near edge one in at the border).

        Raises:
            ValueError: on a non-finite box or a non-positive image size.
        """
        if not (width > 0 and height > 0) or not all(math.isfinite(v) for v in box):
            raise ValueError(f"cannot put box {box} of a {width}×{height} image on a grid")
        x0, y0, x1, y1 = box
        gx0, gx1 = _ordered(self.to_grid(x0, width), self.to_grid(x1, width), self.max_value)
        gy0, gy1 = _ordered(self.to_grid(y0, height), self.to_grid(y1, height), self.max_value)
        return gx0, gy0, gx1, gy1

    def box_from_grid(self, grid_box: GridBox, width: float, height: float) -> Box:
        """The pixel box of grid values ``(x0, y0, x1, y1)``."""
        x0, y0, x1, y1 = grid_box
        return (
            self.from_grid(x0, width),
            self.from_grid(y0, height),
            self.from_grid(x1, width),
            self.from_grid(y1, height),
        )

    def cell(self, extent: float) -> float:
        """Size of one grid step in pixels on an axis of length ``extent``."""
        return extent / self.cells

    def on_grid(self, value: int) -> bool:
        """Whether ``value`` is a value this grid writes."""
        return 0 <= value <= self.max_value


def _ordered(lo: int, hi: int, max_value: int) -> tuple[int, int]:
    if hi > lo:
        return lo, hi
    hi = lo + 1
    if hi > max_value:
        lo, hi = max_value - 1, max_value
    return lo, hi


COGVLM_GRID = Grid(cells=1000, max_value=999, digits=3)
QWEN2_VL_GRID = Grid(cells=1000, max_value=1000, digits=0)
TINY_GRID = Grid(cells=100, max_value=99, digits=0)  # one number token per value


def frame_to_model_pixels(box: Box, frame_size: tuple[int, int], model_size: tuple[int, int]) -> Box:
    """A stored-frame box in pixels of the image the model sees after a whole-frame resize.

    Args:
        box: ``(x0, y0, x1, y1)`` in stored-frame pixels.
        frame_size: stored frame ``(width, height)``.
        model_size: processed image ``(width, height)`` (e.g. ``pixel_values.shape[-1:-3:-1]``).

    Returns:
        The box scaled axis by axis (the resize does not keep the aspect ratio).
    """
    sx, sy = model_size[0] / frame_size[0], model_size[1] / frame_size[1]
    x0, y0, x1, y1 = box
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
