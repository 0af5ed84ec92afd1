"""The one training loop through real Ray Train (V2) + DeepSpeed on CPU, with the toy task.

Runs: a 30-step reference (ZeRO-0, 1 worker, Parquet files, MLflow), a run killed by a hard
worker exit and resumed by a second ``train`` call, and 2-worker runs under ZeRO-0 and
ZeRO-2 (0.5 CPU each, leaving one CPU of the two to Ray Data), one of them killed and
restarted by Ray itself. 1½–3 minutes on 2 shared cores (mostly Ray Train start-up, ~15 s a run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pipeline.train import PreflightError, TrainConfig, train
from pipeline.train.toy import ToyRegression, make_toy_table

pytestmark = pytest.mark.integration

REF = TrainConfig(
    steps=30, micro_batch_size=8, grad_accum=2, lr=2e-2, warmup_steps=2, checkpoint_every=4, log_every=4, seed=0
)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the module (``train`` reuses it), or the cluster named by ``RAY_ADDRESS``."""
    import ray

    from pipeline.raycluster import ray_session

    if os.environ.get("RAY_ADDRESS"):
        with ray_session():
            yield
        return
    # address="local": never join a `ray start` head that happens to run on this machine.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        object_store_memory=512 * 1024**2,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_toy_table(200, seed=1)


@pytest.fixture(scope="module")
def parquet_dir(table, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy_parquet")
    pq.write_table(table.slice(0, 120), folder / "part-0.parquet")
    pq.write_table(table.slice(120), folder / "part-1.parquet")
    return folder


@pytest.fixture(scope="module")
def reference(ray_local, parquet_dir, tmp_path_factory):
    """An uninterrupted 30-step run from Parquet files, tracked in MLflow."""
    out = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    tracking = {
        "tracking_uri": uri,
        "experiment": "train-loop-test",
        "tags": {"purpose": "test"},
        "datasets": [{"name": "toy-train", "path": str(parquet_dir)}],
    }
    result = train(ToyRegression(), [parquet_dir], REF, out, run_name="ref", tracking=tracking)
    return result, uri


def _weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.model_dir / "model.safetensors"))


def _mse(task: ToyRegression, weights: dict[str, torch.Tensor] | None, table: pa.Table) -> float:
    model = task.build_model().eval()
    if weights is not None:
        model.load_state_dict(weights)
    batch = task.collate(table.to_pylist())
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(batch["x"]), batch["y"]))


def test_loss_goes_down(reference, table):
    result, _ = reference
    assert result.steps == REF.steps and result.resumed_from_step == 0
    before, after = _mse(ToyRegression(), None, table), _mse(ToyRegression(), _weights(result), table)
    assert after < 0.5 * before, (before, after)
    assert result.samples_per_s > 0 and result.startup_seconds > 0


def test_mlflow_run_has_params_per_step_metrics_and_dataset(reference):
    result, uri = reference
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["zero_stage"] == "0" and run.data.params["steps"] == str(REF.steps)
    assert run.data.params["global_batch_size"] == "16" and run.data.tags["purpose"] == "test"
    for key in ("loss", "lr", "samples_per_s"):
        history = client.get_metric_history(result.mlflow_run_id, key)
        assert sorted(m.step for m in history) == list(range(1, REF.steps + 1)), key
    lrs = {m.step: m.value for m in client.get_metric_history(result.mlflow_run_id, "lr")}
    assert lrs[1] < lrs[3] == pytest.approx(REF.lr) and lrs[REF.steps] == pytest.approx(REF.lr * REF.min_lr_ratio)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "toy-train" and inp.dataset.digest.endswith(".dir")
    columns = {c["name"] for c in json.loads(inp.dataset.schema)["mlflow_colspec"]}
    assert {"source_id", "x", "y"} <= columns


def test_checkpoint_files_load_with_weights_only(reference):
    result, _ = reference
    ckpt = result.checkpoint_dir
    assert ckpt.name == "step_00000030"
    kept = sorted(p.name for p in ckpt.parent.glob("step_*"))
    assert kept == ["step_00000028", "step_00000030"]  # keep_checkpoints=2
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == REF.steps and state["world_size"] == 1
    model = load_file(str(ckpt / "model.safetensors"))
    assert model and all(t.numel() > 0 for t in model.values())
    optim = torch.load(ckpt / "optim_rank00000.pt", weights_only=True)
    assert optim["master"] and all(
        s["exp_avg"].shape == m.shape for s, m in zip(optim["state"], optim["master"], strict=True)
    )


def test_killed_run_resumes_to_the_same_weights(reference, table, tmp_path):
    """A worker hard-killed at step 7 (after the step-4 checkpoint); a new ``train`` call resumes.

    The data comes as an Arrow table here and as Parquet files in the reference: the rows are
    sorted before sampling, so both runs see the same batches.
    """
    import ray.train

    marker = tmp_path / "crashed"
    task = ToyRegression(crash_on_call=13, crash_marker=str(marker))  # 2 micro-batches a step: step 7
    with pytest.raises(ray.train.TrainingFailedError):
        train(task, table, REF, tmp_path / "run", run_name="ref")
    assert marker.exists()
    resumed = train(task, table, REF, tmp_path / "run", run_name="ref")
    assert resumed.resumed_from_step == 4
    expected, got = _weights(reference[0]), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_resume_with_other_settings_is_refused_before_ray_starts(reference, parquet_dir):
    result, _ = reference
    t0 = time.perf_counter()
    with pytest.raises(PreflightError, match=r"lr: 0.02 → 0.05.*new run_name"):
        train(
            ToyRegression(), [parquet_dir], REF.model_copy(update={"lr": 0.05}), result.model_dir.parent, run_name="ref"
        )
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("zero_stage,killed", [(0, False), (2, True)], ids=["zero0", "zero2-killed"])
def test_two_workers_train_only_the_trainable_part(ray_local, table, tmp_path, zero_stage, killed):
    """2 workers × 0.5 CPU; the first layer frozen (as LoRA freezes a base) stays bit-identical.

    In the ZeRO-2 case a worker dies at step 7 and Ray Train restarts the group in the same
    call (``max_failures=1``), from the step-4 checkpoint.
    """
    cfg = REF.model_copy(
        update={
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "zero_stage": zero_stage,
            "max_failures": 1 if killed else 0,
            "micro_batch_size": 4,
        }
    )
    task = ToyRegression(
        freeze=("body.0.",), **({"crash_on_call": 13, "crash_marker": str(tmp_path / "crashed")} if killed else {})
    )
    result = train(task, table, cfg, tmp_path / "run", run_name=f"two-{zero_stage}")
    assert result.resumed_from_step == (4 if killed else 0)
    initial, final = task.build_model().state_dict(), _weights(result)
    for name, value in initial.items():
        if name.startswith("body.0."):
            assert torch.equal(final[name], value), f"frozen {name} changed"
        else:
            assert not torch.equal(final[name], value), f"trainable {name} did not change"
    assert _mse(task, final, table) < _mse(task, None, table)


# ---------------------------------------------------------------- preflight: fast and clear
@pytest.mark.parametrize(
    "data,message",
    [
        (make_toy_table(8).drop_columns(["y"]), r"lacks column\(s\) \['y'\]"),
        (make_toy_table(8).slice(0, 0), "empty"),
        ([], "empty"),
        ([Path("/nonexistent/part-0.parquet")], "does not exist"),
    ],
    ids=["missing-column", "empty-table", "no-files", "missing-file"],
)
def test_preflight_fails_fast_and_names_the_problem(data, message, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(PreflightError, match=message):
        train(ToyRegression(), data, REF, tmp_path / "out", run_name="bad")
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "out" / "ray").exists()  # Ray never started


def test_preflight_rejects_unwritable_out_dir_gpu_precision_and_task_errors(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PreflightError, match="not writable"):
        train(ToyRegression(), make_toy_table(8), REF, blocker / "out", run_name="bad")
    if not torch.cuda.is_available():
        refusals = {
            # auto resolves to CPU here (no CUDA, no GPU in Ray): bf16 is refused before any worker starts
            "precision": ("bf16", "'bf16' needs GPU workers"),
            # device cuda on a machine without GPUs: refused, not a run waiting forever for GPUs
            "device": ("cuda", r"device cuda: num_workers=1 needs 1 GPUs; Ray sees 0"),
        }
        for field, (value, message) in refusals.items():
            with pytest.raises(PreflightError, match=message):
                cfg = TrainConfig(**(REF.model_dump() | {field: value}))
                train(ToyRegression(), make_toy_table(8), cfg, tmp_path / "out", run_name="bad")
        assert not list((tmp_path / "out").glob("ray/bad/step_*"))  # nothing trained
    with pytest.raises(PreflightError, match="crash_marker"):
        train(ToyRegression(crash_on_call=1), make_toy_table(8), REF, tmp_path / "out", run_name="bad")
