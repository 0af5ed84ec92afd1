"""Keypoint records → model inputs: decoded, resized, normalised crops and heatmap targets.

Shared by training (:mod:`pipeline.pose2d.task`) and prediction (:mod:`pipeline.pose2d.predict`)
so both see a record the same way. The ingested crop (``crop_jpeg``, usually the model's input
size already) is resized to the model input when it is not, and its keypoints scaled with it —
exact in the continuous pixel convention: ``x_input = x_crop · w_input / w_crop``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from pipeline.keypoints import COCO_FLIP_PAIRS, NUM_COCO_KEYPOINTS
from pipeline.pose2d.heatmaps import gaussian_targets

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "jpeg_size",
    "load_crop",
    "normalise",
    "crop_keypoints",
    "flip_sample",
    "pose_batch",
]

# ViTPose's (and transformers' VitPoseImageProcessor's) input normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(w, h)`` of a JPEG without decoding its pixels."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def load_crop(data: bytes, input_size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """The crop as an ``(h, w, 3)`` uint8 RGB array at the model input, and the ``(sx, sy)`` scale applied.

    Args:
        data: the record's ``crop_jpeg``.
        input_size: model input ``(h, w)``.
    """
    h, w = input_size
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        cw, ch = img.size
        if (cw, ch) != (w, h):
            img = img.resize((w, h), resample=Image.Resampling.BILINEAR)
        return np.asarray(img), (w / cw, h / ch)


def normalise(images: np.ndarray) -> torch.Tensor:
    """``(B, h, w, 3)`` uint8 → ``(B, 3, h, w)`` float32, ImageNet mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def crop_keypoints(row: dict, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The record's ``keypoints_crop`` as ``(K, 2)`` model-input pixels and ``(K,)`` visibility."""
    kps = np.asarray(row["keypoints_crop"], dtype=np.float64).reshape(-1, 3)
    xy = kps[:, :2] * np.asarray(scale)
    return xy, kps[:, 2].copy()


def flip_sample(image: np.ndarray, xy: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror a crop left–right: ``x → w − x`` (continuous pixels) and left/right joints swapped."""
    w = image.shape[1]
    image = image[:, ::-1]
    xy = xy.copy()
    xy[:, 0] = w - xy[:, 0]
    vis = vis.copy()
    if len(vis) == NUM_COCO_KEYPOINTS:
        for a, b in COCO_FLIP_PAIRS:
            xy[[a, b]] = xy[[b, a]]
            vis[[a, b]] = vis[[b, a]]
    return image, xy, vis


def pose_batch(
    rows: Sequence[dict],
    input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
    flip: Sequence[bool] | None = None,
) -> dict[str, torch.Tensor]:
    """A training micro-batch.

    Args:
        rows: keypoint records (``crop_jpeg``, ``keypoints_crop``).
        input_size: model input ``(h, w)``.
        heatmap_size: model heatmap ``(H, W)``.
        sigma: target Gaussian σ in heatmap cells.
        flip: per row, mirror it (augmentation); ``None`` = none.

    Returns:
        ``pixel_values`` ``(B, 3, h, w)``, ``target_heatmaps`` ``(B, K, H, W)``, ``target_weights``
        ``(B, K)``, and ``keypoints`` ``(B, K, 2)`` in input pixels (for logging a pixel error).
    """
    images, points, visible = [], [], []
    for i, row in enumerate(rows):
        image, scale = load_crop(row["crop_jpeg"], input_size)
        xy, vis = crop_keypoints(row, scale)
        if flip is not None and flip[i]:
            image, xy, vis = flip_sample(image, xy, vis)
        images.append(image)
        points.append(xy)
        visible.append(vis)
    keypoints = torch.from_numpy(np.stack(points)).float()
    targets, weights = gaussian_targets(keypoints, torch.from_numpy(np.stack(visible)), input_size, heatmap_size, sigma)
    return {
        "pixel_values": normalise(np.stack(images)),
        "target_heatmaps": targets,
        "target_weights": weights,
        "keypoints": keypoints,
    }
