"""``hpe`` command line: parses arguments, loads params, calls a stage function, prints a summary.

No stage logic lives here: every command is a thin wrapper over
:mod:`pipeline.stages`, which DVC (through this CLI), Prefect and the tests share.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="hpe-pipeline stages.")

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params file")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@contextmanager
def _user_errors(*errors: type[Exception]) -> Iterator[None]:
    """A stage's documented errors end the command with ``error: <message>`` and exit code 2
    instead of a traceback (a KeyError's message loses the quotes ``str`` puts around it)."""
    try:
        yield
    except errors as err:
        _fail(str(err).strip("'\"") if isinstance(err, KeyError) else str(err))


def _load(params_path: Path):
    from pipeline.config import ConfigError, load_params

    try:
        return load_params(params_path)
    except ConfigError as err:
        _fail(str(err))


@app.command()
def synth(
    name: str = typer.Argument(..., help="synthetic dataset: 300w_lp, aflw2000, biwi, coco, humanart"),
    out: Path = typer.Option(..., "--out", help="output directory (replaced)"),
    params: Path = ParamsOpt,
) -> None:
    """Write a synthetic dataset in its real on-disk layout."""
    from pipeline import stages

    p = _load(params)
    with _user_errors(KeyError, ValueError):
        summary = stages.synth(p, name, out)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def ingest(
    name: str = typer.Argument(..., help="dataset: 300w_lp, aflw2000, biwi (auto: hpdb or npz), biwi_hpdb, biwi_npz"),
    raw_root: Path = typer.Option(..., "--raw-root", help="directory in the dataset's real layout"),
    out: Path = typer.Option(..., "--out", help="Parquet output directory (replaced atomically)"),
    metrics: Path | None = typer.Option(None, "--metrics", help="write DVC metrics JSON here"),
    engine: str = typer.Option("ray", "--engine", help="ray (Ray Data) or local (plain loop)"),
    params: Path = ParamsOpt,
) -> None:
    """Ingest a raw dataset directory into validated Parquet shards (+ quarantine)."""
    from pipeline import stages
    from pipeline.datasets.base import LayoutError
    from pipeline.ingest import IngestError

    p = _load(params)
    with _user_errors(LayoutError, IngestError, KeyError):
        summary = stages.ingest_stage(p, name, raw_root, out, metrics=metrics, engine=engine)
    brief = {
        k: summary[k]
        for k in ("dataset", "counts_in", "kept", "filtered", "quarantined", "kept_by_split", "seconds", "dvc_md5")
    }
    typer.echo(json.dumps(brief, indent=2))
    if summary["quarantined"]:
        typer.echo(f"quarantined records: {Path(out) / 'quarantine.parquet'}", err=True)


@app.command("ground-truth")
def ground_truth(
    name: str = typer.Argument(..., help="keypoint dataset: coco, humanart"),
    raw_root: Path = typer.Option(..., "--raw-root", help="directory in the dataset's real layout"),
    out: Path = typer.Option(..., "--out", help="output directory for the COCO GT JSONs"),
    params: Path = ParamsOpt,
) -> None:
    """Write COCO-format evaluation ground truth (all, per domain, per scene) for the val split."""
    from pipeline import stages
    from pipeline.datasets.base import LayoutError

    p = _load(params)
    with _user_errors(LayoutError, ValueError, KeyError):
        summary = stages.ground_truth(p, name, raw_root, out)
    typer.echo(json.dumps(summary, indent=2))


@app.command("pretrain-base")
def pretrain_base(
    out: Path = typer.Option(Path("models/base"), "--out", help="base VLM folder"),
    runs: Path = typer.Option(Path("models/runs"), "--runs", help="checkpoints (resume)"),
    metrics: Path | None = typer.Option(None, "--metrics", help="held-out grounding metrics"),
    curve: Path | None = typer.Option(None, "--curve", help="training curve JSON (dvc plots)"),
    params: Path = ParamsOpt,
) -> None:
    """Train the tiny VLM on grounding (or validate and link params' real checkpoint)."""
    from pipeline.train.ray_deepspeed import PreflightError
    from pipeline.vlm import stages as vlm_stages

    p = _load(params)
    with _user_errors(PreflightError, FileNotFoundError, PermissionError):
        summary = vlm_stages.pretrain_base(p, out, runs, metrics, curve=curve)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("train-lora")
def train_lora(
    name: str = typer.Argument(..., help="adapter name from params lora.adapters"),
    base: Path = typer.Option(Path("models/base"), "--base", help="base VLM folder"),
    out: Path = typer.Option(..., "--out", help="adapter folder (PEFT save_pretrained)"),
    runs: Path = typer.Option(Path("models/runs"), "--runs", help="checkpoints (resume)"),
    metrics: Path | None = typer.Option(None, "--metrics", help="held-out metrics JSON"),
    curve: Path | None = typer.Option(None, "--curve", help="training curve JSON (dvc plots)"),
    params: Path = ParamsOpt,
) -> None:
    """Train one LoRA adapter of the base VLM through Ray Train + DeepSpeed."""
    from pipeline.train.ray_deepspeed import PreflightError
    from pipeline.vlm import stages as vlm_stages

    p = _load(params)
    with _user_errors(PreflightError, FileNotFoundError, PermissionError, KeyError):
        summary = vlm_stages.train_lora(p, name, base, out, runs, metrics, curve=curve)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("train-baseline")
def train_baseline(
    out: Path = typer.Option(Path("models/baseline"), "--out", help="baseline model folder"),
    runs: Path = typer.Option(Path("models/runs"), "--runs", help="checkpoints (resume)"),
    metrics: Path = typer.Option(Path("metrics/baseline.json"), "--metrics", help="test-set scores"),
    curve: Path | None = typer.Option(None, "--curve", help="training curve JSON (dvc plots)"),
    params: Path = ParamsOpt,
) -> None:
    """Train the 6DRepNet-style baseline on 300W-LP and score it on the cross-dataset test sets."""
    from pipeline import stages
    from pipeline.train.ray_deepspeed import PreflightError

    p = _load(params)
    with _user_errors(PreflightError, FileNotFoundError, PermissionError):
        summary = stages.baseline_stage(p, out, runs, metrics, curve=curve)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("merge")
def merge(
    method: str = typer.Argument(..., help="merge method from params merge.methods"),
    base: Path = typer.Option(Path("models/base"), "--base", help="base VLM folder"),
    adapters: Path = typer.Option(Path("models/adapters"), "--adapters", help="folder of the LoRA adapters"),
    out: Path = typer.Option(..., "--out", help="merged model folder (save_pretrained)"),
    metrics: Path | None = typer.Option(None, "--metrics", help="merge summary JSON"),
    params: Path = ParamsOpt,
) -> None:
    """Merge the LoRA adapters params names (merge.inputs) into the base VLM by one method."""
    from pipeline.vlm import stages as vlm_stages

    p = _load(params)
    with _user_errors(FileNotFoundError, ValueError, KeyError):
        summary = vlm_stages.merge_stage(p, method, base, adapters, out, metrics)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("evaluate")
def evaluate(
    base: Path = typer.Option(Path("models/base"), "--base", help="base VLM folder"),
    adapters: Path | None = typer.Option(Path("models/adapters"), "--adapters", help="LoRA adapters folder"),
    merged: Path | None = typer.Option(Path("models/merged"), "--merged", help="merged models folder"),
    metrics_dir: Path = typer.Option(Path("metrics/eval"), "--metrics-dir", help="one JSON per candidate"),
    table: Path = typer.Option(Path("metrics/evaluation.json"), "--table", help="all candidates"),
    invalid: Path = typer.Option(Path("reports/invalid_answers"), "--invalid", help="invalid answers"),
    params: Path = ParamsOpt,
) -> None:
    """Every candidate (base, LoRA adapters, merges) on the head-pose test sets and on grounding."""
    from pipeline.evaluate.vlm_stage import evaluate_vlm

    p = _load(params)
    with _user_errors(FileNotFoundError, ValueError):
        summary = evaluate_vlm(p, base, adapters, merged, metrics_dir, table, invalid)
    typer.echo(json.dumps(summary["rows"], indent=2, default=str))


@app.command("pose-train")
def pose_train(
    which: str = typer.Argument(..., help="original (ViTPose on COCO), finetune or vlpose (COCO + HumanArt)"),
    out: Path = typer.Option(..., "--out", help="model folder (save_pretrained)"),
    original: Path | None = typer.Option(None, "--original", help="the original ViTPose (finetune, vlpose)"),
    runs: Path = typer.Option(Path("models/runs"), "--runs", help="checkpoints (resume)"),
    metrics: Path | None = typer.Option(None, "--metrics", help="training summary JSON"),
    curve: Path | None = typer.Option(None, "--curve", help="training curve JSON (dvc plots)"),
    params: Path = ParamsOpt,
) -> None:
    """Train one 2D keypoint model of the VLPose comparison through Ray Train + DeepSpeed."""
    from pipeline import stages
    from pipeline.train.ray_deepspeed import PreflightError

    p = _load(params)
    with _user_errors(PreflightError, FileNotFoundError, PermissionError, ValueError, KeyError):
        summary = stages.pose_train_stage(p, which, out, runs, original=original, metrics=metrics, curve=curve)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("pose-evaluate")
def pose_evaluate(
    models_root: Path = typer.Option(Path("models/pose"), "--models-root", help="original/, finetuned/, vlpose/"),
    metrics_dir: Path = typer.Option(Path("metrics/pose"), "--metrics-dir", help="one JSON per model"),
    predictions: Path = typer.Option(Path("reports/pose_predictions"), "--predictions", help="COCO results"),
    params: Path = ParamsOpt,
) -> None:
    """COCO keypoint AP of each pose model on COCO val and HumanArt val, per domain and scene."""
    from pipeline import stages

    p = _load(params)
    with _user_errors(FileNotFoundError, ValueError):
        summary = stages.pose_evaluate_stage(p, models_root, metrics_dir, predictions)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("pose-register")
def pose_register(
    metrics_dir: Path = typer.Option(Path("metrics/pose"), "--metrics-dir", help="the pose evaluation's metrics"),
    vlpose: Path = typer.Option(Path("models/pose/vlpose"), "--vlpose", help="the VLPose folder"),
    out: Path = typer.Option(Path("reports/pose_registry.json"), "--out", help="gate decision JSON"),
    params: Path = ParamsOpt,
) -> None:
    """Register VLPose in MLflow (alias candidate; champion behind the gate)."""
    from pipeline import stages

    p = _load(params)
    with _user_errors(FileNotFoundError, ValueError):
        summary = stages.pose_register_stage(p, metrics_dir, vlpose, out)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("register")
def register(
    table: Path = typer.Option(Path("metrics/evaluation.json"), "--table", help="evaluation table"),
    merged: Path = typer.Option(Path("models/merged"), "--merged", help="merged models folder"),
    out: Path = typer.Option(Path("reports/registry.json"), "--out", help="gate decisions JSON"),
    params: Path = ParamsOpt,
) -> None:
    """Register every merged model in MLflow (alias candidate; champion behind the gate)."""
    from pipeline.registry import register_merged

    p = _load(params)
    if not p.registry.enabled:
        _fail("registry.enabled is false in params")
    with _user_errors(FileNotFoundError, ValueError):
        summary = register_merged(p, table, merged, out)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("report")
def report(params: Path = ParamsOpt) -> None:
    """Render reports/report.md and its figures from the metrics files; attach them to MLflow."""
    from pipeline.report import report_stage

    p = _load(params)
    with _user_errors(FileNotFoundError):
        summary = report_stage(p)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("ask")
def ask(
    image: Path = typer.Argument(..., help="an image file (JPEG/PNG)"),
    box: str | None = typer.Option(None, "--box", help="head box x0,y0,x1,y1 in pixels (head pose)"),
    alias: str = typer.Option("champion", "--alias", help="registry alias"),
    params: Path = ParamsOpt,
) -> None:
    """Ask the registered model behind an alias for a head pose (with --box) or the head's box."""
    import mlflow
    import pandas as pd

    from pipeline.registry import load_champion

    p = _load(params)
    mlflow.set_tracking_uri(p.tracking.resolved_uri())
    try:
        data = image.read_bytes()
    except OSError as err:
        _fail(f"{image}: cannot read ({err.strerror})")
    coords = None
    if box is not None:
        try:
            coords = [float(v) for v in box.split(",")]
        except ValueError:
            coords = []
        if len(coords) != 4:
            _fail(f"--box must be four numbers x0,y0,x1,y1, got {box!r}")
    try:
        model = load_champion(p.registry.model_name, alias)
    except mlflow.exceptions.MlflowException as err:
        _fail(f"no model {p.registry.model_name}@{alias} in {p.tracking.resolved_uri()}: {err.message}")
    request = pd.DataFrame([{"image": data, "task": "headpose" if coords else "grounding", "box": coords}])
    try:
        answer = model.predict(request).to_dict("records")[0]
    except ValueError as err:
        _fail(str(err))
    typer.echo(json.dumps(answer, indent=2, default=str))


@app.command("check-params")
def check_params(params: Path = ParamsOpt) -> None:
    """Validate params.yaml and exit (non-zero with the offending key on error)."""
    _load(params)
    typer.echo(f"{params}: ok")


@app.command()
def summary(workdir: Path = typer.Option(Path("."), "--workdir")) -> None:
    """Print the last flow run's per-stage wall time, peak memory and where to look next."""
    from pipeline.summary import run_summary_text

    typer.echo(run_summary_text(workdir))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
