"""MLflow tracking helper: runs land where the config says, one config's URI never leaks into the next."""

from __future__ import annotations

import os

import mlflow

from pipeline.config import TrackingConfig
from pipeline.tracking import FLOW_RUN_ENV, mlflow_run


def test_two_configs_in_one_process_log_to_their_own_stores(tmp_path, monkeypatch):
    monkeypatch.setenv(FLOW_RUN_ENV, "flow-123")
    first = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'a.db'}", experiment="a")
    second = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'b.db'}", experiment="b")
    with mlflow_run(first, "one"):
        assert os.environ["MLFLOW_TRACKING_URI"] == first.tracking_uri  # child processes inherit it
    assert "MLFLOW_TRACKING_URI" not in os.environ
    with mlflow_run(second, "two"):
        pass
    for cfg, name in ((first, "one"), (second, "two")):
        runs = mlflow.MlflowClient(cfg.tracking_uri).search_runs(
            [mlflow.MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.experiment).experiment_id]
        )
        assert [r.info.run_name for r in runs] == [name]
        assert runs[0].data.tags["prefect.flow_run_id"] == "flow-123"


def test_environment_uri_wins_and_is_kept(tmp_path, monkeypatch):
    env_uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    with mlflow_run(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'p.db'}", experiment="e"), "r"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == env_uri
    client = mlflow.MlflowClient(env_uri)
    assert client.get_experiment_by_name("e") is not None
