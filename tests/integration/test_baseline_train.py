"""The 6DRepNet-style baseline end to end: tiny ingested 300W-LP → real Ray Train + DeepSpeed
loop (20 steps) → model folder → AFLW2000 scores in the metrics JSON. ~30–40 s on 2 shared
cores, most of it Ray Train start-up."""

from __future__ import annotations

import json

import pytest

from pipeline import stages
from pipeline.baselines import BaselineConfig, BaselineTask, load_baseline, train_baseline
from pipeline.baselines.predict import predict_table, true_poses
from pipeline.config import parse_params
from pipeline.evaluate.headpose import headpose_metrics
from pipeline.ingest import read_records
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration

CFG = {
    "width": 8,
    "stages": 2,
    "input_size": 32,
    "train": {"steps": 20, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 10, "seed": 0},
}
METRIC_KEYS = {"n", "n_valid", "invalid_rate", "mae_yaw", "mae_pitch", "mae_roll", "mae", "maev", "geodesic"}


@pytest.fixture(scope="module")
def tables(synthetic_raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_pq")
    params = parse_params({**tiny_params_dict(), "tracking": {"enabled": False}})
    for name in ("300w_lp", "aflw2000"):
        stages.ingest_stage(params, name, synthetic_raw / name, root / name, engine="local")
    return read_records(root / "300w_lp", "train"), read_records(root / "aflw2000", "test")


def test_train_baseline_through_the_loop_then_score_aflw2000(tables, tmp_path):
    train_table, aflw = tables
    summary = train_baseline(
        CFG, train_table, {"aflw2000": aflw}, tmp_path / "model", tmp_path / "runs", tmp_path / "metrics.json"
    )
    assert summary["steps"] == 20 and summary["resumed_from_step"] == 0
    assert summary["samples_per_s"] > 0

    model, cfg = load_baseline(tmp_path / "model")
    assert cfg == BaselineConfig.model_validate({**CFG, "train": {}})
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["baseline"] == "6drepnet" and metrics["steps"] == 20
    scores = metrics["test"]["aflw2000"]
    assert METRIC_KEYS <= set(scores) and scores["n"] == scores["n_valid"] == aflw.num_rows
    assert all(0 <= scores[k] <= 180 for k in METRIC_KEYS - {"n", "n_valid", "invalid_rate"})
    assert sum(b["n"] for b in scores["by_yaw_bin"]) == aflw.num_rows
    assert scores == summary["test"]["aflw2000"]

    # It learnt: the trained model fits its training poses better than its initial weights.
    init = BaselineTask(BaselineConfig.model_validate(CFG)).build_model()
    truth = true_poses(train_table)
    before = headpose_metrics(predict_table(init, cfg, train_table), truth)["geodesic"]
    after = headpose_metrics(predict_table(model, cfg, train_table), truth)["geodesic"]
    assert after < before, (before, after)
