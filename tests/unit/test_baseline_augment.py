"""CNN baseline augmentation: the pose update of an in-plane rotation is exact, the geometric
transform moves pixels where it says, per-image standardisation ignores brightness and contrast,
and the augmented batch is a pure function of torch's RNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.baselines import BaselineConfig, BaselineTask
from pipeline.baselines.augment import AugmentConfig, geometric, normalise, rotate_pose
from pipeline.geometry import rotation_matrix
from pipeline.synth import head


@pytest.mark.parametrize("pose", [(40.0, 15.0, 10.0), (-70.0, -30.0, 20.0), (10.0, 50.0, -30.0), (0.0, 0.0, 0.0)])
@pytest.mark.parametrize("theta", [25.0, -17.0])
def test_rotating_the_picture_rotates_the_pose_exactly(pose, theta):
    """Landmarks of the head rendered at ``rotate_pose(pose, θ)`` are the landmarks at ``pose``
    turned counter-clockwise by θ on screen (head on the optical axis: no perspective skew)."""
    look = head.get_look("aflw2000")
    K = head.camera_matrix(look, 450, 450)
    idt = head.sample_identity(np.random.default_rng(0), look)
    centre = np.array([0.0, 0.0, 900.0])

    def landmarks(y, p, r):
        return head.project(K, centre + head.head_landmarks(idt) @ head.pose_matrix(y, p, r).T)

    d = landmarks(*pose) - K[:2, 2]
    t = np.deg2rad(theta)
    turned = np.stack([d[:, 0] * np.cos(t) + d[:, 1] * np.sin(t), -d[:, 0] * np.sin(t) + d[:, 1] * np.cos(t)], 1)
    np.testing.assert_allclose(landmarks(*rotate_pose(*pose, theta)), turned + K[:2, 2], atol=1e-6)
    # Not simply roll + θ away from a frontal face.
    if pose[0] or pose[1]:
        assert not np.allclose(rotate_pose(*pose, theta)[2], pose[2] - theta, atol=0.5)


def _blob(w: int, h: int, x: float, y: float) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return Image.fromarray(np.repeat((255 * g).astype(np.uint8)[..., None], 3, 2))


def _centroid(img: Image.Image) -> np.ndarray:
    a = np.asarray(img)[..., 0].astype(float)
    a = np.where(a > 0.3 * a.max(), a, 0.0)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return np.array([(a * xx).sum(), (a * yy).sum()]) / a.sum()


class _Fixed:
    """A generator stand-in returning chosen draws in the order ``geometric`` asks for them."""

    def __init__(self, theta, zoom, shift):
        self.draws = [theta, zoom, np.asarray(shift, float)]

    def uniform(self, *a, **k):
        return self.draws.pop(0)


@pytest.mark.parametrize(("theta", "zoom", "shift"), [(30.0, 1.0, (0.0, 0.0)), (-20.0, 1.2, (0.05, -0.08))])
def test_geometric_moves_a_point_where_the_transform_says(theta, zoom, shift):
    w = h = 64
    cfg = AugmentConfig(rotate_deg=45.0, translate=0.1)
    point = np.array([44.0, 20.0])
    out, new_pose = geometric(_blob(w, h, *point), (0.0, 0.0, 0.0), _Fixed(theta, zoom, shift), cfg)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    t = np.deg2rad(theta)
    d = point - c
    turned = np.array([d[0] * np.cos(t) + d[1] * np.sin(t), -d[0] * np.sin(t) + d[1] * np.cos(t)])
    expected = c + zoom * turned + np.array(shift) * (w, h)
    np.testing.assert_allclose(_centroid(out), expected, atol=0.5)
    assert new_pose == pytest.approx(rotate_pose(0.0, 0.0, 0.0, theta))


def test_per_image_standardisation_ignores_brightness_and_contrast():
    x = torch.rand(4, 3, 16, 16)
    darker = 0.4 * x + 0.05  # BIWI-like: dark and low-contrast
    assert torch.allclose(normalise(x, "per_image"), normalise(darker, "per_image"), atol=1e-4)
    assert not torch.allclose(normalise(x, "imagenet"), normalise(darker, "imagenet"), atol=1e-2)


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        import io

        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        yaw, pitch, roll = rng.uniform(-50, 50, 3)
        rows.append({"source_id": str(i), "face_jpeg": buf.getvalue(), "yaw": yaw, "pitch": pitch, "roll": roll})
    return rows


def test_augmented_batches_follow_the_torch_rng_and_labels_stay_rotations_of_the_truth():
    task = BaselineTask(BaselineConfig(width=8, stages=2, input_size=32))
    rows = _rows(8)
    torch.manual_seed(5)
    a = task.collate(rows)
    torch.manual_seed(5)
    b = task.collate(rows)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(6)
    assert not torch.equal(task.collate(rows)["image"], a["image"])
    for i, r in enumerate(rows):
        R = a["rotation"][i].double().numpy()
        truth = rotation_matrix(r["yaw"], r["pitch"], r["roll"])
        mirrored = rotation_matrix(-r["yaw"], r["pitch"], -r["roll"])
        # The label is the (possibly mirrored) truth turned about the optical axis by ≤ 30°.
        angles = [np.degrees(np.arccos(np.clip((np.trace(M.T @ R) - 1) / 2, -1, 1))) for M in (truth, mirrored)]
        delta = [M.T @ R for M in (truth, mirrored)]
        k = int(np.argmin(angles))
        assert angles[k] <= 30.0 + 1e-3
        assert abs(delta[k][2, 2] - 1.0) < 1e-6  # a rotation about z only
