"""Training augmentation and input normalisation of the CNN head-pose baselines.

Why these, measured on the embedded default (``docs/baseline_learning.md``):

* **Geometric** (in-plane rotation, scale, translation) is the main lever: without it the
  network memorises a few thousand renders (training MAE ≈ 3°) and misses the test sets'
  wider roll and framing. An in-plane rotation of the picture changes the pose *exactly*:
  turning the image counter-clockwise by θ (PIL ``rotate(θ)``) maps the label's rotation ``R`` to
  ``R · Rz(−θ)`` in the canonical convention (checked against the synthetic renderer's
  projected landmarks to 1e-13 px in ``tests/unit/test_baseline_augment.py``), so the new
  yaw/pitch/roll are read back from that product — not ``roll + θ``, which is only right at
  yaw = pitch = 0.
* **Photometric** (gain per channel, gamma, grey, noise, blur) and **per-image
  standardisation** make the network blind to a test set's look: batch-norm statistics learnt
  on 300W-LP's bright renders met BIWI's dark, low-contrast frames and flipped 39 % of the
  predictions when the input was normalised with fixed (ImageNet) statistics.

Randomness comes from a numpy generator the caller seeds from torch's RNG, which the training
loop seeds per step: the same run gives the same batches.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.geometry import matrix_to_euler, rotation_matrix

Normalize = Literal["per_image", "imagenet"]

# ImageNet statistics, as 6DRepNet normalises: a pretrained backbone plugged in expects them.
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class AugmentConfig(BaseModel):
    """``baseline.augment`` in ``params.yaml``; ``enabled: false`` trains on the crops as stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="apply the augmentation below during training")
    rotate_deg: float = Field(30.0, ge=0.0, le=90.0, description="in-plane rotation drawn in ±this (label updated)")
    scale: tuple[float, float] = Field((0.85, 1.2), description="zoom range (>1 shows the face larger)")
    translate: float = Field(0.08, ge=0.0, le=0.5, description="shift in ±this fraction of the side")
    gain: float = Field(0.25, ge=0.0, le=1.0, description="per-channel gain in 1 ± this")
    gamma: tuple[float, float] = Field((0.6, 1.6), description="gamma range")
    grey_prob: float = Field(0.2, ge=0.0, le=1.0, description="chance of a grey-scale image")
    noise_std: float = Field(0.04, ge=0.0, le=0.5, description="Gaussian pixel noise, std up to this (0–1 scale)")
    blur_prob: float = Field(0.2, ge=0.0, le=1.0, description="chance of a Gaussian blur (radius 0.5–1.5 px)")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "gamma"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        return self


def rotate_pose(yaw: float, pitch: float, roll: float, theta_deg: float) -> tuple[float, float, float]:
    """The pose after turning the picture counter-clockwise by ``theta_deg`` (PIL ``rotate``)."""
    return matrix_to_euler(rotation_matrix(yaw, pitch, roll) @ rotation_matrix(0.0, 0.0, -theta_deg))


def draw_affine(
    rng: np.random.Generator, cfg: AugmentConfig, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """``(theta_deg, zoom, dx, dy)`` of one geometric augmentation of an image of ``size`` (w, h)."""
    theta = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    zoom = float(rng.uniform(*cfg.scale))
    dx, dy = (float(v) for v in rng.uniform(-cfg.translate, cfg.translate, 2) * size)
    return theta, zoom, dx, dy


def apply_affine(img: Image.Image, theta: float, zoom: float, dx: float, dy: float) -> Image.Image:
    """``img`` turned counter-clockwise by ``theta`` degrees and zoomed about its centre, then shifted.

    Uncovered corners are filled with the image's mean colour (a black wedge would be a cue
    for the rotation that a test crop never shows).
    """
    w, h = img.size
    # PIL's affine maps each output pixel to its input position: the inverse of
    # "rotate by θ counter-clockwise, zoom, then shift" about the centre (cx, cy).
    c, s = math.cos(math.radians(theta)) / zoom, math.sin(math.radians(theta)) / zoom
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    ox, oy = cx + dx, cy + dy
    coeffs = (c, -s, cx - c * ox + s * oy, s, c, cy - s * ox - c * oy)
    fill = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(0))
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill)


def geometric(
    img: Image.Image, pose: tuple[float, float, float], rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[Image.Image, tuple[float, float, float]]:
    """Rotate, zoom and shift ``img`` about its centre; return it with its updated pose."""
    theta, zoom, dx, dy = draw_affine(rng, cfg, img.size)
    return apply_affine(img, theta, zoom, dx, dy), rotate_pose(*pose, theta)


def blur(img: Image.Image, rng: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """A Gaussian blur with probability ``cfg.blur_prob`` (the test sets' softer cameras)."""
    if rng.uniform() < cfg.blur_prob:
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return img


def photometric(images: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Colour gain, gamma, grey and noise on a ``(B, 3, H, W)`` batch in ``[0, 1]``."""
    n = images.shape[0]
    gains = torch.from_numpy(rng.uniform(1.0 - cfg.gain, 1.0 + cfg.gain, (n, 3, 1, 1))).float()
    gammas = torch.from_numpy(rng.uniform(*cfg.gamma, (n, 1, 1, 1))).float()
    out = (images * gains).clamp_(0.0, 1.0).pow_(gammas)
    grey = torch.from_numpy(rng.uniform(size=n) < cfg.grey_prob)
    if grey.any():
        out[grey] = out[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    stds = torch.from_numpy(rng.uniform(0.0, cfg.noise_std, (n, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.standard_normal(out.shape, dtype=np.float32))
    return (out + noise * stds).clamp_(0.0, 1.0)


def normalise(images: torch.Tensor, mode: Normalize) -> torch.Tensor:
    """``per_image``: zero mean, unit std per image (blind to brightness and contrast);
    ``imagenet``: fixed ImageNet statistics (what a pretrained backbone expects)."""
    if mode == "imagenet":
        return (images - _MEAN) / _STD
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (images - mean) / std
