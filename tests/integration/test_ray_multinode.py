"""Two Ray nodes on this machine (``scripts/ray_cluster.sh``), joined through ``RAY_ADDRESS`` alone.

A driver process (``multinode_driver.py``) runs the ingest stage through Ray Data and a
2-worker Ray Train + DeepSpeed run of the toy task on the cluster; the test checks that the
two workers ran on two different nodes and that the Parquet bytes and the trained weights equal
a local run's (the loop makes a run a pure function of seed and world size). The nodes are
started by the script and stopped by it, processes matched by pid: never a bare ``ray stop``,
which would kill other people's Ray on this machine. ~1–1½ minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline import raynodes
from pipeline.config import parse_params
from pipeline.ingest import ingest
from pipeline.train import TrainConfig, train
from pipeline.train.toy import ToyRegression, make_toy_table
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ray_cluster.sh"
# One CPU per node and one per worker: the two workers cannot share a node.
TRAIN = dict(
    steps=8,
    micro_batch_size=8,
    lr=2e-2,
    warmup_steps=1,
    checkpoint_every=8,
    log_every=4,
    num_workers=2,
    cpus_per_worker=1,
)
TABLE = {"n": 96, "seed": 3}


def _script(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def cluster():
    """A head and a worker node of 1 CPU each; stopped (ours only) whatever the test does."""
    # Under /tmp, short: Ray's Unix socket paths live below the state folder.
    state = Path(tempfile.mkdtemp(prefix="hpe-ray-"))
    try:
        started = _script("start", "--dir", str(state), "--nodes", "2", "--num-cpus", "1")
        assert started.returncode == 0, started.stderr
        exports = [line.removeprefix("export ") for line in started.stdout.splitlines() if line.startswith("export ")]
        yield state, dict(line.split("=", 1) for line in exports)
    finally:
        _script("stop", "--dir", str(state), "--clean", timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def test_ingest_and_two_worker_training_on_two_nodes(cluster, synthetic_raw, tmp_path, monkeypatch):
    state, env = cluster
    assert env["RAY_ADDRESS"].startswith("127.0.0.1:") and env["RAY_AUTH_MODE"] == "token"
    status = _script("status", "--dir", str(state))
    assert status.returncode == 0 and json.loads(status.stdout)["running"], status.stdout
    recorded = raynodes.Cluster.load(state)
    assert len(recorded.nodes) == 2 and all(n.procs for n in recorded.nodes)

    params = {**tiny_params_dict(), "tracking": {"enabled": False}}
    spec = {
        "params": params,
        "raw": str(synthetic_raw / "300w_lp"),
        "ingest_out": str(tmp_path / "cluster_pq"),
        "node_log": str(tmp_path / "nodes"),
        "table": TABLE,
        "train": TRAIN,
        "train_out": str(tmp_path / "cluster_train"),
        "result": str(tmp_path / "result.json"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    driver_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env
    run = subprocess.run(
        [sys.executable, "-m", "tests.integration.multinode_driver", str(tmp_path / "spec.json")],
        cwd=ROOT,
        env=driver_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    # The loop warns that the workers leave the cluster no CPU for Ray Data (in-memory rows
    # need none; Parquet paths would wait for one).
    assert "leaves 0 of the cluster's 2 for Ray Data" in run.stderr
    report = json.loads((tmp_path / "result.json").read_text())

    # The driver saw two nodes of one CPU each; the two training workers ran one on each.
    node_ids = {n["id"] for n in report["nodes"]}
    assert len(node_ids) == 2 and all(n["cpus"] == 1.0 for n in report["nodes"])
    worker_nodes = [(tmp_path / "nodes" / f"rank{r}.txt").read_text() for r in range(2)]
    assert set(worker_nodes) == node_ids, worker_nodes

    # Ingestion on the cluster wrote the very bytes of the plain local loop.
    p = parse_params(params)
    local = ingest(
        "300w_lp",
        synthetic_raw / "300w_lp",
        tmp_path / "local_pq",
        seed=p.seed,
        crop_margin=p.ingest.datasets["300w_lp"].crop_margin,
        settings=p.ingest.model_dump(exclude={"datasets"}),
        engine="local",
    )
    assert report["ingest"]["kept"] == local.kept > 0
    files = sorted(f.relative_to(tmp_path / "local_pq") for f in (tmp_path / "local_pq").rglob("*.parquet"))
    assert files and all(
        (tmp_path / "cluster_pq" / f).read_bytes() == (tmp_path / "local_pq" / f).read_bytes() for f in files
    )

    # Training: the same 2-worker run on a local single-node Ray ends with the same weights, bit
    # for bit (0.5 CPU per worker there, to leave Ray Data a CPU of this machine's two).
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ref = train(
        ToyRegression(),
        make_toy_table(**TABLE),
        TrainConfig(**{**TRAIN, "cpus_per_worker": 0.5}),
        tmp_path / "local_train",
        run_name="local",
    )
    assert report["train"]["steps"] == ref.steps == TRAIN["steps"]
    assert report["train"]["torch_threads"] == ref.metrics["torch_threads"]
    assert report["train"]["final_loss"] == ref.final_loss
    ours = load_file(str(Path(report["train"]["model_dir"]) / "model.safetensors"))
    theirs = load_file(str(ref.model_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # Stopping ends every process the script started (and only those: matched by pid).
    pids = [proc for n in recorded.nodes for proc in n.procs]
    stopped = _script("stop", "--dir", str(state), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not [proc.pid for proc in pids if proc.process() is not None]
    assert _script("status", "--dir", str(state)).returncode == 3


def test_one_process_joins_a_token_cluster_after_a_local_ray_and_back(tmp_path, monkeypatch):
    """The flow's direct mode runs stages in its own process: a local Ray (no token) may have
    run there before it joins the run's shared, token-protected cluster, and a local one may
    follow. Ray caches its auth settings per process; without a reload the join is refused
    ("Failed to connect to Ray cluster", seen in CI) and the local one after it would look for
    a token file that is gone."""
    import ray

    from pipeline.raycluster import ray_session

    def square(x):
        return x * x

    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    with ray_session(num_cpus=1):
        assert ray.get(ray.remote(square).remote(3)) == 9
    state = Path(tempfile.mkdtemp(prefix="hpe-ray-"))
    try:
        with raynodes.running_cluster(state, nodes=1, num_cpus=1) as cluster:
            for key, value in cluster.driver_env().items():
                monkeypatch.setenv(key, value)
            with ray_session():
                assert ray.get(ray.remote(square).remote(4)) == 16
                assert len(ray.nodes()) == 1 and ray.cluster_resources()["CPU"] == 1
    finally:
        shutil.rmtree(state, ignore_errors=True)
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var)
    with ray_session(num_cpus=1):
        assert ray.get(ray.remote(square).remote(5)) == 25
