"""The keypoint yardstick: a *mean-pose* predictor, scored by the same COCO evaluation.

It answers every person crop with the training records' mean position of each joint (in crop
pixels: the crop is the person box grown by ``pose_padding``, so the mean pose already sits
where people are), every joint with score 1. Its AP is what a model earns by knowing where a
person's joints are *on average*; a keypoint model has learnt something about the picture only
when it is clearly above this.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.pose2d.predict import coco_results, keypoint_ap

MEAN_POSE = "mean_pose"  # the yardstick's name in metrics/pose/ and the report


def mean_pose(train: pa.Table) -> np.ndarray:
    """``(K, 2)`` mean crop position of each joint over the training records where it is labelled.

    Raises:
        ValueError: a joint labelled in no training record.
    """
    kps = np.asarray(train.column("keypoints_crop").to_pylist(), dtype=np.float64).reshape(train.num_rows, -1, 3)
    labelled = kps[..., 2] > 0
    if not labelled.any(axis=0).all():
        missing = np.flatnonzero(~labelled.any(axis=0)).tolist()
        raise ValueError(f"training records label no position for joints {missing}: no mean pose")
    total = (kps[..., :2] * labelled[..., None]).sum(axis=0)
    return total / labelled.sum(axis=0)[:, None]


def mean_pose_predictions(train: pa.Table, val: pa.Table) -> list[dict]:
    """COCO results of the mean-pose predictor for every validation record."""
    pose = mean_pose(train)
    rows = val.select(["image_id", "crop_box", "crop_jpeg"]).to_pylist()
    xy = np.broadcast_to(pose, (len(rows), *pose.shape))
    return coco_results(rows, xy, np.ones(xy.shape[:2]))


def mean_pose_scores(
    train: pa.Table, vals: Mapping[str, pa.Table], gt_files: Mapping[str, Mapping[str, Path]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per domain: :func:`keypoint_ap` of the mean-pose predictor against each ground-truth file."""
    return {d: keypoint_ap(mean_pose_predictions(train, vals[d]), gt_files[d]) for d in vals}


def metrics_document(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """``metrics/pose/mean_pose.json`` in the models' layout: ``domains`` and ``scenes`` stats."""
    from pipeline.pose2d.stages import _metrics_doc

    return {"model": MEAN_POSE, "kind": "chance", **_metrics_doc(scores)}
