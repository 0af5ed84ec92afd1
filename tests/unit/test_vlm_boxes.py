"""One box schema: stored-frame pixels ↔ each family's grid, and the tiny model's resize agrees."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.vlm.boxes import COGVLM_GRID, QWEN2_VL_GRID, TINY_GRID, frame_to_model_pixels, iou
from pipeline.vlm.families import FAMILIES, get_family
from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_processor

GRIDS = {"cogvlm": COGVLM_GRID, "qwen2_vl": QWEN2_VL_GRID, "tiny": TINY_GRID}


@st.composite
def frame_and_box(draw):
    """A frame and a box at least one cell of the coarsest grid (1/100 of the frame) wide and high:
    thinner boxes are widened to stay non-empty on the grid, by up to a cell more."""
    width, height = draw(st.integers(8, 640)), draw(st.integers(8, 640))
    x0 = draw(st.floats(0, width * 0.99, allow_nan=False))
    y0 = draw(st.floats(0, height * 0.99, allow_nan=False))
    x1 = draw(st.floats(x0 + width / 100, width, allow_nan=False))
    y1 = draw(st.floats(y0 + height / 100, height, allow_nan=False))
    return width, height, (x0, y0, x1, y1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@given(frame_and_box())
def test_round_trip_within_one_grid_cell(family, case):
    width, height, box = case
    fam = get_family(family)
    back = fam.parse_grounding(fam.grounding_answer(box, width, height), width, height)
    assert back is not None
    cell = (fam.box.grid.cell(width), fam.box.grid.cell(height))
    for i, (a, b) in enumerate(zip(box, back, strict=True)):
        assert abs(a - b) <= cell[i % 2] + 1e-9, (box, back)


def test_grids_are_the_documented_ones():
    assert {n: f.box.grid for n, f in FAMILIES.items()} == GRIDS
    assert COGVLM_GRID.box_to_grid((0, 0, 100, 50), 100, 50) == (0, 0, 999, 999)  # 1000 clamps to 999
    assert QWEN2_VL_GRID.box_to_grid((0, 0, 100, 50), 100, 50) == (0, 0, 1000, 1000)
    assert TINY_GRID.box_to_grid((25, 10, 75, 40), 100, 50) == (25, 20, 75, 80)


def test_a_box_thinner_than_a_cell_stays_non_empty():
    assert TINY_GRID.box_to_grid((50.0, 10.0, 50.1, 10.1), 100, 100) == (50, 10, 51, 11)
    assert TINY_GRID.box_to_grid((99.9, 99.9, 100, 100), 100, 100) == (98, 98, 99, 99)
    with pytest.raises(ValueError):
        TINY_GRID.box_to_grid((0, 0, float("nan"), 1), 100, 100)


def test_iou():
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def _frame_with_rectangle(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    frame = np.full((height, width, 3), 20, dtype=np.uint8)
    x0, y0, x1, y1 = box
    frame[y0:y1, x0:x1] = 235
    return frame


def _brightness_inside_outside(pixels: np.ndarray, box) -> tuple[float, float]:
    """Mean of the model's input inside the box (shrunk by a pixel) and outside it (grown)."""
    size = pixels.shape[0]
    x0, y0, x1, y1 = box
    inner = pixels[int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1]
    outer = np.ones_like(pixels, dtype=bool)
    outer[
        max(0, int(y0) - 1) : min(size, int(np.ceil(y1)) + 1), max(0, int(x0) - 1) : min(size, int(np.ceil(x1)) + 1)
    ] = False
    return float(inner.mean()), float(pixels[outer].mean())


@pytest.mark.parametrize(("width", "height"), [(128, 128), (128, 96), (96, 128), (128, 64)])
def test_answer_box_lands_on_the_object_in_the_image_the_model_sees(width, height):
    """Training writes the box of the stored frame; inference parses the answer back and draws it on
    ``pixel_values`` (the processor's output). Both must point at the same object whatever the
    frame's aspect ratio — a centre crop in the processor would break this for non-square frames."""
    fam = get_family("tiny")
    processor = build_tiny_processor(TinyVLMConfig(image_size=64))
    target = (width // 4, height // 3, width // 2 + 10, height - height // 5)
    frame = _frame_with_rectangle(width, height, target)

    answer = fam.grounding_answer(target, width, height)  # what the model is trained to say
    parsed = fam.parse_grounding(answer, width, height)  # what inference reads back
    pixels = processor.image_processor(images=[frame], return_tensors="np")["pixel_values"][0].mean(0)
    assert pixels.shape == (64, 64)
    drawn = frame_to_model_pixels(parsed, (width, height), (pixels.shape[1], pixels.shape[0]))
    inside, outside = _brightness_inside_outside(pixels, drawn)
    assert inside > 1.5 and outside < -1.0, (inside, outside)  # normalised: bright ≈ +1.9, dark ≈ -1.5
    assert iou(parsed, target) > 0.9


def test_a_centre_cropping_processor_would_miss_the_object():
    """The check above has teeth: CLIP's default resize-shortest-edge + centre crop shifts the box."""
    from transformers import CLIPImageProcessorPil

    width, height, target = 128, 64, (4, 8, 28, 56)
    frame = _frame_with_rectangle(width, height, target)
    cropping = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    pixels = cropping(images=[frame], return_tensors="np")["pixel_values"][0].mean(0)
    drawn = frame_to_model_pixels(target, (width, height), (64, 64))
    inside, _ = _brightness_inside_outside(pixels, drawn)
    assert inside < 0.0
