"""Evaluation: ground-truth files and metrics (COCO keypoint AP per domain and scene, …)."""

from __future__ import annotations

from pipeline.evaluate.coco_gt import coco_keypoint_ap, write_ground_truth

__all__ = ["coco_keypoint_ap", "write_ground_truth"]
