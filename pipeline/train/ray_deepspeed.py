"""The one training loop: Ray Train (V2) ``TorchTrainer`` → DeepSpeed, with a task plugged in.

Every model of the project trains through :func:`train`; models differ only by the small
:class:`Task` object they pass (STYLE convention 4). The loop, in the order it runs:

1. **Preflight** (driver, seconds, before Ray starts): the data has the task's columns and at
   least one row, ``out_dir`` is writable, the precision fits the hardware, the task pickles,
   and ``task.preflight()`` (model dir, tokenizer, LoRA targets…) passes. Failures raise
   :class:`PreflightError` naming what is wrong.
2. **Ray**: :func:`pipeline.raycluster.ray_session` joins ``RAY_ADDRESS`` or starts a local Ray;
   a ``TorchTrainer`` (Ray Train V2 — the default API in Ray 2.60, ``RAY_TRAIN_V2_ENABLED``
   need not be set) runs :func:`_train_loop_per_worker` on ``cfg.num_workers`` workers, one GPU
   each when CUDA exists (NCCL), else ``cfg.cpus_per_worker`` CPUs each (gloo,
   ``DS_ACCELERATOR=cpu``).
3. **Data**: the Parquet/Arrow rows go through Ray Data to every worker *unsplit*; each worker
   materialises them once, sorts them by a stable key (``source_id`` first) and draws the
   micro-batches of optimizer step ``s`` from a seeded per-epoch permutation
   (:class:`StepSampler`). Batches are a pure function of ``(seed, step, rank, world size)``,
   so a resumed run replays exactly the batches of an uninterrupted one. (Ray Data's own
   split hands blocks to whichever worker asks first — not reproducible — hence unsplit.)
4. **DeepSpeed**: ``deepspeed.initialize`` (imported inside the worker) with the task's
   trainable parameters, AdamW (``torch_adam``) and a warm-up + cosine LR schedule
   (:func:`lr_factor`) passed as a ``LambdaLR``; ZeRO stage, micro-batch, accumulation,
   precision and clipping from :class:`~pipeline.train.config.TrainConfig`.
5. **Checkpoints** every ``cfg.checkpoint_every`` steps and at the end, reported by every rank
   with ``ray.train.report(metrics, checkpoint=…)``; Ray merges the ranks' directories into
   ``<out_dir>/ray/<run_name>/step_<N>/``:

   * ``model.safetensors`` (rank 0): trainable parameters and buffers — gathered under
     ZeRO-3 — in the model's dtype; frozen weights are rebuilt by ``task.build_model``.
   * ``optim_rank<R>.pt`` (every rank): that rank's optimizer state and fp32 master
     partition, plain tensors, loadable with ``torch.load(weights_only=True)``.
   * ``state.json`` (rank 0): step, scheduler and loss-scale state, the config.

   The RNG needs no checkpoint: each step reseeds torch from ``(seed, step, rank)``.
6. **Resume**: calling :func:`train` again with the same ``out_dir`` and ``run_name`` — in the
   same or a new driver process, after a worker crash or a ``kill -9`` of the driver —
   resumes from the last checkpoint and ends with the weights of an uninterrupted run (bit
   for bit on CPU, every ZeRO stage; ``tests/integration/test_train_loop.py``). Ray Train
   V2 does the finding: a new ``TorchTrainer`` whose ``RunConfig(storage_path=<out_dir>/ray,
   name=run_name)`` holds a ``checkpoint_manager_snapshot.json`` loads it and hands its latest
   checkpoint to ``ray.train.get_checkpoint()`` in every worker (:func:`latest_checkpoint`
   reads the same file to refuse, before Ray starts, a resume whose config differs in a
   field of :data:`~pipeline.train.config.RESUME_INVARIANT_FIELDS`). A checkpoint counts
   once Ray has committed it to that snapshot, which the loop waits for after each report.
   Within one call, ``cfg.max_failures > 0`` makes Ray restart dead workers from it too.
7. **Logging**: rank 0 logs per-step loss, learning rate and samples/s (buffered, flushed every
   ``log_every`` steps) to the MLflow run the driver opened — params = the config, inputs =
   the datasets named in ``tracking``; a resumed run reopens the same MLflow run. When the
   tracking server stops answering (after MLflow's own retries, ``MLFLOW_HTTP_REQUEST_*``),
   training goes on: rank 0 appends what it could not send to ``<run_dir>/mlflow_buffer.jsonl``
   and stops calling the server; :func:`train` returns with ``tracking_lost=True`` and warns
   (:class:`~pipeline.tracking.TrackingLostWarning`). The buffer is replayed by the next
   :func:`train` call of the run, by the driver at the end when the server is back by then,
   or by hand with :func:`pipeline.tracking.replay_tracking_buffer`. Every rank
   calls ``ray.train.report`` with each checkpoint (Ray makes a report wait for the previous
   one to be collected, so reporting every step would throttle the loop). The driver shows a
   tqdm bar when it runs on a terminal.
8. **Save**: rank 0 calls ``task.save(model, <out_dir>/model)`` (written to a temporary folder
   and renamed, so a crash leaves no half-written model).

``out_dir`` must be on storage all nodes share when Ray spans several machines.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.tracking import BUFFER_FILE, absolute_tracking_uri
from pipeline.train.config import RESUME_INVARIANT_FIELDS, TrainConfig

if TYPE_CHECKING:
    import ray.data

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
MLFLOW_RUN_ID_FILE = "mlflow_run_id.txt"
TRACKING_KEYS = {"tracking_uri", "experiment", "tags", "datasets"}
DATASET_KEYS = {"name", "path", "digest", "context"}


# ---------------------------------------------------------------- the task contract
@runtime_checkable
class Task(Protocol):
    """What a model plugs into the loop. Small and picklable: it travels to every worker.

    Attributes:
        required_columns: columns every row must have; checked before Ray starts.

    Optional members, used when present:
        ``sort_keys: Sequence[str]`` — the stable row order (default: ``source_id`` first,
        then every other sortable column); ``preflight() -> None`` — raise on a missing model
        dir, tokenizer, LoRA target module…; ``metrics(model, batch) -> dict[str, float]`` —
        extra numbers logged every ``log_every`` steps (under ``torch.no_grad``).
    """

    required_columns: Sequence[str]

    def build_model(self) -> nn.Module:
        """Build the model in a worker, with ``requires_grad`` set on the trainable part only.

        Must be deterministic (same weights every call): resume rebuilds the frozen part.
        """
        ...

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Turn a micro-batch of rows (Arrow rows as Python dicts) into tensors."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar loss of ``batch``; ``model`` is the DeepSpeed engine (call it like the module)."""
        ...

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """Write the final artifact (e.g. ``save_pretrained``) into ``out_dir`` (rank 0 only)."""
        ...


class PreflightError(ValueError):
    """The inputs of a training run are unusable; raised in seconds, before Ray starts."""


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished (or resumed-and-finished) run.

    ``samples_per_s`` counts the steady state only: from the end of the first step this call
    ran to the end of the last one (start-up and the first step excluded).
    ``startup_seconds`` is the time from :func:`train` being called to the first step starting.
    """

    steps: int
    final_loss: float
    samples_per_s: float
    wall_seconds: float
    startup_seconds: float
    resumed_from_step: int
    mlflow_run_id: str | None
    checkpoint_dir: Path | None
    model_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    # MLflow stopped answering and what it missed is in ``tracking_buffer`` (see :func:`train`).
    tracking_lost: bool = False
    tracking_buffer: Path | None = None


# ---------------------------------------------------------------- schedule and sampling
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (``(step+1)/(warmup+1)``, never 0, as nanoGPT), then
    cosine decay from 1 to ``min_lr_ratio`` at the last step.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepSampler:
    """Row indices of every micro-batch, as a pure function of the step.

    The rows are read as an endless stream of epochs, epoch ``e`` being a permutation of
    ``range(n)`` seeded by ``(seed, e)``. Optimizer step ``s`` consumes the stream positions
    ``[s·B, (s+1)·B)`` with ``B = micro · accum · world``; micro-step ``m`` of rank ``r`` takes
    ``micro`` consecutive positions at offset ``(m·world + r)·micro``. Every row is seen once
    per epoch, and a resumed run draws the same rows as an uninterrupted one.
    """

    def __init__(self, n: int, *, seed: int, micro_batch_size: int, grad_accum: int, world_size: int):
        if n < 1:
            raise ValueError("cannot sample from an empty table")
        self.n, self.seed = n, seed
        self.micro, self.accum, self.world = micro_batch_size, grad_accum, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int, micro_step: int, rank: int) -> np.ndarray:
        global_batch = self.micro * self.accum * self.world
        start = step * global_batch + (micro_step * self.world + rank) * self.micro
        epochs, offsets = np.divmod(np.arange(start, start + self.micro), self.n)
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offsets, strict=True)], dtype=np.int64)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one rank (dropout, augmentation): no RNG state to save."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: decay on matrices, none on biases and norms."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def sort_keys(task: Task, schema: pa.Schema) -> list[str]:
    """Columns the rows are sorted by: the task's ``sort_keys``, else ``source_id`` then every sortable column."""
    if keys := getattr(task, "sort_keys", None):
        return list(keys)
    sortable = [
        f.name
        for f in schema
        if pa.types.is_integer(f.type)
        or pa.types.is_floating(f.type)
        or pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or pa.types.is_boolean(f.type)
        or pa.types.is_temporal(f.type)
        or pa.types.is_binary(f.type)
        or pa.types.is_large_binary(f.type)
    ]
    return sorted(sortable, key=lambda name: name != "source_id")


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of ``cfg`` (optimizer built by DeepSpeed, scheduler passed separately)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: DeepSpeed's fused/CPU Adam need compiled ops (DS_BUILD_OPS=0 here).
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": cfg.eps,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
            },
        },
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.grad_clip > 0:
        ds["gradient_clipping"] = cfg.grad_clip
    return ds


# ---------------------------------------------------------------- preflight (driver)
def _parquet_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.parquet"))
            if not found:
                raise PreflightError(f"training data: folder {p} holds no *.parquet file")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise PreflightError(f"training data: {p} does not exist")
    return files


def _data_schema_and_rows(data: Any) -> tuple[pa.Schema, int]:
    import pyarrow.parquet as pq

    if isinstance(data, pa.Table):
        return data.schema, data.num_rows
    if isinstance(data, (list, tuple)):
        if not data:
            raise PreflightError("training data: the list of Parquet files is empty")
        first: pa.Schema | None = None
        rows = 0
        for f in _parquet_files(data):
            try:
                meta = pq.read_metadata(f)
                schema = pq.read_schema(f)
            except Exception as e:  # noqa: BLE001 — any unreadable file is a preflight failure
                raise PreflightError(f"training data: {f} is not a readable Parquet file: {e}") from e
            first = first or schema
            if missing_here := sorted(set(first.names) - set(schema.names)):
                raise PreflightError(f"training data: {f} lacks columns {missing_here} that other files have")
            rows += meta.num_rows
        return first, rows
    if hasattr(data, "schema") and hasattr(data, "count"):  # a ray.data.Dataset
        schema = data.schema()
        base = getattr(schema, "base_schema", schema)
        if not isinstance(base, pa.Schema):  # pandas-backed: names only; sort by source_id alone
            names = schema.names if schema is not None else []
            base = pa.schema([(n, pa.string() if n == "source_id" else pa.null()) for n in names])
        return base, data.count()
    raise PreflightError(
        f"training data: expected a pyarrow.Table, a ray.data.Dataset or Parquet paths, got {type(data).__name__}"
    )


def preflight(task: Task, data: Any, cfg: TrainConfig, out_dir: Path) -> tuple[pa.Schema, int]:
    """Check a run's inputs before anything slow starts.

    Returns:
        The data's schema and its number of rows.

    Raises:
        PreflightError: naming the missing column, the empty data, the unwritable folder, the
            unpicklable task, or what ``task.preflight()`` raised.
    """
    for name in ("build_model", "collate", "loss", "save"):
        if not callable(getattr(task, name, None)):
            raise PreflightError(f"task {type(task).__name__} has no method {name}()")
    try:
        import ray.cloudpickle

        ray.cloudpickle.dumps(task)
    except Exception as e:  # noqa: BLE001
        raise PreflightError(f"task {type(task).__name__} cannot be pickled to the workers: {e}") from e

    schema, rows = _data_schema_and_rows(data)
    columns = schema.names
    required = list(getattr(task, "required_columns", ()))
    if missing := [c for c in required if c not in columns]:
        raise PreflightError(
            f"training data lacks column(s) {missing} required by task {type(task).__name__}; it has {columns}"
        )
    if rows == 0:
        raise PreflightError("training data is empty (0 rows)")

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PreflightError(f"out_dir {out_dir} is not writable: {e}") from e

    if callable(check := getattr(task, "preflight", None)):
        try:
            check()
        except PreflightError:
            raise
        except Exception as e:  # noqa: BLE001 — report the task's own reason, whatever its type
            raise PreflightError(f"task {type(task).__name__} preflight: {e}") from e
    return schema, rows


def resolve_device(cfg: TrainConfig) -> bool:
    """Whether the workers train on GPUs (``cfg.device``; Ray must be running).

    ``auto`` looks at the cluster as well as the driver: a driver on a CPU-only head node still
    trains on the cluster's GPU nodes.

    Raises:
        PreflightError: bf16/fp16 on CPU workers.
    """
    import ray

    if cfg.device == "auto":
        use_gpu = torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0.0) >= cfg.num_workers
    else:
        use_gpu = cfg.device == "cuda"
    if cfg.precision != "fp32" and not use_gpu:
        raise PreflightError(
            f"precision {cfg.precision!r} needs GPU workers, and device {cfg.device!r} resolved to CPU "
            "(no CUDA on the driver, fewer GPUs in Ray than num_workers): use precision fp32 or device cuda"
        )
    return use_gpu


def _check_resources(cfg: TrainConfig, use_gpu: bool) -> None:
    """On a local Ray, refuse a request that would wait forever for CPUs (or starve Ray Data)."""
    import ray

    resources = ray.cluster_resources()
    total, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    needed = cfg.num_workers * cfg.cpus_per_worker
    if os.environ.get("RAY_ADDRESS"):
        # A cluster may autoscale: let Ray wait for nodes. But on a fixed cluster whose CPUs
        # the workers take, Ray Data's Parquet read tasks wait forever (seen with two 1-CPU
        # nodes and 2 workers × 1 CPU): say so, once, before that silent wait.
        import warnings

        if use_gpu and gpus < cfg.num_workers:
            warnings.warn(
                f"device {cfg.device}: {cfg.num_workers} workers need {cfg.num_workers} GPUs and the cluster "
                f"has {gpus:g} now: training waits until GPU nodes join",
                stacklevel=3,
            )
        if not use_gpu and total - needed < 1:
            warnings.warn(
                f"num_workers × cpus_per_worker = {needed:g} CPUs leaves {total - needed:g} of the cluster's "
                f"{total:g} for Ray Data: reading Parquet will wait until the cluster gains a CPU (lower "
                "cpus_per_worker on a fixed cluster)",
                stacklevel=3,
            )
        return
    if use_gpu:
        if gpus < cfg.num_workers:
            raise PreflightError(
                f"device {cfg.device}: num_workers={cfg.num_workers} needs {cfg.num_workers} GPUs; Ray sees {gpus:g}"
            )
        return
    if total - needed < 1:
        raise PreflightError(
            f"num_workers × cpus_per_worker = {needed:g} CPUs leaves {total - needed:g} of Ray's {total:g} "
            "for Ray Data (its read tasks need a whole CPU): lower cpus_per_worker (e.g. 0.5) or num_workers"
        )


# ---------------------------------------------------------------- driver helpers
def _to_dataset(data: Any, columns: list[str] | None) -> ray.data.Dataset:
    import ray.data

    if isinstance(data, pa.Table):
        return ray.data.from_arrow(data.select(columns) if columns else data)
    if isinstance(data, (list, tuple)):
        return ray.data.read_parquet([str(f) for f in _parquet_files(data)], columns=columns)
    return data.select_columns(columns) if columns else data


def _start_mlflow_run(
    tracking: Mapping[str, Any], cfg: TrainConfig, task: Task, run_name: str, run_dir: Path
) -> tuple[str, str]:
    """Open (or reopen, on resume) the run's MLflow run; log params and dataset inputs.

    Returns:
        ``(tracking_uri, run_id)``.
    """
    import mlflow
    import pyarrow.parquet as pq

    from pipeline.lineage import dvc_md5
    from pipeline.tracking import lineage_tags, log_parquet_dataset

    if unknown := set(tracking) - TRACKING_KEYS:
        raise PreflightError(f"tracking: unknown key(s) {sorted(unknown)}; valid: {sorted(TRACKING_KEYS)}")
    uri = absolute_tracking_uri(
        tracking.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    )
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(tracking.get("experiment") or "hpe")
    client = mlflow.MlflowClient(uri)

    id_file = run_dir / MLFLOW_RUN_ID_FILE
    if id_file.exists():
        run_id = id_file.read_text().strip()
        try:
            client.get_run(run_id)
        except Exception:  # noqa: BLE001 — another tracking store: start a fresh run
            pass
        else:
            _replay_buffer(run_dir / BUFFER_FILE, uri)  # what the last call could not send
            client.update_run(run_id, status="RUNNING")
            return uri, run_id
    tags = {**lineage_tags(), **(tracking.get("tags") or {}), "task": type(task).__name__}
    run = client.create_run(experiment.experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.model_dump().items()}
    params["global_batch_size"] = cfg.global_batch_size
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        mlflow.log_params(params)
        for ds in tracking.get("datasets") or []:
            if unknown := set(ds) - DATASET_KEYS:
                raise PreflightError(
                    f"tracking.datasets: unknown key(s) {sorted(unknown)}; valid: {sorted(DATASET_KEYS)}"
                )
            path = Path(ds["path"])
            files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
            if not files:
                raise PreflightError(f"tracking.datasets: {path} holds no Parquet file")
            log_parquet_dataset(
                ds.get("name") or path.name,
                path,
                pq.read_schema(files[0]),
                ds.get("digest") or dvc_md5(path),
                context=ds.get("context", "training"),
            )
    # Leaving start_run marked our run FINISHED; the workers are about to log into it. (A
    # caller's own active run stays active: start_run(run_id=…) ended only ours.)
    client.update_run(run_id, status="RUNNING")
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
    return uri, run_id


def _replay_buffer(buffer: Path, uri: str, warn: bool = True) -> bool:
    """Replay a run's metric buffer if there is one; ``True`` when none is left. Never raises."""
    import warnings

    from pipeline.tracking import TrackingLostWarning, replay_tracking_buffer

    if not buffer.exists():
        return True
    try:
        replay_tracking_buffer(buffer, uri)
        return True
    except Exception as e:  # noqa: BLE001 — the server is still away: keep the file for later
        if warn:
            warnings.warn(TrackingLostWarning(f"could not replay {buffer} to {uri} yet: {e}"), stacklevel=3)
        return False


def _end_mlflow_run(uri: str, run_id: str, status: str, buffer: Path) -> None:
    """Mark the MLflow run ended, after replaying what the workers buffered if the server is back.

    Never raises: losing the tracking server must neither turn a finished training into a
    failed call nor hide the real error of a failed one. What cannot be sent (the final
    status included) goes to ``buffer``.
    """
    from mlflow import MlflowClient

    from pipeline.tracking import TrackingBuffer

    try:
        if not _replay_buffer(buffer, uri, warn=False):  # train() warns about the buffer left
            raise ConnectionError(f"tracking server at {uri} still unreachable")
        MlflowClient(uri).set_terminated(run_id, status=status)
    except Exception as e:  # noqa: BLE001 — see the docstring
        spill = TrackingBuffer(buffer, uri, run_id)
        if not buffer.exists():
            spill.lost(e)
        spill.terminated(status)


class _ConsoleProgress:
    """A tqdm bar on the driver's terminal, fed by the progress file rank 0 rewrites.

    Worker output does not reach the driver's console (``ray_session`` starts Ray with
    ``log_to_driver=False``), so the bar lives on the driver and polls the file from a
    daemon thread. Disabled when stderr is not a terminal (CI, DVC, Prefect).
    """

    def __init__(self, path: Path, steps: int, desc: str):
        self.path, self.steps, self.desc = path, steps, desc
        self.enabled = sys.stderr.isatty()
        self._stop = None

    def __enter__(self) -> _ConsoleProgress:
        if self.enabled:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=self.steps, desc=self.desc, unit="step", file=sys.stderr) as bar:
            stopped = False
            while not stopped:
                stopped = self._stop.wait(0.5)  # one last read after the stop
                try:
                    info = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    continue
                bar.n = int(info.get("step", 0))
                bar.set_postfix(loss=f"{info.get('loss', float('nan')):.4g}", lr=f"{info.get('lr', 0.0):.3g}")

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=2)


@contextmanager
def _controller_poll_interval(seconds: float) -> Iterator[None]:
    """Let Ray Train's controller poll the workers every ``seconds`` during ``fit`` (default 2 s).

    ``ray.train.report`` waits until the controller has collected the previous report, so
    the default makes back-to-back checkpoints cost up to 2 s each. The variable is read
    from the driver's environment when ``fit`` starts the controller; a value the user set
    wins.
    """
    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    if key in os.environ:
        yield
        return
    os.environ[key] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(key, None)


# ---------------------------------------------------------------- the driver entry point
def train(
    task: Task, data: Any, cfg: TrainConfig, out_dir: Path, *, run_name: str, tracking: Mapping[str, Any] | None = None
) -> TrainResult:
    """Train ``task``'s model on ``data`` with Ray Train + DeepSpeed; resume if a checkpoint exists.

    Args:
        task: the model's :class:`Task`.
        data: a ``pyarrow.Table``, a ``ray.data.Dataset``, or Parquet files/folders.
        cfg: the run's hyper-parameters and resources.
        out_dir: run folder: checkpoints in ``out_dir/ray/<run_name>/``, the final artifact in
            ``out_dir/model/``. The same ``out_dir`` and ``run_name`` resume the run.
        run_name: Ray Train run name and MLflow run name.
        tracking: ``None`` for no MLflow; else ``{"tracking_uri", "experiment", "tags",
            "datasets": [{"name", "path", "digest", "context"}]}`` (every key optional;
            ``digest`` defaults to the DVC hash of ``path``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        PreflightError: unusable inputs (before Ray starts).
        ray.train.TrainingFailedError: a worker failed more than ``cfg.max_failures`` times;
            calling :func:`train` again resumes from the last checkpoint.
    """
    t_called = time.time()
    if isinstance(data, (str, os.PathLike)):
        data = [Path(data)]
    out_dir = Path(out_dir).resolve()
    schema, _ = preflight(task, data, cfg, out_dir)
    keys = sort_keys(task, schema)
    required = list(getattr(task, "required_columns", ()))
    storage = out_dir / "ray"
    run_dir = storage / run_name
    if (latest := latest_checkpoint(run_dir)) is not None:
        try:
            _check_resume_config(json.loads((latest / STATE_FILE).read_text()), cfg, cfg.num_workers)
        except ValueError as e:
            raise PreflightError(f"{run_dir}: {e}") from e

    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.raycluster import ray_session

    t_preflight = time.time()
    tracking_uri = run_id = None
    if tracking is not None:
        try:
            tracking_uri, run_id = _start_mlflow_run(tracking, cfg, task, run_name, run_dir)
        except PreflightError:
            raise
        except Exception as e:  # noqa: BLE001 — MLflow raises several types for one cause
            # Before any training: fail clearly rather than train a run nobody can find.
            where = tracking.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
            raise PreflightError(
                f"MLflow tracking at {where} cannot open the run: {e}. Start the tracking server, fix "
                "tracking.tracking_uri / MLFLOW_TRACKING_URI, or set tracking.enabled: false"
            ) from e
    t_mlflow = time.time()

    status = "FAILED"
    try:
        with ray_session() as ray_start_s:
            use_gpu = resolve_device(cfg)
            _check_resources(cfg, use_gpu)
            # Only the columns the task reads (and the sort keys) travel to the workers.
            ds = _to_dataset(data, list(dict.fromkeys(keys + required)) if required else None)
            loop_config = {
                "task": task,
                "cfg": cfg.model_dump(),
                "use_gpu": use_gpu,
                "sort_keys": keys,
                "t_called": t_called,
                "tracking_uri": tracking_uri,
                "mlflow_run_id": run_id,
                "run_name": run_name,
                "model_dir": str(out_dir / "model"),
                "progress_file": str(run_dir / "progress.json"),
                "tracking_buffer": str(run_dir / BUFFER_FILE),
                "driver_timings": {
                    "preflight_s": t_preflight - t_called,
                    "mlflow_s": t_mlflow - t_preflight,
                    "ray_start_s": ray_start_s,
                },
                "t_fit": time.time(),
            }
            env = {"DS_ACCELERATOR": "cuda" if use_gpu else "cpu"}
            # The workers' MLflow client should give up on a dead server when the driver's does
            # (retries, timeout), also on nodes whose environment the driver does not share.
            env |= {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST_")}
            trainer = TorchTrainer(
                _train_loop_per_worker,
                train_loop_config=loop_config,
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=cfg.num_workers,
                    use_gpu=use_gpu,
                    resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
                ),
                run_config=RunConfig(
                    name=run_name,
                    storage_path=str(storage),
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                    failure_config=FailureConfig(max_failures=cfg.max_failures),
                    worker_runtime_env={"env_vars": env},
                ),
                datasets={"train": ds},
                # Unsplit: each worker sees every row and takes its deterministic share (StepSampler).
                dataset_config=DataConfig(datasets_to_split=[]),
            )
            with _controller_poll_interval(0.2), _ConsoleProgress(run_dir / "progress.json", cfg.steps, run_name):
                result = trainer.fit()
        status = "FINISHED"
    finally:
        if run_id is not None:
            _end_mlflow_run(tracking_uri, run_id, status, run_dir / BUFFER_FILE)

    buffer = run_dir / BUFFER_FILE
    tracking_lost = run_id is not None and buffer.exists()
    if tracking_lost:
        import warnings

        from pipeline.tracking import TrackingLostWarning, read_tracking_buffer

        first = next((r for r in read_tracking_buffer(buffer) if r.get("kind") == "lost"), {})
        warnings.warn(
            TrackingLostWarning(
                f"MLflow tracking of run {run_name!r} (run id {run_id} at {tracking_uri}) was lost at step "
                f"{first.get('step')}: {first.get('error')}. Training finished and its checkpoints and model "
                f"are saved; what MLflow missed is in {buffer}. Replay it once the server is back with "
                f"pipeline.tracking.replay_tracking_buffer('{buffer}'), or call train() for this run again."
            ),
            stacklevel=2,
        )

    m = dict(result.metrics or {})
    nan = float("nan")
    this_call = m.get("t_called") == t_called  # else: the run had already finished; nothing ran now
    return TrainResult(
        steps=int(m.get("step", cfg.steps)),
        final_loss=float(m.get("final_loss", m.get("loss", nan))),
        samples_per_s=float(m.get("steady_samples_per_s", nan)) if this_call else nan,
        wall_seconds=time.time() - t_called,
        startup_seconds=float(m.get("startup_s", nan)) if this_call else nan,
        resumed_from_step=int(m.get("resumed_from_step", 0)) if this_call else cfg.steps,
        mlflow_run_id=run_id,
        checkpoint_dir=Path(result.checkpoint.path) if result.checkpoint is not None else None,
        model_dir=out_dir / "model",
        metrics=m,
        tracking_lost=tracking_lost,
        tracking_buffer=buffer if tracking_lost else None,
    )


# ---------------------------------------------------------------- checkpoint files
def _base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16/fp16 optimizers)."""
    while not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _optimizer_tensors(optimizer: Any) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """The torch optimizer and the fp32 master tensors that key its state, in a stable order.

    ZeRO-3 keeps its fp32 sub-group partitions in ``fp32_partitioned_groups_flat`` and swaps
    them into ``param_groups`` only for the duration of ``step``; every other mode (plain,
    ZeRO-1/2, bf16/fp16 optimizers) leaves the masters in ``param_groups``.
    """
    base = _base_optimizer(optimizer)
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if masters is None:
        masters = [p for g in base.param_groups for p in g["params"]]
    return base, list(masters)


def _persistent_names(module: nn.Module, trainable_only: bool) -> list[str]:
    """State-dict keys to checkpoint: trainable parameters (every alias) and persistent buffers."""
    params = dict(module.named_parameters(remove_duplicate=False))
    keys = module.state_dict(keep_vars=True).keys()
    return [k for k in keys if k not in params or params[k].requires_grad or not trainable_only]


def _gathered(engine: Any, params: list[nn.Parameter]):
    """A context in which ZeRO-3-partitioned ``params`` hold their full values on every rank."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return nullcontext()


def _module_tensors(engine: Any, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full CPU copies of the module's checkpointed tensors (collective under ZeRO-3)."""
    module = engine.module
    params = dict(module.named_parameters(remove_duplicate=False))
    names = _persistent_names(module, trainable_only)
    tensors = dict(module.named_buffers(remove_duplicate=False)) | params
    with _gathered(engine, [params[n] for n in names if n in params]):
        return {n: tensors[n].detach().to("cpu", copy=True).contiguous() for n in names}


def _scaler_state(optimizer: Any) -> dict[str, float]:
    """The fp16 loss scaler's numbers (scale, iteration counters), when the optimizer has one."""
    scaler = getattr(optimizer, "loss_scaler", None)
    state = {}
    for key in ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis"):
        value = getattr(scaler, key, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            state[key] = value
    return state


def _write_checkpoint(
    folder: Path, engine: Any, scheduler: Any, cfg: TrainConfig, step: int, rank: int, world: int
) -> None:
    """Write this rank's share of the checkpoint of ``step`` (completed optimizer steps)."""
    from safetensors.torch import save_file

    model_tensors = _module_tensors(engine, trainable_only=True)  # collective: every rank
    base, masters = _optimizer_tensors(engine.optimizer)

    def cpu(v: Any) -> Any:
        return v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v

    # Plain tensors, numbers and tuples only: loads with torch.load(weights_only=True).
    torch.save(
        {
            "master": [cpu(m) for m in masters],
            "state": [{k: cpu(v) for k, v in base.state.get(m, {}).items()} for m in masters],
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups],
            "rank": rank,
            "world_size": world,
        },
        folder / f"optim_rank{rank:05d}.pt",
    )
    if rank == 0:
        save_file(model_tensors, str(folder / MODEL_FILE))
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "world_size": world,
            "config": cfg.model_dump(mode="json"),
            "scheduler": scheduler.state_dict(),
            "loss_scaler": _scaler_state(engine.optimizer),
        }
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a new :func:`train` call on ``run_dir`` resumes from, or ``None``.

    It is the latest checkpoint of Ray Train's ``checkpoint_manager_snapshot.json`` — the
    one Ray hands to ``ray.train.get_checkpoint()``.
    """
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return None
    name = latest.get("checkpoint_dir_name")
    folder = Path(run_dir) / name if name else None
    return folder if folder is not None and (folder / STATE_FILE).exists() else None


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, world: int) -> None:
    now = cfg.model_dump(mode="json")
    diff = {k: (saved["config"].get(k), now[k]) for k in RESUME_INVARIANT_FIELDS if saved["config"].get(k) != now[k]}
    if saved["world_size"] != world:
        diff["world_size"] = (saved["world_size"], world)
    if diff:
        changes = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"cannot resume: the checkpoint was made with other settings ({changes}); "
            "use a new run_name or out_dir to start afresh"
        )


def _load_model_part(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Before ``deepspeed.initialize``: load the checkpointed tensors into ``model``; return ``state.json``."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {folder}: format {state.get('format')} is not {CHECKPOINT_FORMAT}")
    result = model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=False)
    expected = set(_persistent_names(model, trainable_only=True))
    missing = [k for k in result.missing_keys if k in expected]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {folder} does not fit the task's model: missing {missing}, unexpected {result.unexpected_keys}"
        )
    return state


def _load_optimizer_part(folder: Path, engine: Any, scheduler: Any, state: dict[str, Any], rank: int) -> None:
    """After ``deepspeed.initialize``: restore this rank's optimizer, master weights and schedule."""
    saved = torch.load(folder / f"optim_rank{rank:05d}.pt", map_location="cpu", weights_only=True)
    base, masters = _optimizer_tensors(engine.optimizer)
    if (
        len(masters) != len(saved["master"])
        or len(base.param_groups) != len(saved["groups"])
        or any(m.shape != s.shape for m, s in zip(masters, saved["master"], strict=True))
    ):
        raise ValueError(f"checkpoint {folder}: optimizer partition of rank {rank} does not fit this run")
    with torch.no_grad():
        for m, value, m_state in zip(masters, saved["master"], saved["state"], strict=True):
            m.copy_(value)
            # Moments go to the master's device; scalar ``step`` counters stay on the CPU, as torch keeps them.
            base.state[m] = {
                k: (v.to(m.device) if isinstance(v, torch.Tensor) and v.ndim > 0 else v) for k, v in m_state.items()
            }
    for group, saved_group in zip(base.param_groups, saved["groups"], strict=True):
        group.update(saved_group)  # lr (the schedule's current value), betas, weight decay…
    scheduler.load_state_dict(state["scheduler"])
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    for key, value in state.get("loss_scaler", {}).items():
        current = getattr(scaler, key, None)
        if isinstance(current, torch.Tensor):
            current.fill_(value)
        elif scaler is not None:
            setattr(scaler, key, value)


# ---------------------------------------------------------------- the worker
def _to_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move a batch to the device; floating inputs follow the model's dtype (bf16/fp16 runs)."""
    return {k: (v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def _materialise(shard: Any, keys: list[str]) -> pa.Table:
    """Every row of the worker's (unsplit) dataset iterator, in a stable order."""
    batches = list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
    table = pa.concat_tables(batches) if batches else pa.table({})
    return table.sort_by([(k, "ascending") for k in keys]).combine_chunks()


class _MlflowLogger:
    """Rank 0's buffered MLflow metric writer (one ``log_batch`` per flush, not per step).

    Losing the tracking server must not cost the training run: the first call that fails
    (MLflow has already retried it) switches the logger to the local ``spill`` file
    (:class:`~pipeline.tracking.TrackingBuffer`) for the rest of the run, instead of raising
    in the middle of training or stalling every later flush on the same retries.
    """

    def __init__(self, uri: str | None, run_id: str | None, spill: str | None = None):
        self.run_id = run_id
        self.client = None
        self.spill = None
        self.lost = False
        if uri and run_id:
            from mlflow import MlflowClient

            from pipeline.tracking import TrackingBuffer

            self.client = MlflowClient(uri)
            self.spill = TrackingBuffer(spill, uri, run_id) if spill else None
        self.buffer: list[Any] = []
        self.step: int | None = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.step = step

    def _lose(self, error: Exception) -> None:
        if self.spill is None:
            raise error  # nowhere to keep the records: fail as before
        self.lost = True
        self.spill.lost(error, self.step)
        print(
            f"WARNING: MLflow tracking lost at step {self.step}: {error}; training continues, "
            f"metrics go to {self.spill.path}",
            file=sys.stderr,
        )

    def set_tag(self, key: str, value: str) -> None:
        if self.client is None:
            return
        if not self.lost:
            try:
                self.client.set_tag(self.run_id, key, value)
                return
            except Exception as e:  # noqa: BLE001 — whatever MLflow raised, training goes on
                self._lose(e)
        self.spill.tag(key, value)

    def flush(self) -> None:
        if self.client is None or not self.buffer:
            return
        while self.buffer and not self.lost:
            try:
                self.client.log_batch(self.run_id, metrics=self.buffer[:1000])  # MLflow's batch limit
            except Exception as e:  # noqa: BLE001 — whatever MLflow raised, training goes on
                self._lose(e)
                break
            self.buffer = self.buffer[1000:]
        if self.buffer:
            self.spill.metrics(self.buffer)
            self.buffer = []


def _write_progress(path: Path | None, step: int, steps: int, metrics: Mapping[str, float]) -> None:
    """Rank 0's progress for the driver's console bar (:class:`_ConsoleProgress`); atomic.

    It names rank 0's process and node too: which process to look at when a run stalls.
    """
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    where = {"pid": os.getpid(), "node": os.uname().nodename}
    tmp.write_text(json.dumps({"step": step, "steps": steps, **where, **metrics}))
    tmp.replace(path)


def _report(metrics: dict[str, Any], checkpoint_folder: Path | None = None, step: int | None = None) -> None:
    """``ray.train.report`` from every rank (a barrier); Ray merges the ranks' checkpoint folders.

    A checkpoint report returns once Ray's controller has *committed* it (registered it and
    rewritten its snapshot): ``report`` alone only queues it, and a worker killed a moment
    later would take the checkpoint with it.
    """
    import ray.train

    if checkpoint_folder is None:
        ray.train.report(metrics)
        return
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_folder)),
        checkpoint_dir_name=f"step_{step:08d}",
    )
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """setup → train → save, on every rank (``train_loop_per_worker`` of the ``TorchTrainer``)."""
    use_gpu = bool(config["use_gpu"])  # the driver's resolution (cfg.device), the same on every rank
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError(f"device cuda, but this worker ({os.uname().nodename}) sees no CUDA device")
    # Explicitly, not setdefault: a GPU node told to train on CPU must not pick CUDA itself.
    os.environ["DS_ACCELERATOR"] = "cuda" if use_gpu else "cpu"
    import logging

    import deepspeed
    import ray.train
    import torch.distributed as dist
    from torch.optim.lr_scheduler import LambdaLR

    deepspeed.utils.logger.setLevel(logging.WARNING)
    if not use_gpu:
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce with gcc on first use
        # (~50 s here, and a compiler on every node): gloo's all-reduce does the job.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    task: Task = config["task"]
    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    # ---- setup: data, model, checkpoint, engine
    t_setup = time.time()
    table = _materialise(ray.train.get_dataset_shard("train"), config["sort_keys"])
    sampler = StepSampler(
        table.num_rows,
        seed=cfg.seed,
        micro_batch_size=cfg.micro_batch_size,
        grad_accum=cfg.grad_accum,
        world_size=world,
    )
    t_data = time.time()
    torch.manual_seed(cfg.seed)
    model = task.build_model()

    start_step, resume_state = 0, None
    checkpoint = ray.train.get_checkpoint()
    ckpt_ctx = checkpoint.as_directory() if checkpoint is not None else nullcontext(None)
    with ckpt_ctx as ckpt_dir:
        if ckpt_dir is not None:
            resume_state = _load_model_part(Path(ckpt_dir), model)
            _check_resume_config(resume_state, cfg, world)
            start_step = int(resume_state["step"])
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, cfg.weight_decay),
            config=deepspeed_config(cfg, world),
            lr_scheduler=lambda opt: LambdaLR(opt, lambda s: lr_factor(s, cfg)),
            dist_init_required=False,
        )
        if resume_state is not None:
            _load_optimizer_part(Path(ckpt_dir), engine, scheduler, resume_state, rank)
            engine.global_steps = start_step
            engine.global_samples = start_step * cfg.global_batch_size
            engine.micro_steps = start_step * cfg.grad_accum
    if world == 1 and cfg.zero_stage == 0 and cfg.precision == "fp32":
        # One rank has nothing to all-reduce; DeepSpeed would still flatten, reduce and copy
        # back every gradient (~2 ms a step on the benchmark's 2.4 M-parameter MLP).
        engine.enable_backward_allreduce = False
    dtype = next(engine.module.parameters()).dtype
    t_ready = time.time()

    logger = (
        _MlflowLogger(config["tracking_uri"], config["mlflow_run_id"], config["tracking_buffer"])
        if rank == 0
        else _MlflowLogger(None, None)
    )
    if rank == 0 and resume_state is not None:
        logger.set_tag("resumed_from_step", str(start_step))
    progress = Path(config["progress_file"]) if rank == 0 else None

    # ---- train
    loss_value = float("nan")
    metrics: dict[str, float] = {}
    t_first = t_steady = None
    steady_from = start_step
    timed_steps = 0
    t_prev = time.perf_counter()
    for step in range(start_step, cfg.steps):
        if t_first is None:
            t_first = time.time()
        torch.manual_seed(step_seed(cfg.seed, step, rank))
        lr = scheduler.get_last_lr()[0]
        losses = []
        for micro in range(cfg.grad_accum):
            rows = table.take(sampler.indices(step, micro, rank)).to_pylist()
            batch = _to_device(task.collate(rows), engine.device, dtype)
            loss = task.loss(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach().float())
        step_loss = torch.stack(losses).mean()
        if world > 1:
            dist.all_reduce(step_loss)
            step_loss /= world
        loss_value = float(step_loss)
        now = time.perf_counter()
        step_s, t_prev = now - t_prev, now
        if t_steady is None:
            t_steady, steady_from = now, step + 1  # steady state starts after the first step
        else:
            timed_steps = step + 1 - steady_from
        done = step + 1
        metrics = {"loss": loss_value, "lr": lr, "samples_per_s": cfg.global_batch_size / step_s}
        if (norm := engine.get_global_grad_norm()) is not None:
            metrics["grad_norm"] = float(norm)
        if callable(extra := getattr(task, "metrics", None)) and (done % cfg.log_every == 0 or done == cfg.steps):
            with torch.no_grad():
                metrics |= {k: float(v) for k, v in extra(engine, batch).items()}
        logger.log(metrics, step=done)

        if done == cfg.steps:
            break  # the final checkpoint carries the run's summary: written below
        if done % cfg.checkpoint_every == 0:
            logger.flush()
            _write_progress(progress, done, cfg.steps, metrics)
            with tempfile.TemporaryDirectory(prefix=f"ckpt-{done}-") as tmp:
                _write_checkpoint(Path(tmp), engine, scheduler, cfg, done, rank, world)
                _report({"step": done, **metrics}, Path(tmp), done)
        elif done % cfg.log_every == 0:
            # MLflow only: a ray.train.report blocks until Ray's controller has taken the
            # previous one (it polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so Ray hears
            # from the loop with each checkpoint, not with each log line.
            logger.flush()
            _write_progress(progress, done, cfg.steps, metrics)
    t_end = time.perf_counter()
    _write_progress(progress, cfg.steps, cfg.steps, metrics)

    summary = {
        "step": cfg.steps,
        "final_loss": loss_value,
        "resumed_from_step": start_step,
        "t_called": config["t_called"],
        "steady_samples_per_s": (
            timed_steps * cfg.global_batch_size / (t_end - t_steady)
            if t_steady is not None and timed_steps > 0
            else float("nan")
        ),
        "steady_steps": timed_steps,
        "steps_run": cfg.steps - start_step,
        "startup_s": (t_first - config["t_called"]) if t_first is not None else float("nan"),
        **config["driver_timings"],
        "ray_train_start_s": t_setup - config["t_fit"],
        "data_load_s": t_data - t_setup,
        "engine_init_s": t_ready - t_data,
        "torch_threads": torch.get_num_threads(),
    }
    if rank == 0:
        logger.log(
            {k: summary[k] for k in ("steady_samples_per_s", "startup_s") if math.isfinite(summary[k])}, step=cfg.steps
        )
        logger.flush()
    if start_step < cfg.steps:
        # Ray Train V2's Result.metrics are those of the latest checkpoint: the summary rides on it.
        with tempfile.TemporaryDirectory(prefix=f"ckpt-{cfg.steps}-") as tmp:
            _write_checkpoint(Path(tmp), engine, scheduler, cfg, cfg.steps, rank, world)
            _report({**metrics, **summary}, Path(tmp), cfg.steps)
    else:
        # Resumed at the end (a finished run called again): nothing to train, nothing new to
        # checkpoint (a second step_<steps> folder would collide with the first).
        _report(summary)

    # ---- save: rank 0 writes the final artifact; every rank takes part in the ZeRO-3 gather
    with _gathered(engine, list(engine.module.parameters())):
        if rank == 0:
            final = Path(config["model_dir"])
            tmp_dir = final.parent / f".{final.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            task.save(engine.module, tmp_dir)
            if final.exists():
                shutil.rmtree(final)
            tmp_dir.rename(final)


__all__ = [
    "PreflightError",
    "StepSampler",
    "Task",
    "TrainConfig",
    "TrainResult",
    "deepspeed_config",
    "latest_checkpoint",
    "lr_factor",
    "param_groups",
    "preflight",
    "step_seed",
    "train",
]
