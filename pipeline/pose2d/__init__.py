"""2D human pose: the original ViTPose, VLPose on top of it, their training tasks and evaluation.

* ``heatmaps`` — Gaussian targets (UDP coordinates), masked MSE, DARK decoding.
* ``text`` — domain prompts (``PromptConfig``) and the frozen, cached text encoder (``TextEncoder``).
* ``vitpose`` — ``ViTPoseSize``, ``build_vitpose``/``load_vitpose``, the head taken apart in stages.
* ``matcher`` — the vision-language relation matcher.
* ``model`` — ``VLPoseModel``: frozen original + matcher + twin decoder (``inject=False`` = original).
* ``inputs`` — records → normalised crops and heatmap targets.
* ``task`` — ``ViTPoseTask`` and ``VLPoseTask`` for :func:`pipeline.train.ray_deepspeed.train`.
* ``artifacts`` — ``save_vitpose``/``save_vlpose``, ``load_pose_model`` → ``PoseEstimator``.
* ``predict`` — records → COCO results in image coordinates; AP per domain / scene; Ray Data.
* ``config`` — ``PoseConfig``, the ``pose`` section of ``params.yaml``.
* ``stages`` — ``train_original``, ``train_finetune``, ``train_vlpose``, ``evaluate_pose``.
* ``registry`` — VLPose in the MLflow registry (``register_vlpose``, the ``KeypointModel`` pyfunc).

The main names are importable from here; they load lazily (torch and transformers are heavy),
so importing :mod:`pipeline` does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ViTPoseSize": "vitpose",
    "build_vitpose": "vitpose",
    "load_vitpose": "vitpose",
    "VLPoseConfig": "model",
    "VLPoseModel": "model",
    "PromptConfig": "text",
    "TextEncoder": "text",
    "ViTPoseTask": "task",
    "VLPoseTask": "task",
    "PoseEstimator": "artifacts",
    "load_pose_model": "artifacts",
    "save_vitpose": "artifacts",
    "save_vlpose": "artifacts",
    "predict_table": "predict",
    "keypoint_ap": "predict",
    "evaluate_keypoints": "predict",
    "predict_records": "predict",
    "PoseConfig": "config",
    "train_original": "stages",
    "train_finetune": "stages",
    "train_vlpose": "stages",
    "evaluate_pose": "stages",
    "register_vlpose": "registry",
    "KeypointModel": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
