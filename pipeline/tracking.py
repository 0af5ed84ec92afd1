"""MLflow tracking: one place that knows the tracking URI, experiment and lineage tags.

Lineage chain: a DVC data version (the ``dvc.lock`` hash of a stage output) →
the Prefect flow run that drove the stage (``HPE_PREFECT_FLOW_RUN_ID``, set by the Prefect
task for the ``dvc repro`` subprocess) → the MLflow run that logged it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import TrackingConfig

FLOW_RUN_ENV = "HPE_PREFECT_FLOW_RUN_ID"
SQLITE_PREFIX = "sqlite:///"


def absolute_tracking_uri(uri: str, base: Path | None = None) -> str:
    """``uri`` with a relative ``sqlite:///x.db`` made absolute (x.db under ``base``, default the
    current folder): a process started elsewhere (a Ray worker, the flow) must reach the same file."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        path = Path(uri[len(SQLITE_PREFIX) :])
        return SQLITE_PREFIX + str(((base or Path.cwd()) / path).resolve())
    return uri


def lineage_tags() -> dict[str, str]:
    """Tags tying an MLflow run to the Prefect flow run (and DVC stage) that started it."""
    tags = {}
    if run_id := os.environ.get(FLOW_RUN_ENV):
        tags["prefect.flow_run_id"] = run_id
    if stage := os.environ.get("HPE_DVC_STAGE"):
        tags["dvc.stage"] = stage
    return tags


@contextmanager
def mlflow_run(cfg: TrackingConfig, run_name: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start an MLflow run in the configured experiment, tagged with the lineage tags.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` so that child processes
    inherit it; left behind, that export would override the next config's ``tracking_uri`` in
    this process (``resolved_uri`` lets the variable win). The variable is restored on exit.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(cfg.resolved_uri())
        mlflow.set_experiment(cfg.experiment)
        with mlflow.start_run(run_name=run_name, tags={**lineage_tags(), **(tags or {})}) as run:
            yield run
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def loop_tracking(cfg: TrackingConfig, stage: str, inputs: list[tuple[str, Path]]) -> dict[str, Any] | None:
    """The ``tracking`` argument of the training loop: where rank 0 logs, with the lineage tags
    and the input datasets (name, Parquet folder) the run names; ``None`` when tracking is off."""
    if not cfg.enabled:
        return None
    return {
        "tracking_uri": cfg.resolved_uri(),
        "experiment": cfg.experiment,
        "tags": {**lineage_tags(), "stage": stage},
        "datasets": [{"name": n, "path": str(p), "context": "training"} for n, p in inputs],
    }


def _mlflow_type(t: pa.DataType) -> Any:
    from mlflow.types.schema import Array, DataType

    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return Array(_mlflow_type(t.value_type))
    table = {
        pa.string(): DataType.string,
        pa.bool_(): DataType.boolean,
        pa.float64(): DataType.double,
        pa.float32(): DataType.float,
        pa.int32(): DataType.integer,
        pa.int64(): DataType.long,
        pa.binary(): DataType.binary,
    }
    return table.get(t, DataType.string)


def arrow_to_mlflow_schema(schema: pa.Schema) -> Any:
    """The MLflow dataset schema equivalent of an Arrow schema."""
    from mlflow.types.schema import ColSpec, Schema

    return Schema([ColSpec(_mlflow_type(f.type), f.name) for f in schema])


def log_parquet_dataset(name: str, folder: Path, schema: pa.Schema, dvc_hash: str, context: str) -> None:
    """Log a Parquet folder as an MLflow dataset input of the active run.

    The digest is the DVC hash of the folder, so the MLflow dataset names the exact data
    version that ``dvc.lock`` pins.
    """
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # Two registered local-file sources both claim a plain path; either is right here.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(folder).resolve()))
    dataset = MetaDataset(source=source, name=name, digest=dvc_hash, schema=arrow_to_mlflow_schema(schema))
    mlflow.log_input(dataset, context=context, tags={"dvc.md5": dvc_hash})


def metric_history(tracking_uri: str, run_id: str, keys: tuple[str, ...] = ("loss", "lr")) -> list[dict[str, float]]:
    """Per-step values of ``keys`` logged to an MLflow run, one row per step (for curves).

    A resumed run logs again the steps between its last checkpoint and the kill; the value
    logged last for a step wins, which is the one the finished run's weights came from.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
            rows.setdefault(m.step, {"step": m.step})[key] = m.value
    return [rows[s] for s in sorted(rows)]


def write_curve(tracking_uri: str | None, run_id: str | None, path: Path) -> list[dict[str, float]]:
    """Write a run's training curve as JSON rows (``dvc plots``); ``[]`` when it was not tracked."""
    from pipeline.atomic import write_json_atomic

    rows = metric_history(tracking_uri, run_id) if tracking_uri and run_id else []
    write_json_atomic(path, rows)
    return rows


# ---------------------------------------------------------------- losing the tracking server
BUFFER_FILE = "mlflow_buffer.jsonl"


class TrackingLostWarning(RuntimeWarning):
    """MLflow stopped answering during a training run; its metrics went to a local buffer."""


class TrackingBuffer:
    """What could not reach the tracking server, one JSON line per record, to replay later.

    Records: ``lost`` (the error, when it first happened), ``metric`` (key, value, timestamp,
    step), ``tag`` and ``terminated`` (the run's final status). Each carries the run id and
    tracking URI, so :func:`replay_tracking_buffer` needs nothing but the file. Lines are
    appended and flushed: a crash can cut at most the last line, which replay skips.
    """

    def __init__(self, path: str | Path, tracking_uri: str, run_id: str):
        self.path, self.tracking_uri, self.run_id = Path(path), tracking_uri, run_id

    def append(self, records: list[dict[str, Any]]) -> None:
        import json

        base = {"run_id": self.run_id, "tracking_uri": self.tracking_uri}
        with self.path.open("a") as f:
            f.write("".join(json.dumps({**base, **r}) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def lost(self, error: BaseException | str, step: int | None = None) -> None:
        import time

        self.append([{"kind": "lost", "error": f"{error}"[:2000], "step": step, "time": time.time()}])

    def metrics(self, metrics: list[Any]) -> None:
        """``mlflow.entities.Metric`` objects."""
        self.append(
            [
                {"kind": "metric", "key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                for m in metrics
            ]
        )

    def tag(self, key: str, value: str) -> None:
        self.append([{"kind": "tag", "key": key, "value": value}])

    def terminated(self, status: str) -> None:
        import time

        self.append([{"kind": "terminated", "status": status, "end_time": int(time.time() * 1000)}])


def read_tracking_buffer(path: str | Path) -> list[dict[str, Any]]:
    """The records of a buffer file; a cut last line (the writer was killed mid-write) is skipped."""
    import json

    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def replay_tracking_buffer(path: str | Path, tracking_uri: str | None = None) -> dict[str, int]:
    """Send a buffer's metrics, tags and final status to the tracking server, then retire the file.

    Replaying twice is harmless: MLflow's SQL stores skip a metric already logged with the
    same key, step, timestamp and value. The file is renamed ``<name>.replayed`` once every
    record went through; on an error it stays, and the error propagates.

    Args:
        path: the ``mlflow_buffer.jsonl`` (beside the training run's checkpoints).
        tracking_uri: where to send it; default the URI the records name.

    Returns:
        Counts: ``metrics``, ``tags``, ``terminated`` (0 or 1 per run).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    path = Path(path)
    records = read_tracking_buffer(path)
    counts = {"metrics": 0, "tags": 0, "terminated": 0}
    runs = dict.fromkeys(r["run_id"] for r in records)
    for run_id in runs:
        mine = [r for r in records if r["run_id"] == run_id]
        client = MlflowClient(tracking_uri or mine[0]["tracking_uri"])
        metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in mine if r["kind"] == "metric"]
        tags = [RunTag(r["key"], r["value"]) for r in mine if r["kind"] == "tag"]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        if tags:
            client.log_batch(run_id, tags=tags)
        if ends := [r for r in mine if r["kind"] == "terminated"]:
            client.set_terminated(run_id, status=ends[-1]["status"], end_time=ends[-1]["end_time"])
        counts["metrics"] += len(metrics)
        counts["tags"] += len(tags)
        counts["terminated"] += bool(ends)
    path.replace(path.with_name(path.name + ".replayed"))
    return counts
