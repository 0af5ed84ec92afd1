"""Rotations in torch for the CNN baselines: 6D → matrix, geodesic loss, matrix ↔ Euler.

Conventions are those of :mod:`pipeline.geometry`: ``R = Rz(roll)·Ry(yaw)·Rx(pitch)``,
angles in degrees, returned in the order ``(yaw, pitch, roll)``. Every function works on any
leading batch shape and keeps the input's dtype, so the tests can compare in float64 against
the numpy reference.

The 6D representation is Zhou et al., "On the Continuity of Rotation Representations in
Neural Networks" (CVPR 2019, https://arxiv.org/abs/1812.07035), used by 6DRepNet
(https://arxiv.org/abs/2202.12555): two 3-vectors, orthonormalised by Gram–Schmidt, become
the first two *columns* of R; the third is their cross product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "euler_to_matrix",
    "geodesic_distance",
    "geodesic_loss",
    "matrix_to_euler",
    "matrix_to_sixd",
    "sixd_to_matrix",
]

# acos has an infinite slope at ±1: the gradient path clamps cos this far inside (≈ 0.08°).
_ACOS_EPS = 1e-6


def sixd_to_matrix(sixd: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from 6D vectors by Gram–Schmidt (6DRepNet's ``compute_rotation_matrix_from_ortho6d``).

    Args:
        sixd: ``(..., 6)``; ``[:3]`` gives the first column's direction, ``[3:]`` the plane of
            the first two columns.

    Returns:
        ``(..., 3, 3)`` rotation matrices (orthonormal, det +1) with columns ``c1, c2, c3``.
    """
    if sixd.shape[-1] != 6:
        raise ValueError(f"expected a trailing dimension of 6, got shape {tuple(sixd.shape)}")
    c1 = F.normalize(sixd[..., :3], dim=-1, eps=1e-8)
    c3 = F.normalize(torch.linalg.cross(c1, sixd[..., 3:], dim=-1), dim=-1, eps=1e-8)
    c2 = torch.linalg.cross(c3, c1, dim=-1)
    return torch.stack([c1, c2, c3], dim=-1)


def matrix_to_sixd(R: torch.Tensor) -> torch.Tensor:
    """The 6D vector of a rotation: its first two columns (``sixd_to_matrix`` inverts it exactly)."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle in **radians** of the rotation taking ``R1`` to ``R2``, per batch element.

    ``cos θ = (tr(R1ᵀR2) − 1) / 2`` with ``tr(R1ᵀR2) = Σ R1 ⊙ R2``. The value is the exact
    ``acos`` (0 for identical rotations, as :func:`pipeline.geometry.geodesic_distance_deg`);
    the gradient flows through an ``acos`` clamped to ``[−1 + ε, 1 − ε]`` (6DRepNet clamps the
    value too), so it stays finite when the prediction is right or exactly opposite.
    """
    cos = ((R1 * R2).sum(dim=(-2, -1)) - 1.0) / 2.0
    exact = torch.acos(cos.clamp(-1.0, 1.0))
    safe = torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
    return safe + (exact - safe).detach()


def geodesic_loss(R_pred: torch.Tensor, R_true: torch.Tensor) -> torch.Tensor:
    """Mean geodesic distance (radians) over the batch: 6DRepNet's training loss."""
    return geodesic_distance(R_pred, R_true).mean()


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """Canonical ``(yaw, pitch, roll)`` in degrees, the same formulas as :func:`pipeline.geometry.matrix_to_euler`.

    pitch = atan2(R21, R22), yaw = atan2(−R20, √(R21² + R22²)), roll = atan2(R10, R00).
    Unique for |yaw| < 90°.

    Returns:
        ``(..., 3)`` angles in degrees.
    """
    pitch = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    yaw = torch.atan2(-R[..., 2, 0], torch.hypot(R[..., 2, 1], R[..., 2, 2]))
    roll = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], dim=-1))


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """``Rz(roll)·Ry(yaw)·Rx(pitch)`` from ``(..., 3)`` canonical ``(yaw, pitch, roll)`` in degrees."""
    y, p, r = torch.deg2rad(angles).unbind(-1)
    cy, sy, cp, sp, cr, sr = y.cos(), y.sin(), p.cos(), p.sin(), r.cos(), r.sin()
    # The product written out, row by row (as geometry.rotation_matrix multiplies it).
    rows = [
        [cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp],
        [sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp],
        [-sy, cy * sp, cy * cp],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)
