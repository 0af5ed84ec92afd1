"""The Prefect flow `hpe` under prefect_test_harness: through DVC (shared lock with `dvc repro`)
and calling the stage functions directly; artifacts and MLflow lineage tags are checked."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.hpe import hpe
from pipeline.report import collect, render
from tests.conftest import make_project_copy, subprocess_env, tiny_params_dict
from tests.unit.test_report import _write_metrics, _write_pose_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


async def _artifact(key: str):
    async with get_client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        return arts


# The full DAG through DVC is test_dvc_pipeline's; here the Prefect-to-DVC bridge, which is the
# same for every stage, on the cheap head of the DAG (two datasets, their ground truth).
FLOW_STAGES = ["synth@aflw2000", "synth@coco", "ingest@aflw2000", "ingest@coco", "ground_truth@coco"]


def test_flow_through_dvc_shares_the_lock_with_dvc_repro(harness, tmp_path, monkeypatch, shared_ray_env):
    repo = make_project_copy(tmp_path / "proj", tiny_params_dict())
    for k, v in {**subprocess_env(), **shared_ray_env}.items():
        monkeypatch.setenv(k, v)
    state = hpe(params_path="params.yaml", workdir=str(repo), stages=FLOW_STAGES, return_state=True)
    assert state.is_completed(), state
    results = state.result()
    assert [r["stage"] for r in results] == FLOW_STAGES  # DAG order kept
    assert not any(r["skipped"] for r in results)
    assert all(r["seconds"] > 0 and r["peak_rss_bytes"] > 0 for r in results)
    by = {r["stage"]: r for r in results}
    for name in ("aflw2000", "coco"):  # each stage began only once what it reads was written
        assert by[f"ingest@{name}"]["started"] >= by[f"synth@{name}"]["ended"]
    assert by["ground_truth@coco"]["started"] >= by["synth@coco"]["ended"]  # it reads the raw files

    # The same stages through plain DVC: nothing left to do.
    targets = ["ingest@aflw2000", "ingest@coco", "ground_truth@coco"]
    proc = subprocess.run(["dvc", "repro", *targets], cwd=repo, env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "Running stage" not in proc.stdout, proc.stdout

    # A second flow run skips every stage (DVC decides).
    again = hpe(params_path="params.yaml", workdir=str(repo), stages=FLOW_STAGES)
    assert all(r["skipped"] for r in again)

    summary = asyncio.run(_artifact("ingest-summary"))
    assert summary and "| aflw2000 |" in summary[0].data
    timings = asyncio.run(_artifact("stage-timings"))
    assert timings

    flow_run_id = json.loads((repo / "reports" / "pipeline_run.json").read_text())["flow_run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hpe"], output_format="list")
    ingests = [r for r in runs if r.data.tags.get("stage") == "ingest"]
    assert len(ingests) == 2  # not logged again by the skipped second run
    first_run_id = str(state.state_details.flow_run_id)
    assert {r.data.tags["prefect.flow_run_id"] for r in ingests} == {first_run_id}
    assert flow_run_id  # the second run's id is recorded for the summary


def test_flow_direct_mode_calls_stage_functions(harness, tmp_path, monkeypatch):
    params = tiny_params_dict()
    params["orchestration"] = {"use_dvc": False}
    repo = make_project_copy(tmp_path / "proj", params)
    monkeypatch.chdir(tmp_path)
    results = hpe(params_path="params.yaml", workdir=str(repo), stages=["synth@aflw2000", "ingest@aflw2000"])
    assert [r["stage"] for r in results] == ["synth@aflw2000", "ingest@aflw2000"]
    m = json.loads((repo / "metrics" / "ingest" / "aflw2000.json").read_text())
    assert m["counts_in"] == 40 and m["kept"] + m["filtered"] + m["quarantined"] == 40
    assert not (repo / "dvc.lock").exists()  # DVC was not involved
    # Both stages joined one Ray that the flow started for the run, and stopped after it: no
    # process runs from its state folder any more, and the folder is gone.
    import psutil

    run = json.loads((repo / "reports" / "pipeline_run.json").read_text())
    state_dir = run["shared_ray"]["state_dir"]
    assert run["shared_ray"]["address"].startswith("127.0.0.1:")
    left = [p for p in psutil.process_iter(["cmdline"]) if state_dir in " ".join(p.info["cmdline"] or [])]
    assert not left and not Path(state_dir).exists()
    # No evaluation yet: no result artifacts (the run above was restricted to two stages).
    assert not asyncio.run(_artifact("candidates"))

    # With results on disk (a fixed metrics set), the run publishes them as artifacts.
    _write_metrics(repo)
    _write_pose_metrics(repo)
    render(collect(repo), repo / "reports")
    hpe(params_path="params.yaml", workdir=str(repo), stages=["synth@aflw2000"])
    candidates = asyncio.run(_artifact("candidates"))[0].data
    for name in ("merge:layer_wta", "6drepnet (CNN baseline)", "6DRepNet (published)"):
        assert name in candidates
    assert "detected" in asyncio.run(_artifact("keypoints"))[0].data
    assert "## Keypoints (VLPose)" in asyncio.run(_artifact("report"))[0].data
    with pytest.raises(ValueError, match="unknown stages"):
        hpe(params_path="params.yaml", workdir=str(repo), stages=["ingest@nope"])


def _record_stages(monkeypatch, fail: str | None = None, seconds: float = 1.5) -> list[tuple[str, float, float]]:
    """Replace the per-stage work (DVC or a stage function) by a sleep that records when it ran,
    so the flow's scheduling is tested with real Prefect tasks but without the stages' cost."""
    import threading
    import time

    import flows.hpe as flow_module

    calls: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def fake(stage, params_path, workdir, ray_env):
        t = time.time()
        time.sleep(seconds)
        with lock:
            calls.append((stage, t, time.time()))
        if stage == fail:
            raise RuntimeError(f"stage {stage} broke")
        return {"stage": stage, "seconds": seconds, "peak_rss_bytes": 1, "skipped": False}

    monkeypatch.setattr(flow_module, "_run_stage", fake)
    return calls


def test_flow_runs_independent_stages_side_by_side_in_dag_order(harness, tmp_path, monkeypatch):
    params = tiny_params_dict()
    params["orchestration"] = {"shared_ray": False, "parallel_stages": 2}
    repo = make_project_copy(tmp_path / "proj", params)
    calls = _record_stages(monkeypatch)
    results = hpe(params_path="params.yaml", workdir=str(repo), stages=FLOW_STAGES)
    assert [r["stage"] for r in results] == FLOW_STAGES
    when = {stage: (start, end) for stage, start, end in calls}
    for name in ("aflw2000", "coco"):
        assert when[f"ingest@{name}"][0] >= when[f"synth@{name}"][1]
    assert when["ground_truth@coco"][0] >= when["synth@coco"][1]  # it reads the raw files, not the Parquet
    # The two synths do not depend on each other: they ran at the same time...
    (a0, a1), (c0, c1) = when["synth@aflw2000"], when["synth@coco"]
    assert a0 < c1 and c0 < a1
    # ...and never more than parallel_stages at once.
    edges = sorted([(s, 1) for _, s, _ in calls] + [(e, -1) for _, _, e in calls], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2
    summary = json.loads((repo / "reports" / "pipeline_run.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == FLOW_STAGES and all("started" in r for r in summary["stages"])


def test_a_failed_stage_stops_its_downstream_and_the_other_branch_finishes(harness, tmp_path, monkeypatch):
    params = tiny_params_dict()
    params["orchestration"] = {"shared_ray": False, "parallel_stages": 2}
    repo = make_project_copy(tmp_path / "proj", params)
    calls = _record_stages(monkeypatch, fail="synth@coco", seconds=0.5)
    state = hpe(params_path="params.yaml", workdir=str(repo), stages=FLOW_STAGES, return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="stage synth@coco broke"):
        state.result()
    ran = {stage for stage, _, _ in calls}
    assert ran == {"synth@aflw2000", "synth@coco", "ingest@aflw2000"}  # nothing downstream of synth@coco


def test_two_trainings_side_by_side_through_dvc_leave_dvc_lock_complete(harness, tmp_path, monkeypatch, shared_ray_env):
    """The head of the DAG through the flow, two stages at a time: the baseline and the VLM's
    pretraining train at once on the shared Ray, and each concurrent `dvc repro --single-item`
    records its stage in dvc.lock (none lost to another's write), so plain DVC finds nothing to do.
    (The whole DAG through the flow is `make demo`'s; it took 9 min here, too long for the suite.)"""
    params = tiny_params_dict()
    params["orchestration"] = {"parallel_stages": 2}
    repo = make_project_copy(tmp_path / "proj", params)
    for k, v in {**subprocess_env(), **shared_ray_env}.items():
        monkeypatch.setenv(k, v)
    sets = {"300w_lp": "300w_lp", "aflw2000": "aflw2000", "biwi": "biwi_hpdb"}
    stages = [*(f"synth@{s}" for s in sets), *(f"ingest@{d}" for d in sets.values()), "baseline", "pretrain_base"]
    results = hpe(params_path="params.yaml", workdir=str(repo), stages=stages)
    assert not any(r["skipped"] for r in results)
    by = {r["stage"]: r for r in results}
    # The baseline and the VLM branch do not wait for each other: they overlapped.
    assert by["baseline"]["started"] < by["pretrain_base"]["ended"]
    assert by["pretrain_base"]["started"] < by["baseline"]["ended"]
    proc = subprocess.run(["dvc", "status", *stages], cwd=repo, env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stdout
