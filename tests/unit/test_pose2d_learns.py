"""The ViTPose task learns: on a few dozen synthetic crops it beats the mean-pose predictor.

The embedded default trains a ViTPose from scratch, so a silent break anywhere between the
records and the loss (targets off the joints, a flip that swaps the wrong labels, a schedule
stuck at zero, a frozen backbone) shows up only as a model that never gets better than the
average pose. This drives the task's own ``collate``/``loss``/``metrics`` with the training
loop's optimizer groups and schedule (:func:`~pipeline.train.ray_deepspeed.param_groups`,
:func:`~pipeline.train.ray_deepspeed.lr_factor`) and asserts that, within a bounded number of
steps, the keypoint error on the training crops falls well below the mean pose's. It is a fit
test (generalising from scratch needs far more steps than a unit test has, see
``docs/vlpose_learning.md``). About 60 s on one loaded thread. The bar can fail: a
narrower model (hidden 64 × 2 layers, 120 steps of 8) ends at 8.5 px vs the mean pose's 13.5 px.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import IngestConfig
from pipeline.datasets import coco
from pipeline.ingest import ingest, read_records
from pipeline.pose2d.config import DEFAULT_SIZE, PoseConfig
from pipeline.pose2d.inputs import crop_keypoints, jpeg_size
from pipeline.pose2d.task import ViTPoseTask
from pipeline.train.config import TrainConfig
from pipeline.train.ray_deepspeed import StepSampler, lr_factor, param_groups, step_seed

# The default model (128×96, patch 32 → 16×12 heatmaps), its lr, a bounded number of steps.
SIZE = dict(DEFAULT_SIZE)
SIGMA = PoseConfig().sigma
TRAIN = TrainConfig(steps=150, micro_batch_size=16, lr=5e-3, warmup_steps=10, min_lr_ratio=0.05)


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> list[dict]:
    """~30 people from 12 synthetic COCO images, ingested as the pipeline does."""
    root = tmp_path_factory.mktemp("pose-learns")
    coco.write_synthetic(root / "raw", 12, 1, seed=5)
    settings = IngestConfig().model_dump(exclude={"datasets"})
    ingest("coco", root / "raw", root / "pq", seed=0, crop_margin=(0.2, 0.2), settings=settings, engine="local")
    rows = read_records(root / "pq", "train").to_pylist()
    assert 20 <= len(rows) <= 60, len(rows)
    return rows


def _mean_pose_error(task: ViTPoseTask, rows: list[dict]) -> float:
    """Keypoint error (input pixels) of predicting every crop's mean labelled joint position."""
    h, w = task.geometry[0]
    points = []
    for r in rows:
        cw, ch = jpeg_size(r["crop_jpeg"])
        points.append(crop_keypoints(r, (w / cw, h / ch)))
    labelled = np.stack([v > 0 for _, v in points])[..., None]
    xy = np.stack([p for p, _ in points])
    mean = (xy * labelled).sum(0) / np.maximum(labelled.sum(0), 1)
    dist = np.linalg.norm(xy - mean, axis=-1)
    return float(dist[labelled[..., 0]].mean())


def _train(task: ViTPoseTask, rows: list[dict], cfg: TrainConfig) -> torch.nn.Module:
    """The loop's optimizer, schedule, sampling and per-step seeding, without Ray or DeepSpeed."""
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    sampler = StepSampler(len(rows), seed=cfg.seed, micro_batch_size=cfg.micro_batch_size, grad_accum=1, world_size=1)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        torch.manual_seed(step_seed(cfg.seed, step, 0))
        batch = task.collate([rows[i] for i in sampler.indices(step, 0, 0)])
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    return model.eval()


def test_vitpose_beats_the_mean_pose(crops):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is shared; one thread keeps the timing predictable
    try:
        task = ViTPoseTask(size=SIZE, sigma=SIGMA, flip_prob=0.5)
        model = _train(task, crops, TRAIN)
        with torch.no_grad():
            error = task.metrics(model, ViTPoseTask(size=SIZE, sigma=SIGMA).collate(crops))["keypoint_error_px"]
    finally:
        torch.set_num_threads(threads)
    baseline = _mean_pose_error(task, crops)
    assert baseline > 5.0  # the poses vary: the mean pose is a real baseline to beat
    assert error < 0.5 * baseline, f"keypoint error {error:.2f} px vs mean pose {baseline:.2f} px"
