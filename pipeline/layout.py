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


def adapters_root() -> Path:
    return MODELS / "adapters"


def adapter_out(name: str) -> Path:
    return adapters_root() / name


def merged_root() -> Path:
    return MODELS / "merged"


def train_runs() -> Path:
    """Scratch folder of the training loop (checkpoints for resume); not a DVC output."""
    return MODELS / "runs"


def pretrain_metrics() -> Path:
    return METRICS / "pretrain_base.json"


def lora_metrics(name: str) -> Path:
    return METRICS / "lora" / f"{name}.json"


def curve(stage: str) -> Path:
    """Training curve (loss and lr per step) of a training stage, for ``dvc plots``."""
    return METRICS / "curves" / f"{stage}.json"


def baseline_out() -> Path:
    return MODELS / "baseline"


def baseline_metrics() -> Path:
    return METRICS / "baseline.json"


def merged_out(method: str) -> Path:
    return merged_root() / method


def merge_metrics(method: str) -> Path:
    return METRICS / "merge" / f"{method}.json"


def eval_metrics_dir() -> Path:
    """Per-candidate evaluation metrics (one JSON per candidate)."""
    return METRICS / "eval"


def evaluation_table() -> Path:
    return METRICS / "evaluation.json"


def invalid_answers_dir() -> Path:
    return REPORTS / "invalid_answers"


def report_md() -> Path:
    return REPORTS / "report.md"


def registry_out() -> Path:
    return REPORTS / "registry.json"


def pose_models_root() -> Path:
    return MODELS / "pose"


def pose_model(name: str) -> Path:
    """``original`` (ViTPose on COCO), ``finetuned`` or ``vlpose``."""
    return pose_models_root() / name


def pose_train_metrics(which: str) -> Path:
    return METRICS / "pose_train" / f"{which}.json"


def pose_metrics_dir() -> Path:
    """COCO keypoint AP per model (``original.json``, ``finetuned.json``, ``vlpose.json``)."""
    return METRICS / "pose"


def pose_predictions() -> Path:
    return REPORTS / "pose_predictions"


def pose_registry_out() -> Path:
    return REPORTS / "pose_registry.json"


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
