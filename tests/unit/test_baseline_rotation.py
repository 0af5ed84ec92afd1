"""Torch rotations of the CNN baselines agree with the numpy reference in pipeline.geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import geometry
from pipeline.baselines.rotation import (
    euler_to_matrix,
    geodesic_distance,
    geodesic_loss,
    matrix_to_euler,
    matrix_to_sixd,
    sixd_to_matrix,
)

RNG = np.random.default_rng(7)
# |yaw| < 90° keeps the Euler decomposition unique; pitch and roll stay off the ±180° seam.
POSES = np.column_stack([RNG.uniform(-89, 89, 200), RNG.uniform(-175, 175, 200), RNG.uniform(-175, 175, 200)])


def _numpy_matrices(poses: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([geometry.rotation_matrix(*p) for p in poses]))


def test_sixd_to_matrix_is_a_rotation():
    R = sixd_to_matrix(torch.from_numpy(RNG.normal(size=(500, 6))))
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=R.dtype), atol=1e-12)


def test_sixd_vectors_become_the_first_two_columns():
    """6DRepNet's convention: a rotation's first two columns are its 6D vector, recovered exactly."""
    R = _numpy_matrices(POSES)
    assert torch.allclose(sixd_to_matrix(matrix_to_sixd(R)), R, atol=1e-12)
    sixd = torch.from_numpy(RNG.normal(size=(50, 6)))
    first = sixd[:, :3] / sixd[:, :3].norm(dim=-1, keepdim=True)
    assert torch.allclose(sixd_to_matrix(sixd)[..., :, 0], first, atol=1e-12)


def test_euler_to_matrix_matches_geometry():
    assert torch.allclose(euler_to_matrix(torch.from_numpy(POSES)), _numpy_matrices(POSES), atol=1e-12)


def test_matrix_to_euler_matches_geometry():
    R = _numpy_matrices(POSES)
    ours = matrix_to_euler(R).numpy()
    ref = np.array([geometry.matrix_to_euler(r) for r in R.numpy()])
    assert np.allclose(ours, ref, atol=1e-9)
    assert np.allclose(ours, POSES, atol=1e-9)  # and it inverts rotation_matrix for |yaw| < 90°
    # The same formula on arbitrary (network-made) rotations, and any batch shape.
    R2 = sixd_to_matrix(torch.from_numpy(RNG.normal(size=(4, 5, 6))))
    ref2 = np.array([geometry.matrix_to_euler(r) for r in R2.reshape(-1, 3, 3).numpy()]).reshape(4, 5, 3)
    assert np.allclose(matrix_to_euler(R2).numpy(), ref2, atol=1e-9)


def test_geodesic_distance_matches_geometry():
    other = np.column_stack([RNG.uniform(-89, 89, 200), RNG.uniform(-175, 175, 200), RNG.uniform(-175, 175, 200)])
    R1, R2 = _numpy_matrices(POSES), _numpy_matrices(other)
    ours = torch.rad2deg(geodesic_distance(R1, R2)).numpy()
    ref = np.array([geometry.geodesic_distance_deg(a, b) for a, b in zip(R1.numpy(), R2.numpy(), strict=True)])
    assert np.allclose(ours, ref, atol=1e-6)
    assert geodesic_loss(R1, R2).item() == pytest.approx(np.deg2rad(ref).mean(), abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_geodesic_loss_is_zero_at_identity_with_finite_gradients(dtype):
    sixd = torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=dtype, requires_grad=True)
    loss = geodesic_loss(sixd_to_matrix(sixd), torch.eye(3, dtype=dtype)[None])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(sixd.grad).all()


def test_geodesic_loss_gradient_is_finite_at_180_degrees():
    sixd = torch.tensor([[1.0, 0, 0, 0, 1, 0]], requires_grad=True)
    flipped = torch.diag(torch.tensor([1.0, -1.0, -1.0]))[None]  # 180° about x
    loss = geodesic_loss(sixd_to_matrix(sixd), flipped)
    assert loss.item() == pytest.approx(np.pi, abs=1e-6)
    loss.backward()
    assert torch.isfinite(sixd.grad).all()


def test_geodesic_loss_decreases_along_its_gradient():
    target = _numpy_matrices(POSES[:8]).float()
    sixd = torch.randn(8, 6, requires_grad=True)
    before = geodesic_loss(sixd_to_matrix(sixd), target)
    before.backward()
    with torch.no_grad():
        after = geodesic_loss(sixd_to_matrix(sixd - 0.05 * sixd.grad), target)
    assert after < before
