"""AFLW2000-3D (test set): reader and synthetic writer.

Layout (Zhu et al., 3DDFA)::

    root/imageNNNNN.jpg     450×450 face images (ids are sparse: image00002, image00004, …)
    root/imageNNNNN.mat     Pose_Para 1×7 (pitch, yaw, roll in radians, tdx, tdy, tdz, scale),
                            pt3d_68 3×68 (x, y in image pixels, z), roi, Shape_Para, Exp_Para, …

31 of the 2,000 real samples have an angle beyond ±99°; the reader returns them as they are
and the ingestion's ``max_abs_angle`` filter drops them (1,969 kept).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.datasets import _common
from pipeline.datasets.base import HeadPoseSample, Item, LayoutError, Listing
from pipeline.synth import head

SPLIT = "test"
SIZE = 450
JPEG_QUALITY = 85
OUTLIER_FRACTION = 0.02  # samples given one |angle| in (100°, 170°), at least one per dataset
_STEM = re.compile(r"^image\d+$")
_EXPECTED = "AFLW2000: imageNNNNN.jpg + imageNNNNN.mat pairs directly in the root"


def list_items(raw_root: Path) -> Listing:
    """One item per ``imageNNNNN`` stem with a ``.jpg`` or a ``.mat``.

    Raises:
        LayoutError: ``raw_root`` is not a folder or holds no ``imageNNNNN`` file.
    """
    root = _common.require_dir(raw_root, _EXPECTED)
    stems = [s for s in _common.list_stems(root, (".jpg", ".mat")) if _STEM.match(s)]
    if not stems:
        raise LayoutError(f"{root}: no imageNNNNN.jpg / .mat files; expected {_EXPECTED}")
    return Listing([Item(source_id=s, split=SPLIT) for s in stems])


def load_item(raw_root: Path, item: Item) -> HeadPoseSample:
    """Decode one sample: RGB image, canonical angles in degrees, ``pt3d_68[:2]`` landmarks and their box.

    Raises:
        BadRecord: missing / corrupt ``.jpg`` or ``.mat``, missing ``Pose_Para`` / ``pt3d_68``,
            wrong shapes, NaN / inf.
    """
    return _common.load_image_mat_sample(raw_root, item.source_id, landmarks_key="pt3d_68", landmarks_rows=3)


# ------------------------------------------------------------------------------ synthetic
def _sample_angles(rng: np.random.Generator) -> tuple[float, float, float]:
    """AFLW's in-the-wild spread: mostly near-frontal with long yaw tails."""
    yaw = float(np.clip(rng.normal(0.0, 35.0), -89.0, 89.0))
    pitch = float(np.clip(rng.normal(0.0, 14.0), -60.0, 60.0))
    roll = float(np.clip(rng.normal(0.0, 11.0), -50.0, 50.0))
    return yaw, pitch, roll


def synthetic_samples(n: int, seed: int) -> Iterator[head.SyntheticHead]:
    """Render the synthetic AFLW2000 with sparse ``imageNNNNN`` ids and a few out-of-range labels.

    Args:
        n: number of samples.
        seed: the dataset seed.

    Yields:
        :class:`~pipeline.synth.head.SyntheticHead` with ``extra`` = ``{"pose_para", "pt3d_68",
        "outlier"}``.
    """
    look = head.get_look("aflw2000")
    K = head.camera_matrix(look, SIZE, SIZE)
    layout = np.random.default_rng([seed, 0])
    ids = 2 + np.concatenate([[0], np.cumsum(layout.integers(1, 4, n - 1))]).astype(int)
    outliers = set(layout.choice(n, math.ceil(OUTLIER_FRACTION * n), replace=False).tolist())
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        angles = list(_sample_angles(rng))
        if i in outliers:  # like the real set's 31 samples with an angle beyond ±99°
            angles[int(rng.integers(3))] = float(rng.choice([-1.0, 1.0]) * rng.uniform(100.0, 170.0))
        yaw, pitch, roll = angles
        r = head.render(yaw, pitch, roll, width=SIZE, height=SIZE, look=look, rng=rng)
        u, v = head.project(K, r.centre[None])[0]
        f_over_z = look.focal_px / r.centre[2]
        # z of pt3d_68 in pixel units, positive toward the camera (3DDFA's model z after scaling).
        z = (r.centre[2] - r.landmarks_cam[:, 2]) * f_over_z
        pt3d = np.vstack([r.landmarks.T, z[None]])
        pose_para = _common.pose_para_row(yaw, pitch, roll, (u, SIZE - v, 0.0), f_over_z / 1000.0)
        extra = {"pose_para": pose_para, "pt3d_68": pt3d, "outlier": i in outliers}
        yield head.SyntheticHead(f"image{ids[i]:05d}", "", False, yaw, pitch, roll, r.image, r.landmarks, extra)


def write_synthetic(root: Path, n: int, seed: int) -> dict:
    """Write a synthetic AFLW2000 in the real layout under ``root``.

    Args:
        root: output folder (created if needed).
        n: number of samples (``ceil(0.02 n)`` of them get an angle beyond ±99°).
        seed: the dataset seed; the same seed writes identical bytes.

    Returns:
        ``{"samples": n, "beyond_99": k}``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    beyond = 0
    for s in synthetic_samples(n, seed):
        _common.save_jpeg(root / f"{s.source_id}.jpg", s.image, JPEG_QUALITY)
        _common.save_mat(
            root / f"{s.source_id}.mat",
            {
                "Pose_Para": s.extra["pose_para"],
                "pt3d_68": np.ascontiguousarray(s.extra["pt3d_68"], dtype=np.float64),
                "roi": np.array([_common.points_box(s.landmarks)], dtype=np.float64),
                "Shape_Para": np.zeros((199, 1), np.float32),
                "Exp_Para": np.zeros((29, 1), np.float32),
            },
        )
        beyond += bool(s.extra["outlier"])
    return {"samples": n, "beyond_99": beyond}
