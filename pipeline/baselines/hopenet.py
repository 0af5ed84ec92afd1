"""HopeNet-style baseline: per-angle binned classification plus expectation regression.

Ruiz, Chong, Rehg, "Fine-Grained Head Pose Estimation Without Keypoints" (CVPRW 2018,
https://arxiv.org/abs/1710.00925): each of yaw, pitch, roll is classified into 66 bins of 3°
over [−99°, 99°); the softmax expectation over the bins is the continuous prediction, and
the loss adds α × MSE of that expectation (degrees) to each cross-entropy. The reference
code's default α is 0.001. One deliberate change: the expectation uses bin *centres*
(−97.5°, −94.5°, …) where the reference code uses left edges (a constant −1.5° bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.baselines.registry import register_baseline

BIN_WIDTH = 3.0
NUM_BINS = 66
LOW = -99.0  # left edge of the first bin
ALPHA = 0.001  # weight of the regression term (HopeNet's code default)


def angle_to_bin(angles: torch.Tensor) -> torch.Tensor:
    """Bin index of each angle (degrees); angles beyond ±99° fall in the end bins."""
    return ((angles - LOW) / BIN_WIDTH).floor().long().clamp(0, NUM_BINS - 1)


def bin_centres(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres of the bins in degrees: ``LOW + BIN_WIDTH · (i + ½)``."""
    return LOW + BIN_WIDTH * (torch.arange(NUM_BINS, device=device, dtype=dtype) + 0.5)


@register_baseline("hopenet")
class HopeNet(nn.Module):
    """Backbone features → ``nn.Linear(features, 3 · 66)`` → per-angle bin logits."""

    def __init__(self, backbone: nn.Module, features: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, 3 * NUM_BINS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Bin logits ``(B, 3, 66)`` for yaw, pitch, roll."""
        return self.head(self.backbone(images)).view(-1, 3, NUM_BINS)

    def euler(self, out: torch.Tensor) -> torch.Tensor:
        """Softmax expectation over the bin centres: ``(B, 3)`` yaw, pitch, roll in degrees."""
        probs = out.float().softmax(dim=-1)
        return probs @ bin_centres(out.device)

    def loss(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over the three angles of cross-entropy + α · MSE(expectation), batch means."""
        angles = batch["angles"].float()
        ce = F.cross_entropy(out.float().reshape(-1, NUM_BINS), angle_to_bin(angles).reshape(-1), reduction="none")
        mse = (self.euler(out) - angles).pow(2)
        return (ce.view(-1, 3) + ALPHA * mse).sum(dim=-1).mean()
