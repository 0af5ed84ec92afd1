"""The ``train_baseline`` stage: train a CNN baseline through the one loop, save it, score it.

Trains on an ingested 300W-LP table with :func:`pipeline.train.ray_deepspeed.train`, copies
the model folder into ``out`` atomically, evaluates it on every test table (AFLW2000, BIWI…)
and writes the metrics JSON (DVC metrics) atomically. The CLI, DVC and Prefect callers only
read tables and params and call :func:`train_baseline`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.baselines.config import BaselineConfig
from pipeline.baselines.predict import evaluate_baseline
from pipeline.baselines.task import REQUIRED_COLUMNS, BaselineTask
from pipeline.train.run_names import run_name


def table_digest(table: pa.Table, columns: tuple[str, ...] = REQUIRED_COLUMNS) -> str:
    """A SHA-256 of the columns training reads, from their Arrow buffers (no copy, no decode).

    Offsets and lengths are hashed with the buffers: two slices of one table share buffers.
    """
    h = hashlib.sha256()
    for name in columns:
        h.update(name.encode())
        for chunk in table.column(name).chunks:
            h.update(f"{chunk.offset}:{len(chunk)}".encode())
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
    return h.hexdigest()


def baseline_run_name(cfg: BaselineConfig, train_digest: str) -> str:
    """The training run's name (:mod:`pipeline.train.run_names`): config, data and code."""
    return run_name(f"baseline-{cfg.name}", cfg.model_dump(mode="json"), train_digest)


def _log_test_metrics(tracking: Mapping[str, Any] | None, run_id: str | None, tests: dict[str, Any]) -> None:
    """Add the test scores to the training run in MLflow (scalars only)."""
    if tracking is None or run_id is None:
        return
    import time

    import mlflow
    from mlflow.entities import Metric

    uri = tracking.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    ts = int(time.time() * 1000)
    metrics = [
        Metric(f"test/{name}/{key}", float(value), ts, 0)
        for name, scores in tests.items()
        for key, value in scores.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    mlflow.MlflowClient(uri).log_batch(run_id, metrics=metrics)


def train_baseline(
    cfg_section: Mapping[str, Any] | BaselineConfig,
    train_table: pa.Table,
    test_tables: Mapping[str, pa.Table],
    out: str | Path,
    runs: str | Path,
    metrics_path: str | Path,
    tracking: Mapping[str, Any] | None = None,
    chance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, save and evaluate a CNN head-pose baseline.

    Args:
        cfg_section: the ``baseline`` params section (or a validated :class:`BaselineConfig`).
        train_table: ingested training rows (``source_id``, ``face_jpeg``, yaw, pitch, roll).
        test_tables: test set name → ingested rows (e.g. ``{"aflw2000": …, "biwi": …}``).
        out: the model folder (``model.safetensors`` + ``config.json``; replaced atomically).
        runs: run folder of the training loop (checkpoints: a killed run resumes from here).
        metrics_path: the metrics JSON (written atomically).
        tracking: MLflow settings passed to the loop (``None``: no MLflow); the test scores are
            logged to the same run.
        chance: the chance predictor's scores on the same sets
            (:func:`pipeline.evaluate.yardsticks.chance_scores`), written beside the model's.

    Returns:
        ``baseline``, ``steps``, ``final_loss``, ``samples_per_s``, ``startup_seconds``,
        ``resumed_from_step``, ``mlflow_run_id`` and ``test`` (name → scores).
    """
    from pipeline.train.config import TrainConfig
    from pipeline.train.ray_deepspeed import train

    cfg = cfg_section if isinstance(cfg_section, BaselineConfig) else BaselineConfig.model_validate(dict(cfg_section))
    train_cfg = TrainConfig.model_validate(cfg.train)
    # Each worker gets its reserved CPUs as torch threads (at least one), no more.
    task = BaselineTask(cfg, torch_threads=max(1, int(train_cfg.cpus_per_worker)))
    result = train(
        task,
        train_table,
        train_cfg,
        Path(runs),
        run_name=baseline_run_name(cfg, table_digest(train_table)),
        tracking=tracking,
    )
    with atomic_dir(out) as tmp:
        shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)

    tests = {name: evaluate_baseline(out, table) for name, table in test_tables.items()}
    _log_test_metrics(tracking, result.mlflow_run_id, tests)
    # Same params + seed ⇒ same metrics file: no timings in it (they go to the summary).
    write_json_atomic(
        metrics_path,
        {
            "baseline": cfg.name,
            "backbone": cfg.backbone,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "test": tests,
            **({"chance": dict(chance)} if chance is not None else {}),
        },
    )
    return {
        "baseline": cfg.name,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "samples_per_s": result.samples_per_s,
        "startup_seconds": result.startup_seconds,
        "resumed_from_step": result.resumed_from_step,
        "mlflow_run_id": result.mlflow_run_id,
        "test": tests,
    }
