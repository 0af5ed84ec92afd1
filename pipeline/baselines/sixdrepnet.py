"""6DRepNet-style baseline: backbone → linear head → 6 numbers → Gram–Schmidt → R, geodesic loss.

Hempel, Abdelrahman, Al-Hamadi, "6D Rotation Representation for Unconstrained Head Pose
Estimation" (ICIP 2022, https://arxiv.org/abs/2202.12555): regress a continuous 6D rotation
representation instead of Euler angles (which jump at ±180° and lock at yaw ±90°), map it to
SO(3) and train on the geodesic distance to the true rotation.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.baselines.registry import register_baseline
from pipeline.baselines.rotation import geodesic_loss, matrix_to_euler, sixd_to_matrix

# The first two columns of the identity: the head output starts at a frontal face.
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@register_baseline("6drepnet")
class SixDRepNet(nn.Module):
    """Backbone features → ``nn.Linear(features, 6)`` → rotation matrix.

    The head's bias starts at the identity's 6D vector: most training faces are near
    frontal, so the first steps refine a sensible pose instead of a random rotation.
    """

    def __init__(self, backbone: nn.Module, features: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, 6)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(_IDENTITY_6D))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw 6D outputs ``(B, 6)`` for normalised images ``(B, 3, H, W)``."""
        return self.head(self.backbone(images))

    def rotation(self, out: torch.Tensor) -> torch.Tensor:
        """Predicted rotation matrices ``(B, 3, 3)``."""
        return sixd_to_matrix(out)

    def loss(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean geodesic distance (radians) to ``batch["rotation"]``."""
        return geodesic_loss(self.rotation(out.float()), batch["rotation"].float())

    def euler(self, out: torch.Tensor) -> torch.Tensor:
        """Predicted ``(B, 3)`` yaw, pitch, roll in degrees."""
        return matrix_to_euler(self.rotation(out.float()))
