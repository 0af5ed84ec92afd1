"""Records → model inputs: resizing scales keypoints exactly, flips mirror and swap joints."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.keypoints import COCO_FLIP_PAIRS
from pipeline.pose2d.heatmaps import decode_heatmaps
from pipeline.pose2d.inputs import IMAGENET_MEAN, IMAGENET_STD, flip_sample, load_crop, normalise, pose_batch
from tests.unit._pose2d_data import four_crops


def test_batch_is_resized_normalised_and_its_targets_decode_to_the_labels(tmp_path_factory):
    rows = four_crops(tmp_path_factory)
    batch = pose_batch(rows, (128, 96), (32, 24), 1.0)
    assert batch["pixel_values"].shape == (4, 3, 128, 96)
    assert batch["target_heatmaps"].shape == (4, 17, 32, 24) and batch["target_weights"].shape == (4, 17)
    crop = np.asarray(rows[0]["keypoints_crop"]).reshape(17, 3)  # 192×256 crop pixels
    assert torch.allclose(batch["keypoints"][0], torch.from_numpy(crop[:, :2] * 0.5).float())
    assert torch.equal(batch["target_weights"][0] > 0, torch.from_numpy(crop[:, 2] > 0))
    decoded, _ = decode_heatmaps(batch["target_heatmaps"], (128, 96))
    w = batch["target_weights"].bool()
    assert (decoded - batch["keypoints"]).abs()[w].max() < 0.5
    image, scale = load_crop(rows[0]["crop_jpeg"], (128, 96))
    assert image.shape == (128, 96, 3) and scale == (0.5, 0.5)


def test_normalise_uses_imagenet_statistics():
    grey = np.full((1, 4, 4, 3), 255, dtype=np.uint8)
    x = normalise(grey)
    want = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, 0, 0], want)


def test_flip_mirrors_in_continuous_pixels_and_swaps_left_and_right():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)
    xy = rng.uniform(0, 6, (17, 2))
    vis = rng.integers(0, 3, 17).astype(np.float64)
    f_img, f_xy, f_vis = flip_sample(image, xy, vis)
    left, right = COCO_FLIP_PAIRS[0]
    assert f_xy[left, 0] == 6 - xy[right, 0] and f_vis[left] == vis[right]
    assert np.array_equal(f_img[:, 0], image[:, -1])
    b_img, b_xy, b_vis = flip_sample(f_img, f_xy, f_vis)  # flipping twice is the identity
    assert np.array_equal(b_img, image) and np.allclose(b_xy, xy) and np.array_equal(b_vis, vis)
