"""Yardsticks: the held-out split keeps flip twins together, chance is the training median's
score, blank frames keep the frame size and nothing else, and the evaluation asks the in-domain
and blank-image questions beside the cross-dataset ones."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline import stages
from pipeline.config import parse_params
from pipeline.evaluate.headpose import headpose_metrics
from pipeline.evaluate.yardsticks import (
    BLANK_SUFFIX,
    IN_DOMAIN,
    blank_frames,
    chance_pose,
    chance_scores,
    picture_key,
    split_heldout,
)
from pipeline.imaging import decode_jpeg
from pipeline.ingest import read_records
from tests.conftest import tiny_params_dict


def test_picture_key_unflips_300w_lp_twins_only():
    assert picture_key("AFW_Flip/AFW_1_1_0") == picture_key("AFW/AFW_1_1_0") == "AFW/AFW_1_1_0"
    assert picture_key("hpdb/01/frame_00001") == "hpdb/01/frame_00001"
    assert picture_key("image00002") == "image00002"


def test_split_keeps_flip_twins_on_one_side():
    ids = [f"{s}{f}/{s}_{i}_1_0" for s in ("AFW", "HELEN") for f in ("", "_Flip") for i in range(200)]
    table = pa.table({"source_id": ids, "yaw": np.arange(len(ids), dtype=float)})
    train, held = split_heldout(table, seed=0, fraction=0.1)
    assert train.num_rows + held.num_rows == table.num_rows
    held_keys = {picture_key(s) for s in held.column("source_id").to_pylist()}
    train_keys = {picture_key(s) for s in train.column("source_id").to_pylist()}
    assert not held_keys & train_keys  # no picture on both sides, mirrored or not
    assert 0.05 < held.num_rows / table.num_rows < 0.15
    again_train, again_held = split_heldout(table, seed=0, fraction=0.1)
    assert again_held.equals(held)  # a fixed split
    assert not split_heldout(table, seed=1, fraction=0.1)[1].equals(held)


def test_chance_is_the_training_median_scored_like_a_model():
    rng = np.random.default_rng(0)
    train = pa.table({a: rng.normal(5.0, 20.0, 101) for a in ("yaw", "pitch", "roll")})
    test = pa.table({a: rng.normal(0.0, 30.0, 50) for a in ("yaw", "pitch", "roll")})
    pose = chance_pose(train)
    assert pose == pytest.approx(tuple(float(np.median(train.column(a).to_numpy())) for a in ("yaw", "pitch", "roll")))
    scores = chance_scores(train, {"t": test})
    truth = list(zip(*(test.column(a).to_pylist() for a in ("yaw", "pitch", "roll")), strict=True))
    assert scores["t"]["mae"] == pytest.approx(headpose_metrics([pose] * 50, truth)["mae"])
    assert scores["answer"] == dict(zip(("yaw", "pitch", "roll"), pose, strict=True))


@pytest.fixture(scope="module")
def parquet(synthetic_raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("yardsticks_pq")
    params = parse_params({**tiny_params_dict(), "tracking": {"enabled": False}})
    for name, raw in (("300w_lp", "300w_lp"), ("aflw2000", "aflw2000"), ("biwi_hpdb", "biwi")):
        stages.ingest_stage(params, name, synthetic_raw / raw, root / name, engine="local")
    return root


def test_blank_frames_keep_size_and_nothing_of_the_picture(parquet):
    table = read_records(parquet / "aflw2000", "test").slice(0, 4)
    blank = blank_frames(table)
    assert blank.drop_columns(["frame_jpeg"]).equals(table.drop_columns(["frame_jpeg"]))
    for real, grey in zip(table.column("frame_jpeg").to_pylist(), blank.column("frame_jpeg").to_pylist(), strict=True):
        a, b = decode_jpeg(real), decode_jpeg(grey)
        assert a.shape == b.shape and b.std() < 1.0 and a.std() > 10.0


def test_evaluation_asks_in_domain_cross_dataset_and_blank_questions(parquet):
    from pipeline.evaluate.vlm_stage import question_table
    from pipeline.vlm.stages import grounding_rows

    params = parse_params({**tiny_params_dict(), "vlm": {**tiny_params_dict()["vlm"], "heldout_fraction": 0.3}})
    q = question_table(params, parquet)
    sets = q.column("eval_set").to_pylist()
    for name in (IN_DOMAIN, IN_DOMAIN + BLANK_SUFFIX, *params.evaluate.headpose_sets, "grounding"):
        assert name in sets, name
    real = q.filter(pa.compute.equal(q.column("eval_set"), IN_DOMAIN))
    blank = q.filter(pa.compute.equal(q.column("eval_set"), IN_DOMAIN + BLANK_SUFFIX))
    assert real.column("source_id").equals(blank.column("source_id"))  # the same questions
    assert real.column("head_box").equals(blank.column("head_box"))
    train, held = grounding_rows(params, parquet)
    assert set(real.column("source_id").to_pylist()) <= set(held.column("source_id").to_pylist())
    held_keys = {picture_key(s) for s in held.column("source_id").to_pylist()}
    assert not held_keys & {picture_key(s) for s in train.column("source_id").to_pylist()}
