"""Parquet rows → VLM examples → training inputs (loss on the answer only) → batched answers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.config import parse_params
from pipeline.imaging import encode_jpeg
from pipeline.ingest import ingest, read_records
from pipeline.vlm.boxes import iou
from pipeline.vlm.examples import (
    IGNORE_INDEX,
    collate,
    crop_example,
    crop_row,
    examples_from_rows,
    generate_answers,
    grounding_example,
    random_crop,
    random_window,
)
from pipeline.vlm.families import get_family
from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm
from tests.conftest import tiny_params_dict

os.environ["HF_HUB_OFFLINE"] = "1"

SMALL = TinyVLMConfig(hidden_size=64, intermediate_size=128, vision_hidden_size=64, vision_intermediate_size=128)


@pytest.fixture(scope="module")
def rows(synthetic_raw, tmp_path_factory):
    """The tiny synthetic 300W-LP ingested into real Parquet records (24 rows)."""
    params = parse_params(tiny_params_dict())
    out = tmp_path_factory.mktemp("vlm_rows") / "300w_lp"
    ingest(
        "300w_lp",
        synthetic_raw / "300w_lp",
        out,
        seed=params.seed,
        crop_margin=params.ingest.dataset("300w_lp").crop_margin,
        settings=params.ingest.model_dump(exclude={"datasets"}),
        engine="local",
    )
    return read_records(out).to_pylist()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vlm(SMALL)


def test_examples_from_parquet_rows(rows):
    fam = get_family("tiny")
    examples = examples_from_rows(rows[:3], fam)
    assert [e.task for e in examples] == ["grounding", "headpose"] * 3
    for row, (ground, pose) in zip(rows[:3], zip(examples[::2], examples[1::2], strict=True), strict=True):
        width, height = row["frame_width"], row["frame_height"]
        assert ground.image.shape == (height, width, 3) and ground.size == (width, height)
        assert ground.prompt == fam.grounding_prompt()
        assert iou(fam.parse_grounding(ground.answer, width, height), tuple(row["head_box"])) > 0.9
        # The tiny family is asked on a square crop around the box, the box centred in it.
        side = pose.size[0]
        assert pose.size[0] == pose.size[1] and side > 1
        hx0, hy0, hx1, hy1 = pose.head_box
        assert abs((hx0 + hx1) / 2 - side / 2) <= 1 and abs((hy0 + hy1) / 2 - side / 2) <= 1
        assert max(hx1 - hx0, hy1 - hy0) * fam.headpose_context == pytest.approx(side, abs=1)
        assert pose.prompt == fam.headpose_prompt(pose.head_box, side, side)
        assert pose.prompt.startswith("What is the head pose of the person at [[")
        assert fam.parse_headpose(pose.answer) == tuple(float(round(row[k])) for k in ("yaw", "pitch", "roll"))
        assert pose.target == (row["yaw"], row["pitch"], row["roll"]) and pose.source_id == row["source_id"]
    with pytest.raises(KeyError, match="grounding, headpose"):
        examples_from_rows(rows[:1], fam, tasks=("caption",))


def test_bad_rows_are_named(rows):
    fam = get_family("tiny")
    row = dict(rows[0])
    with pytest.raises(ValueError, match=f"row {row['source_id']}: field 'head_box'"):
        grounding_example({**row, "head_box": None}, fam)
    with pytest.raises(ValueError, match="not a non-empty"):
        grounding_example({**row, "head_box": [10.0, 10.0, 5.0, 20.0]}, fam)
    with pytest.raises(ValueError, match="frame_width×frame_height"):
        grounding_example({**row, "frame_jpeg": encode_jpeg(np.zeros((10, 20, 3), np.uint8), 90)}, fam)
    with pytest.raises(ValueError, match="outside ±180"):
        examples_from_rows([{**row, "yaw": 190.0}], fam, tasks=("headpose",))


def test_crops_move_the_box_and_keep_the_pose(rows):
    fam = get_family("tiny")
    ground, pose = examples_from_rows(rows[:1], fam)
    x0, y0, x1, y1 = ground.target
    window = (int(x0) - 3, int(y0) - 2, int(np.ceil(x1)) + 5, int(np.ceil(y1)) + 1)
    cropped = crop_example(ground, fam, window)
    assert cropped.image.shape == (window[3] - window[1], window[2] - window[0], 3)
    assert np.array_equal(cropped.image, ground.image[window[1] : window[3], window[0] : window[2]])
    assert cropped.target == pytest.approx((x0 - window[0], y0 - window[1], x1 - window[0], y1 - window[1]))
    assert cropped.answer == fam.grounding_answer(cropped.target, *cropped.size)
    # The tiny head-pose example is already a crop around the box: crop it again inside that.
    px0, py0, px1, py1 = pose.head_box
    inner = (max(0, int(px0) - 1), max(0, int(py0) - 1), min(pose.size[0], int(np.ceil(px1)) + 1), pose.size[1])
    moved = crop_example(pose, fam, inner)
    shifted = (px0 - inner[0], py0 - inner[1], px1 - inner[0], py1 - inner[1])
    assert moved.answer == pose.answer and moved.head_box == pytest.approx(shifted)
    assert moved.prompt == fam.headpose_prompt(moved.head_box, *moved.size)
    with pytest.raises(ValueError, match="cuts the head box"):
        crop_example(ground, fam, (int(x0) + 2, 0, ground.size[0], ground.size[1]))

    for seed in range(20):
        for ex in (ground, pose):
            a = random_crop(ex, fam, np.random.default_rng(seed), min_scale=0.5)
            b = random_crop(ex, fam, np.random.default_rng(seed), min_scale=0.5)
            assert a.prompt == b.prompt and a.answer == b.answer  # the caller's generator decides
            box = a.target if a.task == "grounding" else a.head_box
            w, h = a.size
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
            assert w >= 0.5 * ex.size[0] - 1 and h >= 0.5 * ex.size[1] - 1


def test_cropped_rows_agree_with_cropped_examples(rows):
    fam = get_family("tiny")
    row = rows[0]
    window = random_window(row["head_box"], row["frame_width"], row["frame_height"], np.random.default_rng(3), 0.6)
    cut = crop_row(row, window)
    assert (cut["frame_width"], cut["frame_height"]) == (window[2] - window[0], window[3] - window[1])
    from_row = grounding_example(cut, fam)
    from_example = crop_example(grounding_example(row, fam), fam, window)
    assert from_row.answer == from_example.answer and from_row.target == pytest.approx(from_example.target)
    # JPEG re-encoding: the pixels agree up to compression noise.
    assert np.abs(from_row.image.astype(int) - from_example.image.astype(int)).mean() < 4


def test_heldout_crops_are_fixed_by_seed_and_move_the_heads(rows):
    import pyarrow as pa

    from pipeline.vlm.stages import heldout_crops

    params = parse_params(tiny_params_dict())
    table = pa.Table.from_pylist(rows)
    a, b = heldout_crops(params, table, 6), heldout_crops(params, table, 6)
    assert a.equals(b) and a.num_rows == 6
    moved = [r["head_box"] != o["head_box"] for r, o in zip(a.to_pylist(), rows[:6], strict=True)]
    assert any(moved)


def test_collate_puts_the_loss_on_the_answer_and_end_token_only(rows, tiny):
    model, processor = tiny
    fam = get_family("tiny")
    examples = examples_from_rows(rows[:2], fam)
    batch = collate(examples, fam, processor)
    tok = processor.tokenizer
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    for i, ex in enumerate(examples):
        n = int(mask[i].sum())
        prompt_text = fam.model_text(processor, ex.prompt)
        answer = labels[i][labels[i] != IGNORE_INDEX]
        assert tok.decode(answer) == ex.answer + "</s>"
        # the answer is the last tokens of the row, right after the prompt; padding after it
        assert torch.equal(ids[i, n - len(answer) : n], answer)
        assert (labels[i, : n - len(answer)] == IGNORE_INDEX).all() and (labels[i, n:] == IGNORE_INDEX).all()
        assert (
            tok.decode(ids[i, : n - len(answer)]).replace("<image>" * SMALL.num_image_tokens, "<image>") == prompt_text
        )
        assert (ids[i, n:] == tok.pad_token_id).all()
    assert (mask.sum(1) != mask.shape[1]).any()  # grounding and head-pose rows differ in length: padding ran

    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 1.0  # untrained: far from the answers
    with pytest.raises(ValueError, match="max_length"):
        collate(examples, fam, processor, max_length=100)


def test_batched_left_padded_generation_matches_one_by_one(rows, tiny):
    model, processor = tiny
    fam = get_family("tiny")
    examples = examples_from_rows(rows[:2], fam)  # grounding and head-pose prompts differ in length
    images, prompts = [e.image for e in examples], [e.prompt for e in examples]
    batched = generate_answers(model, processor, fam, images, prompts, max_new_tokens=12)
    single = [
        generate_answers(model, processor, fam, [im], [p], max_new_tokens=12)[0]
        for im, p in zip(images, prompts, strict=True)
    ]
    assert batched == single
    assert all(isinstance(a, str) and "</s>" not in a and "<pad>" not in a for a in batched)


def test_task_crops_follow_the_loops_torch_seed(rows):
    from pipeline.vlm.task import VLMTask

    task = VLMTask(rehearsal=1.0, crop_min_scale=0.6)
    batches = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)  # the loop seeds torch per step before collating
        batches.append(task.collate(rows[:4]))
    assert torch.equal(batches[0]["labels"], batches[1]["labels"])  # a resumed run sees the same crops
    assert not torch.equal(batches[0]["pixel_values"], batches[2]["pixel_values"])  # another step, other crops
    whole = VLMTask(rehearsal=1.0, crop_min_scale=None).collate(rows[:4])
    assert whole["pixel_values"].shape == batches[0]["pixel_values"].shape


def test_face_crops_are_standardised_and_a_uniform_crop_stays_uniform():
    from pipeline.vlm.examples import CROP_MEAN, CROP_STD, standardise_crop

    rng = np.random.default_rng(0)
    dark = (rng.random((40, 40, 3)) * 30 + 10).astype(np.uint8)  # BIWI-like: dark and flat
    out = standardise_crop(dark)
    assert out.dtype == np.uint8 and out.shape == dark.shape
    assert abs(out.mean() - CROP_MEAN) < 1.0 and abs(out.std() - CROP_STD) < 1.0
    # An affine change of brightness and contrast gives the same crop (to rounding).
    brighter = np.clip(dark.astype(np.float32) * 3 + 60, 0, 255).astype(np.uint8)
    assert np.abs(standardise_crop(brighter).astype(int) - out.astype(int)).max() <= 3
    grey = np.full((40, 40, 3), 37, np.uint8)  # the blank-image ablation
    assert (standardise_crop(grey) == int(CROP_MEAN)).all()


def test_evaluation_crops_are_the_standardised_face_crop(rows):
    from pipeline.imaging import decode_jpeg
    from pipeline.vlm.examples import face_crop, face_window, headpose_example, standardise_crop

    family = get_family("tiny")
    row = rows[0]
    window = face_window(row["head_box"], family.headpose_context)
    expected = standardise_crop(face_crop(decode_jpeg(row["frame_jpeg"]), window))
    assert np.array_equal(np.asarray(headpose_example(row, family).image), expected)


def test_face_window_zoom_widens_the_training_crop_only():
    from pipeline.vlm.examples import face_window

    box = (20.0, 30.0, 60.0, 80.0)  # longer side 50 → window side 1.25 × 50 = 62.5
    fixed = face_window(box, 1.25)
    assert face_window(box, 1.25, None, 0.0, zoom=2.0) == fixed  # no rng: the evaluation crop
    assert face_window(box, 1.25, np.random.default_rng(0), 0.0, zoom=1.0) == fixed  # zoom 1: off
    rng = np.random.default_rng(0)
    windows = [face_window(box, 1.25, rng, 0.0, zoom=2.0) for _ in range(400)]
    sides = [w[2] - w[0] for w in windows]
    assert all(w[2] - w[0] == w[3] - w[1] for w in windows)  # still square
    assert 62 <= min(sides) < 70 and 118 < max(sides) <= 125  # log-uniform in [62.5, 125]
    assert 80 < np.median(sides) < 97  # about the geometric mean, 88, not the midpoint 94


def test_augmented_face_moves_its_box_with_the_face_and_turns_the_pose_exactly():
    from pipeline.baselines.augment import AugmentConfig, rotate_pose
    from pipeline.vlm.examples import augment_face

    geometric_only = AugmentConfig(
        rotate_deg=30, scale=(0.8, 1.2), translate=0.1, gain=0, gamma=(1, 1), grey_prob=0, noise_std=0, blur_prob=0
    )
    rng = np.random.default_rng(1)
    pose = (25.0, -10.0, 5.0)
    for _ in range(20):
        crop = np.zeros((80, 80, 3), np.uint8)
        crop[38:42, 28:32] = 255  # a marker whose centre (29.5, 39.5) is the box's centre
        box = (19.5, 29.5, 39.5, 49.5)
        state = rng.bit_generator.state
        out, moved, new_pose = augment_face(crop, box, pose, rng, geometric_only)
        rng2 = np.random.default_rng(1)  # replays the draw: theta comes first
        rng2.bit_generator.state = state
        theta = float(rng2.uniform(-30, 30))
        ys, xs = np.nonzero(out[..., 0] > 128)
        centre = ((moved[0] + moved[2]) / 2, (moved[1] + moved[3]) / 2)
        assert abs(xs.mean() - centre[0]) < 1.0 and abs(ys.mean() - centre[1]) < 1.0
        side = moved[2] - moved[0]
        assert 0.8 * 20 - 1e-9 <= side <= 1.2 * 20 + 1e-9 and moved[3] - moved[1] == pytest.approx(side)
        assert new_pose == pytest.approx(rotate_pose(*pose, theta))


def test_head_pose_augmentation_is_training_only_and_off_when_disabled(rows):
    from pipeline.baselines.augment import AugmentConfig
    from pipeline.vlm.examples import headpose_example

    family = get_family("tiny")
    row = rows[0]
    plain = headpose_example(row, family, np.random.default_rng(0), 0.1)
    off = headpose_example(row, family, np.random.default_rng(0), 0.1, augment=AugmentConfig(enabled=False))
    assert np.array_equal(np.asarray(plain.image), np.asarray(off.image)) and plain.answer == off.answer
    fixed = headpose_example(row, family, None, 0.1, augment=AugmentConfig())  # no rng: evaluation
    assert np.array_equal(np.asarray(fixed.image), np.asarray(headpose_example(row, family).image))
    on = headpose_example(row, family, np.random.default_rng(0), 0.1, augment=AugmentConfig(rotate_deg=30))
    assert not np.array_equal(np.asarray(on.image), np.asarray(plain.image))
    assert on.target[2] != pytest.approx(plain.target[2])  # the rotation turned the roll
    assert on.answer == family.headpose_answer(*on.target)
