"""The Ray Data path gives byte-identical Parquet to the plain loop, and logs to MLflow."""

from __future__ import annotations

import mlflow
import pytest

from pipeline import stages
from pipeline.config import parse_params
from pipeline.ingest import ingest
from pipeline.raycluster import ray_session
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    with ray_session(num_cpus=2) as startup:
        yield startup


def test_ray_and_local_engines_write_identical_bytes(ray_local, synthetic_raw, tmp_path):
    params = parse_params(tiny_params_dict())
    settings = {**params.ingest.model_dump(exclude={"datasets"}), "batch_size": 4}
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = ingest(
            "300w_lp",
            synthetic_raw / "300w_lp",
            tmp_path / engine,
            seed=0,
            crop_margin=(0.2, 0.4),
            settings=settings,
            engine=engine,
        )
    assert outs["ray"].kept == outs["local"].kept == 24
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.parquet"))
    assert len(files) >= 3
    for f in files:
        assert (tmp_path / "ray" / f).read_bytes() == (tmp_path / "local" / f).read_bytes(), f


def test_ingest_stage_logs_an_mlflow_dataset(ray_local, synthetic_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HPE_PREFECT_FLOW_RUN_ID", "flow-run-123")
    params = parse_params(tiny_params_dict())
    summary = stages.ingest_stage(
        params, "biwi_npz", synthetic_raw / "biwi", tmp_path / "out", metrics=tmp_path / "m.json"
    )
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.tags["prefect.flow_run_id"] == "flow-run-123"
    assert run.data.metrics["kept"] == summary["kept"] == 8
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "biwi_npz" and inp.dataset.digest == summary["dvc_md5"]
    assert "yaw" in inp.dataset.schema
