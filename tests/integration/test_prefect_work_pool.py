"""Deployment `hpe/full` on the process work pool `hpe-pool` (prefect.yaml, scripts/prefect_worker.sh):
a real Prefect server on a free loopback port (PREFECT_HOME in tmp), a process worker, one cheap
stage run through the deployment on a tiny project copy."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import BIN, ROOT, make_project_copy, subprocess_env, tiny_params_dict
from tests.integration._services import alive, free_port, stop_group, wait_http

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "scripts" / "prefect_worker.sh"


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on 127.0.0.1:<free port>, SQLite under tmp; the environment to reach it."""
    port = free_port()
    env = subprocess_env()
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    log = tmp_path / "prefect-server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"{env['PREFECT_API_URL']}/health", proc, log)
        yield env
    finally:
        stop_group(proc)


def test_process_worker_runs_deployment_full(prefect_server, tmp_path):
    params = tiny_params_dict()
    params["orchestration"] = {"use_dvc": False}  # the deployment path is under test, not DVC
    repo = make_project_copy(tmp_path / "proj", params)
    # Poll every second (default 10 s); pid file and log in tmp, not the project's .run.
    env = {**prefect_server, "HPE_RUN_DIR": str(tmp_path / "run"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    pidfile = tmp_path / "run" / "prefect-worker.pid"
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stdout + start.stderr
        assert "deployed hpe/full to work pool hpe-pool" in start.stdout
        pool = subprocess.run(
            [str(BIN / "prefect"), "work-pool", "inspect", "hpe-pool"], env=env, capture_output=True, text=True
        )
        assert pool.returncode == 0 and "process" in pool.stdout, pool.stdout + pool.stderr

        run = subprocess.run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                "hpe/full",
                "--param",
                f"workdir={repo}",
                "--param",
                'stages=["synth@aflw2000"]',
                "--watch",
                "--watch-interval",
                "1",
                "--watch-timeout",
                "240",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        worker_log = (tmp_path / "run" / "prefect-worker.log").read_text()
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr + worker_log
        assert "submitted to infrastructure" in worker_log  # the worker ran it, not some other runner
        raw = repo / "data" / "raw" / "aflw2000"
        assert len(list(raw.glob("*.jpg"))) == len(list(raw.glob("*.mat"))) == 40
        assert not (repo / "data" / "raw" / "300w_lp").exists()  # only the requested stage ran
    finally:
        worker_pid = int(pidfile.read_text()) if pidfile.exists() else None
        stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert worker_pid is not None and not alive(worker_pid)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [("HPE_WORKER_LIMIT", "0", "not a positive integer"), ("HPE_WORK_POOL", "a pool", "use letters")],
)
def test_bad_worker_config_is_a_clear_error(var, value, message, tmp_path):
    env = {**subprocess_env(), var: value, "HPE_RUN_DIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
