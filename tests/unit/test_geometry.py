"""Round trips and algebraic properties of :mod:`pipeline.geometry` (hypothesis property tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geometry as g

PROPERTY = settings(deadline=None, max_examples=150)

# Euler angles are unique for |yaw| < 90° and pitch, roll inside (−180°, 180°); stay a little
# inside so that atan2's wrap at ±180° and the gimbal lock do not enter the comparison.
YAW = st.floats(-89.0, 89.0)
ANGLE = st.floats(-179.0, 179.0)
ANY = st.floats(-720.0, 720.0)


def _angles_close(a, b, tol=1e-7):
    assert np.allclose(a, b, atol=tol, rtol=0.0), (a, b)


@PROPERTY
@given(ANY, ANY, ANY)
def test_rotation_matrix_is_orthonormal_with_det_one(yaw, pitch, roll):
    R = g.rotation_matrix(yaw, pitch, roll)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert math.isclose(np.linalg.det(R), 1.0, abs_tol=1e-12)


def test_rotation_matrix_order_is_rz_ry_rx():
    """R = Rz(roll) · Ry(yaw) · Rx(pitch), each the standard right-handed elementary rotation."""
    a = math.radians(30.0)
    c, s = math.cos(a), math.sin(a)
    assert np.allclose(g.rotation_matrix(0, 30, 0), [[1, 0, 0], [0, c, -s], [0, s, c]])
    assert np.allclose(g.rotation_matrix(30, 0, 0), [[c, 0, s], [0, 1, 0], [-s, 0, c]])
    assert np.allclose(g.rotation_matrix(0, 0, 30), [[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert np.allclose(
        g.rotation_matrix(10, 20, 30),
        g.rotation_matrix(0, 0, 30) @ g.rotation_matrix(10, 0, 0) @ g.rotation_matrix(0, 20, 0),
    )


@PROPERTY
@given(YAW, ANGLE, ANGLE)
def test_euler_matrix_euler_round_trip(yaw, pitch, roll):
    _angles_close(g.matrix_to_euler(g.rotation_matrix(yaw, pitch, roll)), (yaw, pitch, roll))


@PROPERTY
@given(ANY, ANY, ANY)
def test_matrix_euler_matrix_round_trip_for_any_rotation(yaw, pitch, roll):
    """Even past the unique range the recovered angles describe the same rotation."""
    R = g.rotation_matrix(yaw, pitch, roll)
    assert np.allclose(g.rotation_matrix(*g.matrix_to_euler(R)), R, atol=1e-9)


@PROPERTY
@given(YAW, ANGLE, ANGLE)
def test_biwi_matrix_round_trip(yaw, pitch, roll):
    M = g.euler_to_biwi_matrix(yaw, pitch, roll)
    assert np.allclose(M @ M.T, np.eye(3), atol=1e-12)
    _angles_close(g.biwi_matrix_to_euler(M), (yaw, pitch, roll))


@PROPERTY
@given(ANY, ANY, ANY)
def test_biwi_read_is_hopenets_formula(yaw, pitch, roll):
    """biwi_matrix_to_euler equals HopeNet's datasets.BIWI code, written out independently."""
    M = g.rotation_matrix(yaw, pitch, roll)  # any rotation
    R = M.T
    roll_h = -math.degrees(math.atan2(R[1, 0], R[0, 0]))
    yaw_h = -math.degrees(math.atan2(-R[2, 0], math.sqrt(R[2, 1] ** 2 + R[2, 2] ** 2)))
    pitch_h = math.degrees(math.atan2(R[2, 1], R[2, 2]))
    _angles_close(g.biwi_matrix_to_euler(M), (yaw_h, pitch_h, roll_h), tol=1e-9)


def test_biwi_identity_is_frontal():
    assert np.allclose(g.biwi_matrix_to_euler(np.eye(3)), (0.0, 0.0, 0.0))
    assert np.allclose(g.euler_to_biwi_matrix(0.0, 0.0, 0.0), np.eye(3))


@PROPERTY
@given(ANY, ANY, ANY)
def test_flip_euler_is_an_involution(yaw, pitch, roll):
    assert g.flip_euler(*g.flip_euler(yaw, pitch, roll)) == (yaw, pitch, roll)


def _symmetric_head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points of a left-right symmetric head (head frame, mm) and their mirror partners' indices."""
    half = rng.uniform([-80, -100, -100], [80, 100, 100], (20, 3))
    pts = np.concatenate([half, half * [-1.0, 1.0, 1.0]])
    partner = np.concatenate([np.arange(20, 40), np.arange(0, 20)])
    return pts, partner


@pytest.mark.parametrize("pose", [g.rotation_matrix, g.euler_to_biwi_matrix], ids=["rotation_matrix", "biwi"])
@PROPERTY
@given(yaw=ANY, pitch=ANY, roll=ANY, seed=st.integers(0, 2**16), dx=st.floats(-150, 150), dy=st.floats(-150, 150))
def test_mirrored_projection_is_flip_euler(pose, yaw, pitch, roll, seed, dx, dy):
    """Mirroring the image of a symmetric head = rendering it at flip_euler's angles.

    Pinhole camera with the principal point at the image centre, so the mirror x → W − 1 − x of
    the image is the mirror x → −x of the scene; the head centre mirrors with it.
    """
    W, H, f = 451, 400, 800.0
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    pts, partner = _symmetric_head(np.random.default_rng(seed))

    def image(angles, centre):
        cam = centre + pts @ pose(*angles).T
        q = cam @ K.T
        return q[:, :2] / q[:, 2:]

    centre = np.array([dx, dy, 1500.0])
    mirrored = g.flip_points_x(image((yaw, pitch, roll), centre), W)
    flipped = image(g.flip_euler(yaw, pitch, roll), centre * [-1.0, 1.0, 1.0])
    # Point i of the mirrored picture is where the head's mirror partner of i lands.
    assert np.allclose(mirrored, flipped[partner], atol=1e-7)


def test_flip_points_x_matches_array_mirror():
    img = np.zeros((5, 7))
    img[2, 1] = 1.0
    x = g.flip_points_x(np.array([[1.0, 2.0]]), 7)
    assert img[:, ::-1][2, int(x[0, 0])] == 1.0
    assert x[0, 1] == 2.0


@PROPERTY
@given(ANY, ANY, ANY)
def test_geodesic_distance_to_itself_is_zero(yaw, pitch, roll):
    R = g.rotation_matrix(yaw, pitch, roll)
    assert g.geodesic_distance_deg(R, R) == pytest.approx(0.0, abs=1e-5)


@PROPERTY
@given(ANY, ANY, ANY, ANY, ANY, ANY)
def test_geodesic_distance_is_symmetric_and_bounded(y1, p1, r1, y2, p2, r2):
    A, B = g.rotation_matrix(y1, p1, r1), g.rotation_matrix(y2, p2, r2)
    d = g.geodesic_distance_deg(A, B)
    assert d == pytest.approx(g.geodesic_distance_deg(B, A), abs=1e-9)
    assert 0.0 <= d <= 180.0


@PROPERTY
@given(ANY, ANY, ANY, st.floats(-179.0, 179.0))
def test_geodesic_distance_of_a_single_axis_turn_is_its_angle(yaw, pitch, roll, turn):
    R = g.rotation_matrix(yaw, pitch, roll)
    assert g.geodesic_distance_deg(R, R @ g.rotation_matrix(0.0, 0.0, turn)) == pytest.approx(abs(turn), abs=1e-4)
