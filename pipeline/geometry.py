"""Rotations and Euler angles in the conventions the head-pose literature uses.

Canonical convention (300W-LP / HopeNet / 6DRepNet): angles in degrees,
``pitch`` about x, ``yaw`` about y, ``roll`` about z, and

    R = Rz(roll) · Ry(yaw) · Rx(pitch)            (6DRepNet ``utils.get_R``)

Euler from R:  pitch = atan2(R21, R22), yaw = atan2(-R20, sqrt(R21² + R22²)),
roll = atan2(R10, R00).  BIWI's ``frame_XXXXX_pose.txt`` stores a rotation in the
depth camera's frame; HopeNet reads it by transposing first and flipping two signs
(:func:`biwi_matrix_to_euler`).  Every dataset reader converts into the canonical
convention here so that the same angle triple means the same head everywhere.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "rotation_matrix",
    "matrix_to_euler",
    "biwi_matrix_to_euler",
    "euler_to_biwi_matrix",
    "flip_euler",
    "flip_points_x",
    "geodesic_distance_deg",
]


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix for canonical Euler angles in degrees.

    Args:
        yaw: rotation about y, degrees.
        pitch: rotation about x, degrees.
        roll: rotation about z, degrees.

    Returns:
        3×3 float64 rotation ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``.
    """
    y, p, r = np.deg2rad([yaw, pitch, roll])
    return _rz(r) @ _ry(y) @ _rx(p)


def matrix_to_euler(R: np.ndarray) -> tuple[float, float, float]:
    """Canonical ``(yaw, pitch, roll)`` in degrees from a rotation matrix.

    Unique for |yaw| < 90°; at gimbal lock (|yaw| = 90°) pitch and roll trade off and
    any split with the same R is returned.
    """
    R = np.asarray(R, dtype=np.float64)
    sy = np.hypot(R[2, 1], R[2, 2])
    pitch = np.arctan2(R[2, 1], R[2, 2])
    yaw = np.arctan2(-R[2, 0], sy)
    roll = np.arctan2(R[1, 0], R[0, 0])
    return tuple(float(v) for v in np.rad2deg([yaw, pitch, roll]))  # type: ignore[return-value]


def biwi_matrix_to_euler(M: np.ndarray) -> tuple[float, float, float]:
    """Canonical ``(yaw, pitch, roll)`` from a BIWI ``pose.txt`` rotation, as HopeNet reads it.

    HopeNet (``datasets.BIWI``): ``R = M.T``; ``roll = -atan2(R10, R00)``;
    ``yaw = -atan2(-R20, sqrt(R21² + R22²))``; ``pitch = atan2(R21, R22)``.
    """
    R = np.asarray(M, dtype=np.float64).T
    roll = -np.arctan2(R[1, 0], R[0, 0])
    yaw = -np.arctan2(-R[2, 0], np.hypot(R[2, 1], R[2, 2]))
    pitch = np.arctan2(R[2, 1], R[2, 2])
    return tuple(float(v) for v in np.rad2deg([yaw, pitch, roll]))  # type: ignore[return-value]


def euler_to_biwi_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of :func:`biwi_matrix_to_euler`: the ``pose.txt`` matrix for canonical angles.

    HopeNet's read is the canonical Euler of ``M.T`` with yaw and roll negated, so
    ``M = rotation_matrix(-yaw, pitch, -roll).T``.
    """
    return rotation_matrix(-yaw, pitch, -roll).T


def flip_euler(yaw: float, pitch: float, roll: float) -> tuple[float, float, float]:
    """Angles of the horizontally mirrored image: yaw and roll change sign, pitch stays."""
    return -yaw, pitch, -roll


def flip_points_x(points: np.ndarray, width: int) -> np.ndarray:
    """Mirror x of pixel-centre coordinates in an image ``width`` wide (x' = W - 1 - x).

    Matches ``image[:, ::-1]``: pixel column c moves to W - 1 - c.
    """
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def geodesic_distance_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    """Angle in degrees of the rotation taking R1 to R2 (the geodesic on SO(3))."""
    cos = (np.trace(np.asarray(R1).T @ np.asarray(R2)) - 1.0) / 2.0
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))
