"""The MLflow tracking server backed by PostgreSQL (scripts/mlflow_server.sh) on free loopback ports
with its state in a tmp folder: a real ingest stage and a registry version with an alias logged
through it land in PostgreSQL and in the server's artifact folder; `stop` ends both services."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env, tiny_params_dict
from tests.integration._services import free_port

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "scripts" / "mlflow_server.sh"


def _script(env: dict[str, str], action: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tracking_server():
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, and as root the script runs postgres as
    # the `postgres` user, which must reach the cluster folder. Short, too: the socket path is
    # limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="hpe-pg-", dir="/tmp"))
    root.chmod(0o755)
    pg_port = free_port()
    mlflow_port = free_port()
    while mlflow_port == pg_port:
        mlflow_port = free_port()
    env = {
        **subprocess_env(),
        "HPE_RUN_DIR": str(root / "run"),
        "HPE_PG_PORT": str(pg_port),
        "HPE_MLFLOW_PORT": str(mlflow_port),
        "HPE_MLFLOW_ARTIFACTS": str(root / "artifacts"),
    }
    try:
        start = _script(env, "start")
        log = root / "run" / "mlflow-server.log"
        assert start.returncode == 0, start.stdout + start.stderr + (log.read_text()[-3000:] if log.exists() else "")
        uri = re.search(r"^export MLFLOW_TRACKING_URI=(\S+)$", start.stdout, re.M).group(1)
        assert uri == f"http://127.0.0.1:{mlflow_port}"
        yield uri, env, root
    finally:
        _script(env, "stop", timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_pipeline_tracks_into_postgres_backed_server(tracking_server, tmp_path, monkeypatch):
    import psycopg2
    from mlflow import MlflowClient

    from pipeline import stages
    from pipeline.config import parse_params
    from pipeline.registry import CHAMPION, HeadPoseVLM, current_champion, register_candidate

    uri, env, root = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the documented switch: no code or params change
    params = parse_params(tiny_params_dict())
    stages.synth(params, "biwi", tmp_path / "biwi")
    summary = stages.ingest_stage(params, "biwi_npz", tmp_path / "biwi", tmp_path / "parquet", engine="local")

    client = MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["kept"] == summary["kept"] == 8
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "biwi_npz" and inp.dataset.digest == summary["dvc_md5"]
    # Artifacts go through the server (proxied) into its artifact destination.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(list((root / "artifacts").rglob("ingest_summary.json"))) == 1

    # The registry on the same server: a version with tags, then the champion alias.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\x00\x01tiny")
    version = register_candidate(
        "hpe-vlm-test", model_dir, {"mean_mae": 4.25, "method": "layer_wta"}, "register-test", HeadPoseVLM()
    )
    client.set_registered_model_alias("hpe-vlm-test", CHAMPION, version)
    assert current_champion(client, "hpe-vlm-test") == (version, 4.25)

    # All of it is in PostgreSQL (the role's password is in the run folder, 0600).
    password = (root / "run" / "mlflow-db.password").read_text()
    assert (root / "run" / "mlflow-db.password").stat().st_mode & 0o077 == 0
    conn = psycopg2.connect(
        host="127.0.0.1", port=int(env["HPE_PG_PORT"]), dbname="mlflow", user="mlflow", password=password
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (summary["mlflow_run_id"],))
            assert cur.fetchone()[0] == 1
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'hpe-vlm-test'")
            assert cur.fetchall() == [(CHAMPION, int(version))]
    finally:
        conn.close()

    stop = _script(env, "stop", timeout=120)
    assert stop.returncode == 0, stop.stderr
    status = _script(env, "status", timeout=60)
    assert status.returncode == 3 and "PostgreSQL: stopped" in status.stdout and "MLflow server: down" in status.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"HPE_PG_PORT": "99999"}, "HPE_PG_PORT=99999 is not a port number"),
        ({"HPE_PG_PORT": "5999", "HPE_MLFLOW_PORT": "5999"}, "are both 5999"),
        ({"HPE_RUN_DIR": "/tmp/" + "d" * 100}, "too deep"),
    ],
)
def test_bad_server_config_is_a_clear_error(overrides, message, tmp_path):
    env = {**subprocess_env(), "HPE_RUN_DIR": str(tmp_path / "run"), **overrides}
    proc = _script(env, "start", timeout=30)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()
