"""The mean-pose yardstick: the mean of each joint over labelled records only, answered for every
crop in image pixels, scored by the same COCO evaluation as the models."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.pose2d.chance import mean_pose, mean_pose_predictions


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="JPEG")
    return buf.getvalue()


def _table(kps: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> pa.Table:
    return pa.table(
        {
            "image_id": list(range(len(kps))),
            "crop_box": [list(b) for b in boxes],
            "crop_jpeg": [_jpeg(96, 128)] * len(kps),
            "keypoints_crop": [k.reshape(-1).tolist() for k in kps],
        }
    )


def test_mean_pose_averages_labelled_joints_only():
    kps = np.zeros((3, 17, 3))
    kps[:, :, :2] = np.arange(3)[:, None, None] * 10.0 + 5.0  # records at 5, 15, 25
    kps[:, :, 2] = 2
    kps[2, 0] = (0.0, 0.0, 0)  # joint 0 unlabelled in the third record: (0, 0) must not count
    pose = mean_pose(_table(kps, [(0, 0, 96, 128)] * 3))
    assert pose[0] == pytest.approx([10.0, 10.0]) and pose[1] == pytest.approx([15.0, 15.0])


def test_a_joint_labelled_nowhere_fails_naming_it():
    kps = np.ones((2, 17, 3))
    kps[:, 4, 2] = 0
    with pytest.raises(ValueError, match=r"joints \[4\]"):
        mean_pose(_table(kps, [(0, 0, 96, 128)] * 2))


def test_predictions_place_the_mean_pose_in_each_crop():
    kps = np.ones((2, 17, 3))
    kps[:, :, :2] = (48.0, 64.0)  # the crop's centre
    train = _table(kps, [(0, 0, 96, 128)] * 2)
    val = _table(kps[:1], [(100, 50, 196, 178)])  # a crop of the same size, shifted
    (pred,) = mean_pose_predictions(train, val)
    xy = np.reshape(pred["keypoints"], (17, 3))
    assert xy[:, 0] == pytest.approx(148.0) and xy[:, 1] == pytest.approx(114.0) and (xy[:, 2] == 1).all()
