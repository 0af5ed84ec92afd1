"""Batch inference of a saved baseline over a head-pose table, and its cross-dataset scores.

The scores are :func:`pipeline.evaluate.headpose.headpose_metrics` (MAE per angle with
wrap-around, MAEV, geodesic) — the same numbers the VLMs are judged by — plus the MAE per
|yaw| bin (:func:`~pipeline.evaluate.headpose.mae_by_bin`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from pipeline.baselines.config import BaselineConfig
from pipeline.baselines.task import load_baseline, load_faces
from pipeline.evaluate.headpose import headpose_metrics, mae_by_bin

Pose = tuple[float, float, float]


def predict_table(
    model: nn.Module, cfg: BaselineConfig, table: pa.Table, *, batch_size: int | None = None
) -> list[Pose]:
    """Predicted ``(yaw, pitch, roll)`` in degrees for every row's ``face_jpeg``, in row order.

    Args:
        model: a baseline module (put in eval mode here: BN uses its running statistics).
        cfg: its config (input size, default batch size).
        table: rows with a ``face_jpeg`` column.
        batch_size: images per forward pass; defaults to ``cfg.eval_batch_size``.
    """
    if "face_jpeg" not in table.column_names:
        raise ValueError(f"table lacks column 'face_jpeg'; it has {table.column_names}")
    size = batch_size or cfg.eval_batch_size
    model.eval()
    poses: list[Pose] = []
    with torch.inference_mode():
        for start in range(0, table.num_rows, size):
            jpegs = table.column("face_jpeg").slice(start, size).to_pylist()
            angles = model.euler(model(load_faces(jpegs, cfg.input_size, normalize=cfg.normalize)))
            poses += [tuple(float(a) for a in row) for row in angles.double().tolist()]
    return poses


def true_poses(table: pa.Table) -> list[Pose]:
    """The table's ``(yaw, pitch, roll)`` labels."""
    missing = [c for c in ("yaw", "pitch", "roll") if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks label column(s) {missing}; it has {table.column_names}")
    cols = [table.column(c).to_pylist() for c in ("yaw", "pitch", "roll")]
    return [(float(y), float(p), float(r)) for y, p, r in zip(*cols, strict=True)]


def evaluate_baseline(folder: str | Path, table: pa.Table, *, batch_size: int | None = None) -> dict[str, Any]:
    """Scores of the baseline saved in ``folder`` on ``table`` (an ingested test set).

    Returns:
        :func:`headpose_metrics`' fields (``n``, ``n_valid``, ``invalid_rate``, ``mae_yaw``,
        ``mae_pitch``, ``mae_roll``, ``mae``, ``maev``, ``geodesic``) and ``by_yaw_bin`` (a list
        of ``{"bin", "n", "mae"}``).
    """
    model, cfg = load_baseline(folder)
    truth = true_poses(table)
    pred = predict_table(model, cfg, table, batch_size=batch_size)
    return {**headpose_metrics(pred, truth), "by_yaw_bin": mae_by_bin(pred, truth)}
