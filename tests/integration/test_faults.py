"""Fault tests (docs/cluster.md, "Faults and recovery"): what a kill or a lost service leaves.

* A killed Ray training worker: covered in test_train_loop.py. Rank 0 SIGKILLed by the test
  process mid-run (its pid from ``progress.json``): with ``max_failures=1`` Ray restarts the
  group in the same call from the latest checkpoint and ends on the uninterrupted run's weights;
  a worker that ``os._exit``s at step 7 with no restarts allowed: a new ``train`` call resumes
  from the step-4 checkpoint to bit-identical weights. Not repeated here.
* ``dvc repro`` SIGKILLed (its whole process group, Ray included) mid-stage: no partial output,
  a second ``dvc repro`` meanwhile is refused naming the first, the rerun skips the finished
  stage despite the dead process's DVC rwlock entries, and ends on an uninterrupted run's hashes.
* Two ``hpe`` flow runs at once: the project run lock refuses one at once, naming the holder,
  and queues one given ``wait_for_lock_s``.
* The MLflow server killed mid-training: training finishes, checkpoints and model are saved,
  what MLflow missed is in a local buffer that replays into the server's store.

80 s on 2 idle cores, about 2 minutes on busy ones (Prefect's test server, an MLflow server,
a Ray training, two ingests through DVC).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import make_project_copy, subprocess_env, tiny_params_dict

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _lock_md5(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for o in lock[stage]["outs"]} if stage in lock else {}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _names(procs: list[psutil.Process]) -> set[str]:
    names = set()
    for p in procs:
        try:
            names.add(p.name())
        except psutil.Error:  # ended between listing and asking
            pass
    return names


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# ---------------------------------------------------------------- b: the whole run killed mid-stage
def test_killed_dvc_repro_leaves_no_partial_output_and_the_rerun_skips_finished_stages(tmp_path):
    from pipeline import stages
    from pipeline.config import parse_params
    from pipeline.lineage import dvc_md5, file_md5

    params = tiny_params_dict()
    params["tracking"]["enabled"] = False  # MLflow is not what this test is about (saves seconds)
    repo = make_project_copy(tmp_path / "proj", params)
    env = subprocess_env()
    first = subprocess.Popen(
        ["dvc", "repro", "ingest@aflw2000"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes hpe and Ray with it
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(first.stdout), daemon=True)
    reader.start()
    try:
        # Meanwhile: what an uninterrupted run writes, through the same stage functions
        # (same params + seed ⇒ same bytes; the local engine writes Ray's bytes, test_ingest_ray).
        ref = tmp_path / "ref"
        tiny = parse_params(params)
        stages.synth(tiny, "aflw2000", ref / "raw")
        stages.ingest_stage(tiny, "aflw2000", ref / "raw", ref / "parquet", ref / "metrics.json", engine="local")
        expected = {
            "synth@aflw2000": {"data/raw/aflw2000": dvc_md5(ref / "raw")},
            "ingest@aflw2000": {
                "data/parquet/aflw2000": dvc_md5(ref / "parquet"),
                "metrics/ingest/aflw2000.json": file_md5(ref / "metrics.json"),
            },
        }

        # Kill point: the ingest stage has started its Ray (mid-stage, after synth was locked in).
        _wait_for(lambda: any("Running stage 'ingest@aflw2000'" in ln for ln in lines), 120, "the ingest stage")
        _wait_for(lambda: "raylet" in _names(_descendants(first.pid)), 120, "the ingest's Ray", poll=0.2)
        assert _lock_md5(repo, "synth@aflw2000") == expected["synth@aflw2000"]

        # A second `dvc repro` now is refused at once by DVC's rwlock, naming the first.
        second = subprocess.run(["dvc", "repro", "ingest@aflw2000"], cwd=repo, env=env, capture_output=True, text=True)
        assert second.returncode != 0
        assert f"is busy, it is being blocked by:\n  (PID {first.pid})" in second.stdout + second.stderr
    finally:
        tree = _descendants(first.pid)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()  # reaped: a zombie's pid would still count as alive in DVC's rwlock check
    assert first.returncode == -signal.SIGKILL and tree
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"left running after the kill: {alive}"

    # Nothing half-written: each output of the killed stage is absent, or complete and right.
    out, metrics = repo / "data" / "parquet" / "aflw2000", repo / "metrics" / "ingest" / "aflw2000.json"
    assert not out.exists() or dvc_md5(out) == expected["ingest@aflw2000"]["data/parquet/aflw2000"]
    assert not metrics.exists() or json.loads(metrics.read_text())["counts_in"] == 40
    assert _lock_md5(repo, "ingest@aflw2000") == {}  # DVC never recorded the killed stage

    rerun = subprocess.run(["dvc", "repro", "ingest@aflw2000"], cwd=repo, env=env, capture_output=True, text=True)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log
    # DVC drops a dead process's rwlock entries itself (and says so); no manual cleanup needed.
    assert f"(Pid {first.pid})" in log and "had been killed. Auto removed it from the lock file" in log
    assert "Stage 'synth@aflw2000' didn't change, skipping" in log
    assert "Running stage 'synth@aflw2000'" not in log and "Running stage 'ingest@aflw2000'" in log
    for stage, outs in expected.items():
        assert _lock_md5(repo, stage) == outs, stage
        for path, md5 in outs.items():  # the workspace holds what dvc.lock says (`dvc status`, cheaper)
            assert dvc_md5(repo / path) == md5, path
    # No hidden temporaries of the killed writers left beside the outputs.
    assert [p.name for p in out.parent.iterdir()] == ["aflw2000"]


# ---------------------------------------------------------------- c: two flow runs at once
@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_two_flow_runs_at_once_one_is_refused_naming_the_other_one_queues(harness, tmp_path, monkeypatch):
    from flows.hpe import hpe
    from pipeline.lineage import dvc_md5
    from pipeline.runlock import read_holder

    repo = make_project_copy(tmp_path / "proj", tiny_params_dict())
    for k, v in subprocess_env().items():
        monkeypatch.setenv(k, v)
    # Through DVC, a few seconds a stage: the first run holds the lock long enough for the others to meet it.
    stages = ["synth@aflw2000", "synth@biwi"]
    states = {}

    def run(name: str, stages: list[str], **kw) -> None:
        states[name] = hpe(params_path="params.yaml", workdir=str(repo), stages=stages, return_state=True, **kw)

    first = threading.Thread(target=run, args=("first", stages))
    first.start()
    holder = _wait_for(lambda: (h := read_holder(repo)) and h.get("flow_run_id") and h, 120, "the first run's lock")
    queued = threading.Thread(target=run, args=("queued", stages[:1]), kwargs={"wait_for_lock_s": 600})
    queued.start()
    t0 = time.monotonic()
    run("refused", stages)
    refused_s = time.monotonic() - t0
    first.join(timeout=300)
    queued.join(timeout=300)
    assert holder["pid"] == os.getpid()  # the flows run in this process; the flow run ids tell them apart

    refused = states["refused"]
    assert refused.is_failed()
    message = str(refused.result(raise_on_failure=False))
    assert "another pipeline run holds the run lock" in message
    assert f"pid {os.getpid()}" in message and f"Prefect flow run {holder['flow_run_id']}" in message
    assert refused_s < 60

    assert states["first"].is_completed() and states["queued"].is_completed()
    assert str(states["first"].state_details.flow_run_id) == holder["flow_run_id"]
    assert not any(r["skipped"] for r in states["first"].result())
    # The queued run started after the first had finished: DVC found nothing left to do.
    assert all(r["skipped"] for r in states["queued"].result())
    summary = json.loads((repo / "reports" / "pipeline_run.json").read_text())
    assert summary["flow_run_id"] == str(states["queued"].state_details.flow_run_id) and summary["lock_wait_s"] > 0

    # Outputs intact: the workspace holds what dvc.lock says (what `dvc status` checks), and the lock is free.
    for stage in stages:
        for path, md5 in _lock_md5(repo, stage).items():
            assert dvc_md5(repo / path) == md5, path
    assert read_holder(repo) is None


# ---------------------------------------------------------------- d: the MLflow server lost mid-training
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """Started here, waited for in the test (overlapping Ray's start-up), always stopped here."""
    server = _MlflowServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


class _MlflowServer:
    """``mlflow server`` on 127.0.0.1 (SQLite store in ``root``), in its own process group."""

    def __init__(self, root: Path):
        self.db = root / "mlflow.db"
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = (root / "server.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--default-artifact-root",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                self.url.rsplit(":", 1)[1],
                "--workers",
                "1",
            ],
            cwd=root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No job-runner process beside the server: not needed for tracking, and a second
            # Python start-up on a 2-core machine.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )

    def wait_ready(self, timeout: float = 180) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, "mlflow server exited; see server.log"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_for(up, timeout, "the MLflow server", poll=0.3)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # uvicorn and its job runner too
            self.proc.wait()
        self.log.close()


@contextmanager
def _local_ray():
    """A local Ray for the test (``train`` reuses it), or the cluster named by ``RAY_ADDRESS``."""
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
        object_store_memory=256 * 1024**2,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_training_survives_the_mlflow_server_going_down(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from pipeline.tracking import TrackingLostWarning, read_tracking_buffer, replay_tracking_buffer
    from pipeline.train import TrainConfig, train
    from pipeline.train.toy import ToyRegression, make_toy_table

    # Give up on a dead server at once (defaults: 7 retries with back-off, minutes). The loop
    # forwards these to the Ray workers, which is part of what is tested.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = mlflow_server
    # Ray starts while the server does (their start-ups overlap).
    with _local_ray():
        server.wait_ready()
        steps = 30
        cfg = TrainConfig(
            steps=steps, micro_batch_size=8, lr=2e-2, warmup_steps=2, checkpoint_every=4, log_every=2, seed=0
        )
        run_dir = tmp_path / "out" / "ray" / "mlflow-down"
        killed_at: list[int] = []

        def kill_after_first_flushes() -> None:
            # progress.json is rewritten right after each flush to MLflow: steps ≤ 4 reached it.
            def step() -> int:
                try:
                    return json.loads((run_dir / "progress.json").read_text())["step"]
                except (OSError, ValueError, KeyError):
                    return 0

            _wait_for(lambda: step() >= 4, 300, "step 4", poll=0.02)
            server.kill()
            killed_at.append(step())

        killer = threading.Thread(target=kill_after_first_flushes, daemon=True)
        killer.start()
        with pytest.warns(TrackingLostWarning, match=rf"was lost at step \d+: API request to {server.url}"):
            result = train(
                ToyRegression(loss_delay_s=0.1),  # ~3 s of steps after the kill
                make_toy_table(64),
                cfg,
                tmp_path / "out",
                run_name="mlflow-down",
                tracking={"tracking_uri": server.url, "experiment": "faults"},
            )
        killer.join(timeout=5)
    assert killed_at and killed_at[0] < steps, killed_at

    # Training finished: every step, the checkpoints and the model.
    assert result.steps == steps and result.resumed_from_step == 0
    assert (result.model_dir / "model.safetensors").exists()
    assert (run_dir / f"step_{steps:08d}" / "model.safetensors").exists()
    assert result.tracking_lost and result.tracking_buffer == run_dir / "mlflow_buffer.jsonl"

    # The buffer: why, what MLflow missed (up to the last step), and the run's final status.
    records = read_tracking_buffer(result.tracking_buffer)
    assert records[0]["kind"] == "lost" and records[0]["run_id"] == result.mlflow_run_id
    buffered = {r["step"] for r in records if r["kind"] == "metric" and r["key"] == "loss"}
    assert max(buffered) == steps
    assert [r["status"] for r in records if r["kind"] == "terminated"] == ["FINISHED"]

    # The server's store has the steps before the kill; replaying the buffer completes it.
    store = MlflowClient(f"sqlite:///{server.db}")
    sent = {m.step for m in store.get_metric_history(result.mlflow_run_id, "loss")}
    assert sent and min(sent) == 1 and sent | buffered == set(range(1, steps + 1))
    assert store.get_run(result.mlflow_run_id).info.status == "RUNNING"
    counts = replay_tracking_buffer(result.tracking_buffer, f"sqlite:///{server.db}")
    assert counts["metrics"] > 0 and counts["terminated"] == 1
    assert {m.step for m in store.get_metric_history(result.mlflow_run_id, "loss")} == set(range(1, steps + 1))
    assert store.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert not result.tracking_buffer.exists() and result.tracking_buffer.with_suffix(".jsonl.replayed").exists()
