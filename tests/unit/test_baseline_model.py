"""CNN baselines: shapes, collate on ingested Parquet, learning, save/load, user backbones."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pipeline import stages
from pipeline.baselines import BASELINES, BaselineConfig, BaselineTask, build_baseline, load_baseline, save_baseline
from pipeline.baselines.backbone import BACKBONES, build_backbone, register_backbone
from pipeline.baselines.hopenet import NUM_BINS, angle_to_bin, bin_centres
from pipeline.baselines.predict import evaluate_baseline, predict_table
from pipeline.config import parse_params
from pipeline.geometry import rotation_matrix
from pipeline.ingest import read_records
from tests.conftest import tiny_params_dict

# Augmentation off: these tests compare collate's output with the stored crops and labels
# (tests/unit/test_baseline_augment.py tests the augmentation itself).
SMALL = {"width": 8, "depth": 1, "stages": 2, "input_size": 32, "augment": {"enabled": False}}


def tiny_backbone(channels: int = 4) -> nn.Module:
    """A user backbone reached through an import path; returns feature *maps* (pooled by us)."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, stride=2), nn.ReLU())


@pytest.fixture(scope="module")
def table(synthetic_raw, tmp_path_factory) -> pa.Table:
    """Tiny 300W-LP, ingested (24 rows of 96² face crops)."""
    out = tmp_path_factory.mktemp("baseline_pq") / "300w_lp"
    params = parse_params({**tiny_params_dict(), "tracking": {"enabled": False}})
    stages.ingest_stage(params, "300w_lp", synthetic_raw / "300w_lp", out, engine="local")
    return read_records(out, "train")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_forward_shapes_and_finite_loss(name):
    cfg = BaselineConfig(name=name, **SMALL)
    model = build_baseline(cfg)
    out = model(torch.randn(5, 3, 32, 32))
    assert out.shape == {"6drepnet": (5, 6), "hopenet": (5, 3, NUM_BINS)}[name]
    assert model.euler(out).shape == (5, 3)
    angles = torch.tensor([[10.0, -20.0, 5.0]] * 5)
    batch = {"angles": angles, "rotation": torch.from_numpy(np.stack([rotation_matrix(10, -20, 5)] * 5)).float()}
    loss = model.loss(out, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_sixdrepnet_starts_at_a_frontal_pose():
    model = build_baseline(BaselineConfig(**SMALL)).eval()
    model.head.weight.data.zero_()
    assert torch.allclose(model.euler(model(torch.randn(2, 3, 32, 32))), torch.zeros(2, 3), atol=1e-5)


def test_hopenet_bins_and_expectation():
    assert angle_to_bin(torch.tensor([-120.0, -99.0, -96.01, -96.0, 0.0, 98.9, 150.0])).tolist() == [
        0, 0, 0, 1, 33, 65, 65,
    ]  # fmt: skip
    centres = bin_centres()
    assert centres[0] == -97.5 and centres[-1] == 97.5
    logits = torch.full((1, 3, NUM_BINS), -1e4)
    logits[0, 0, 40], logits[0, 1, 10], logits[0, 2, 33] = 0.0, 0.0, 0.0
    model = build_baseline(BaselineConfig(name="hopenet", **SMALL))
    assert model.euler(logits).tolist() == [[centres[40].item(), centres[10].item(), centres[33].item()]]


def test_collate_decodes_normalises_and_builds_targets(table):
    rows = table.slice(0, 6).to_pylist()
    task = BaselineTask(BaselineConfig(flip=False, **SMALL))
    batch = task.collate(rows)
    assert batch["image"].shape == (6, 3, 32, 32) and batch["image"].dtype == torch.float32
    # Standardised per image: zero mean, unit std each.
    flat = batch["image"].flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(6), atol=1e-4) and torch.allclose(
        flat.std(1), torch.ones(6), atol=1e-3
    )
    for i, r in enumerate(rows):
        assert np.allclose(batch["rotation"][i].numpy(), rotation_matrix(r["yaw"], r["pitch"], r["roll"]), atol=1e-6)
        assert np.allclose(batch["angles"][i].numpy(), [r["yaw"], r["pitch"], r["roll"]], atol=1e-4)


def test_collate_flip_mirrors_images_and_negates_yaw_and_roll(table):
    rows = table.slice(0, 16).to_pylist()
    plain = BaselineTask(BaselineConfig(flip=False, **SMALL)).collate(rows)
    torch.manual_seed(3)
    flipped = BaselineTask(BaselineConfig(flip=True, **SMALL)).collate(rows)
    torch.manual_seed(3)
    again = BaselineTask(BaselineConfig(flip=True, **SMALL)).collate(rows)
    assert all(torch.equal(flipped[k], again[k]) for k in flipped)  # seeded by the torch RNG
    mirrored = flipped["angles"][:, 0] != plain["angles"][:, 0]
    assert 0 < int(mirrored.sum()) < 16
    for i in range(16):
        if mirrored[i]:
            assert torch.allclose(flipped["image"][i], plain["image"][i].flip(-1), atol=1e-5)  # sums reorder
            assert torch.allclose(flipped["angles"][i], plain["angles"][i] * torch.tensor([-1.0, 1.0, -1.0]))
        else:
            assert torch.equal(flipped["image"][i], plain["image"][i])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_a_few_optimizer_steps_reduce_the_loss(table, name):
    task = BaselineTask(BaselineConfig(name=name, flip=False, **SMALL))
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.collate(table.slice(0, 16).to_pylist())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and losses[-1] == min(losses), losses


def test_build_model_is_deterministic_and_the_task_pickles():
    task = BaselineTask(BaselineConfig(**SMALL), torch_threads=1)
    a, b = task.build_model(), pickle.loads(pickle.dumps(task)).build_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    other = BaselineTask(BaselineConfig(init_seed=1, **SMALL)).build_model()
    assert not torch.equal(a.head.weight, other.head.weight)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_save_load_round_trip_gives_identical_outputs(table, tmp_path, name):
    cfg = BaselineConfig(name=name, **SMALL)
    task = BaselineTask(cfg)
    model = task.build_model()
    task.loss(model, task.collate(table.slice(0, 8).to_pylist())).backward()  # BN statistics move off init
    save_baseline(model, cfg, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["name"] == name
    loaded, loaded_cfg = load_baseline(tmp_path / "m")
    assert loaded_cfg == cfg and not loaded.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert predict_table(model, cfg, table) == predict_table(loaded, loaded_cfg, table)


def test_load_baseline_refuses_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_baseline(tmp_path)


def test_evaluate_baseline_reports_headpose_metrics(table, tmp_path):
    cfg = BaselineConfig(**SMALL)
    save_baseline(BaselineTask(cfg).build_model(), cfg, tmp_path / "m")
    scores = evaluate_baseline(tmp_path / "m", table, batch_size=10)
    assert scores["n"] == scores["n_valid"] == table.num_rows and scores["invalid_rate"] == 0.0
    assert all(scores[k] >= 0 for k in ("mae_yaw", "mae_pitch", "mae_roll", "mae", "maev", "geodesic"))
    assert sum(b["n"] for b in scores["by_yaw_bin"]) == table.num_rows


def test_user_backbone_from_an_import_path(table, tmp_path):
    cfg = BaselineConfig(
        backbone="tests.unit.test_baseline_model:tiny_backbone", backbone_kwargs={"channels": 6}, **SMALL
    )
    task = BaselineTask(cfg)
    task.preflight()
    model = task.build_model()
    assert model.head.in_features == 6
    loss = task.loss(model, task.collate(table.slice(0, 4).to_pylist()))
    assert torch.isfinite(loss)
    save_baseline(model, cfg, tmp_path / "m")
    loaded, _ = load_baseline(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_user_backbone_from_the_registry(monkeypatch):
    monkeypatch.setattr("pipeline.baselines.backbone.BACKBONES", dict(BACKBONES))
    from pipeline.baselines import backbone as bb

    @register_backbone("mlp_test")
    def mlp(width: int, depth: int, stages: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, width))

    assert "mlp_test" in bb.BACKBONES and "mlp_test" not in BACKBONES
    module, features = build_backbone("mlp_test", width=5, depth=1, stages=1, input_size=32)
    assert features == 5 and module(torch.randn(3, 3, 32, 32)).shape == (3, 5)


def test_bad_names_fail_listing_the_valid_ones():
    with pytest.raises(ValidationError, match="valid: 6drepnet, hopenet"):
        BaselineConfig(name="resnet")
    with pytest.raises(ValidationError, match="small_cnn or an import path"):
        BaselineConfig(backbone="resnet50")
    with pytest.raises(ValidationError, match="zero_stag"):
        BaselineConfig(train={"zero_stag": 2})
    with pytest.raises(ValidationError, match="widht"):
        BaselineConfig(widht=8)
    with pytest.raises(ImportError, match="no attribute"):
        BaselineTask(BaselineConfig(backbone="tests.unit.test_baseline_model:missing")).preflight()


def test_a_backbone_with_the_wrong_output_shape_fails_clearly():
    with pytest.raises(ValueError, match=r"expected \(2, F\) or \(2, F, h, w\)"):
        build_backbone("torch.nn:Flatten", width=1, depth=1, stages=1, input_size=16, kwargs={"start_dim": 0})
