"""ViTPose / VLPose models and tasks: the revert guarantee (bit for bit), what trains and what
stays frozen, a few optimizer steps on four crops, and save → load giving identical outputs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from pipeline.pose2d.artifacts import load_pose_model, save_vitpose
from pipeline.pose2d.model import VLPoseModel
from pipeline.pose2d.task import ViTPoseTask, VLPoseTask
from pipeline.pose2d.vitpose import ViTPoseSize, build_vitpose, load_vitpose
from tests.unit._pose2d_data import TINY_SIZE, four_crops

STEPS = 5


def _train(task, model: torch.nn.Module, batch: dict, steps: int, lr: float = 2e-3) -> list[float]:
    """A plain AdamW loop (the Ray/DeepSpeed loop calls the same task methods)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    return four_crops(tmp_path_factory)


@pytest.fixture(scope="module")
def vitpose_run(rows, tmp_path_factory) -> dict:
    """The original ViTPose, from scratch, a few steps on four crops, saved as VLPose's base."""
    task = ViTPoseTask(size=TINY_SIZE, seed=0)
    model = task.build_model()
    batch = task.collate(rows)
    losses = _train(task, model, batch, STEPS)
    folder = tmp_path_factory.mktemp("vitpose") / "model"
    task.save(model, folder)
    return {"task": task, "model": model.eval(), "batch": batch, "losses": losses, "folder": folder}


@pytest.fixture(scope="module")
def vlpose_run(rows, vitpose_run) -> dict:
    """VLPose on the saved ViTPose: a fresh model's heatmaps, then a few steps, with snapshots."""
    task = VLPoseTask(base_dir=str(vitpose_run["folder"]), seed=0)
    model = task.build_model()
    batch = task.collate(rows)
    with torch.no_grad():
        at_init = model(batch["pixel_values"], batch["text_embeds"])
    frozen = {k: v.clone() for k, v in model.original.state_dict().items()}
    extras = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    losses = _train(task, model, batch, STEPS)
    return {
        "task": task,
        "model": model.eval(),
        "batch": batch,
        "losses": losses,
        "at_init": at_init,
        "frozen": frozen,
        "extras": extras,
    }


def test_vitpose_from_scratch_learns_and_builds_deterministically(vitpose_run):
    losses = vitpose_run["losses"]
    assert losses[-1] < losses[0]
    a, b = build_vitpose(ViTPoseSize(**TINY_SIZE), seed=0), build_vitpose(ViTPoseSize(**TINY_SIZE), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert vitpose_run["task"].geometry == ((128, 96), (32, 24))


def test_head_only_fine_tuning_freezes_the_backbone(vitpose_run):
    task = ViTPoseTask(model_dir=str(vitpose_run["folder"]), train_backbone=False)
    model = task.build_model()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_revert_guarantee_is_bit_exact(vlpose_run, vitpose_run):
    model, batch = vlpose_run["model"], vlpose_run["batch"]
    original = load_vitpose(vitpose_run["folder"]).eval()  # an independent copy of the original
    with torch.no_grad():
        reference = original(pixel_values=batch["pixel_values"]).heatmaps
        reverted = model(batch["pixel_values"], inject=False)
        adapted = model(batch["pixel_values"], batch["text_embeds"])
    assert torch.equal(reverted, reference)
    assert torch.equal(vlpose_run["at_init"], reference)  # zero-initialised injectors: starts as the original
    assert not torch.equal(adapted, reference)  # …and training moved it
    model.inject = False
    try:
        with torch.no_grad():
            assert torch.equal(model(batch["pixel_values"], batch["text_embeds"]), reference)
    finally:
        model.inject = True


def test_vlpose_trains_matcher_and_twin_only(vlpose_run):
    model = vlpose_run["model"]
    losses = vlpose_run["losses"]
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in model.original.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in {"matcher", "twin", "injectors"} for n in trainable)
    after = model.original.state_dict()
    assert all(torch.equal(after[k], v) for k, v in vlpose_run["frozen"].items())  # BN statistics included
    extras = model.trainable_state_dict()
    assert any(not torch.equal(extras[k], v) for k, v in vlpose_run["extras"].items())
    model.train()
    assert not model.original.training and model.twin.training
    model.eval()


def test_save_load_round_trip_gives_identical_outputs(vlpose_run, vitpose_run, rows, tmp_path):
    model, task, batch = vlpose_run["model"], vlpose_run["task"], vlpose_run["batch"]
    task.save(model, tmp_path / "vlpose")
    est = load_pose_model(tmp_path / "vlpose")
    assert est.kind == "vlpose" and isinstance(est.model, VLPoseModel) and len(est.prompt_table) >= 21
    with torch.no_grad():
        want = model(batch["pixel_values"], batch["text_embeds"])
    got = est.heatmaps(batch["pixel_values"], [r["scene"] for r in rows], [r["super_category"] for r in rows])
    assert torch.equal(got, want)
    assert est._encoder is None  # known scenes: the saved prompt table, no text encoder
    reverted = load_pose_model(tmp_path / "vlpose" / "original")  # the original, recovered from disk
    assert torch.equal(reverted.heatmaps(batch["pixel_values"]), model(batch["pixel_values"], inject=False))

    vit = vitpose_run["model"]
    save_vitpose(vit, tmp_path / "vitpose")
    loaded = load_pose_model(tmp_path / "vitpose")
    assert loaded.kind == "vitpose"
    with torch.no_grad():
        assert torch.equal(loaded.heatmaps(batch["pixel_values"]), vit(pixel_values=batch["pixel_values"]).heatmaps)


def test_tasks_pickle_and_fail_fast_on_a_missing_model(vlpose_run, tmp_path):
    from pipeline.train.ray_deepspeed import PreflightError

    task = pickle.loads(pickle.dumps(vlpose_run["task"]))
    assert task._encoder is None and Path(task.base_dir).is_dir()
    assert set(task.required_columns) >= {"crop_jpeg", "keypoints_crop", "scene", "super_category"}
    with pytest.raises(PreflightError, match="no config.json"):
        ViTPoseTask(model_dir=str(tmp_path)).preflight()
    with pytest.raises(PreflightError, match="text_dim"):
        VLPoseTask(base_dir=task.base_dir, vlpose={"text_dim": 512}).preflight()
    metrics = vlpose_run["task"].metrics(vlpose_run["model"], vlpose_run["batch"])
    assert set(metrics) == {"keypoint_error_px", "original_keypoint_error_px"}


def test_matcher_and_dual_decoder_shapes():
    """R keeps the image tokens' shape; the twin decoder gives the original's heatmap shape, one
    injector per decoder stage, each as wide as its stage; a width the heads cannot split is refused."""
    from pipeline.pose2d.matcher import RelationMatcher
    from pipeline.pose2d.vitpose import backbone_tokens, decoder_stages, stage_channels

    matcher = RelationMatcher(hidden_size=64, text_dim=384, num_heads=4, num_text_tokens=3)
    tokens, text = torch.randn(2, 48, 64), torch.randn(2, 384)
    assert matcher.text_tokens(text).shape == (2, 3, 64)
    assert matcher(tokens, text).shape == (2, 48, 64)
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        RelationMatcher(hidden_size=30, text_dim=384, num_heads=4, num_text_tokens=1)

    size = ViTPoseSize(**TINY_SIZE)
    original = build_vitpose(size)
    model = VLPoseModel(original).eval()
    pixels = torch.randn(2, 3, size.image_height, size.image_width)
    with torch.no_grad():
        n_tokens = backbone_tokens(original, pixels).shape[1]
        assert n_tokens == (size.image_height // 16) * (size.image_width // 16)
        heatmaps = model(pixels, torch.randn(2, 384))
        assert heatmaps.shape == model(pixels, inject=False).shape == original(pixels).heatmaps.shape
    assert heatmaps.shape == (2, 17, size.image_height // 4, size.image_width // 4)
    assert len(model.injectors) == len(decoder_stages(original.head)) == len(stage_channels(original.head))
    assert [inj.in_channels for inj in model.injectors] == list(stage_channels(original.head))
