"""Where stages put their outputs (the same paths ``dvc.yaml`` declares).

``tests/unit/test_layout.py`` checks that ``dvc.yaml`` and these functions agree, so the
Prefect flow's direct mode and ``dvc repro`` write to the same places.
"""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
GROUND_TRUTH = Path("data/ground_truth")
PARQUET = Path("data/parquet")
METRICS = Path("metrics")
REPORTS = Path("reports")
MODELS = Path("models")


def base_model() -> Path:
    return MODELS / "base"


def adapter_out(name: str) -> Path:
    return MODELS / "adapters" / name


def train_runs() -> Path:
    """Scratch folder of the training loop (checkpoints for resume); not a DVC output."""
    return MODELS / "runs"


def pretrain_metrics() -> Path:
    return METRICS / "pretrain_base.json"


def lora_metrics(name: str) -> Path:
    return METRICS / "lora" / f"{name}.json"


def synth_out(name: str) -> Path:
    return RAW / name


def parquet_out(name: str) -> Path:
    return PARQUET / name


def ground_truth_out(name: str) -> Path:
    return GROUND_TRUTH / name


def ingest_metrics(name: str) -> Path:
    return METRICS / "ingest" / f"{name}.json"


def run_summary() -> Path:
    return REPORTS / "pipeline_run.json"
