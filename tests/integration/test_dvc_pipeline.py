"""`dvc repro` on a fresh copy: runs the DAG, second run is a no-op, one param reruns one branch,
and each ingest's MLflow dataset carries the very hash dvc.lock pins."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from flows.hpe import stage_names
from pipeline.config import parse_params
from tests.conftest import make_project_copy, subprocess_env, tiny_params_dict

pytestmark = pytest.mark.integration


def _dvc(repo, *args, ray_env: dict[str, str] | None = None) -> str:
    env = {**subprocess_env(), **(ray_env or {})}
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, shared_ray_env):
    repo = make_project_copy(tmp_path_factory.mktemp("dvcproj"), tiny_params_dict())
    out = _dvc(repo, "repro", ray_env=shared_ray_env)
    return repo, out


def test_repro_runs_every_stage_and_writes_parquet(repo):
    path, out = repo
    assert _ran(out) == set(stage_names(parse_params(tiny_params_dict())))
    for name, n in (
        ("300w_lp", 24),
        ("aflw2000", 40),
        ("biwi_hpdb", 8),
        ("biwi_npz", 8),
        ("coco", None),
        ("humanart", None),
    ):
        m = json.loads((path / "metrics" / "ingest" / f"{name}.json").read_text())
        assert m["counts_in"] == n or n is None
        assert m["counts_in"] == m["kept"] + m["filtered"] + m["quarantined"] > 0
        assert list((path / "data" / "parquet" / name).glob("*/part-*.parquet"))
    for name in ("coco", "humanart"):
        assert (path / "data" / "ground_truth" / name / f"{name}_all.json").exists()


def test_mlflow_dataset_digest_is_the_dvc_lock_hash(repo):
    path, _ = repo
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hpe"], output_format="list")
    by_dataset = {r.data.tags["dataset"]: r for r in runs if r.data.tags.get("stage") == "ingest"}
    for name in ("300w_lp", "aflw2000", "biwi_hpdb", "biwi_npz", "coco", "humanart"):
        outs = lock["stages"][f"ingest@{name}"]["outs"]
        md5 = next(o["md5"] for o in outs if o["path"] == f"data/parquet/{name}")
        metrics = json.loads((path / "metrics" / "ingest" / f"{name}.json").read_text())
        assert metrics["dvc_md5"] == md5
        inputs = by_dataset[name].inputs.dataset_inputs
        assert [i.dataset.digest for i in inputs] == [md5]


def _files(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_push_then_fresh_clone_and_pull_restores_every_output(repo, tmp_path_factory):
    """The default remote from .dvc/config (`storage`: ../hpe-dvc-remote next to the repository):
    `dvc push`, commit, `git clone` elsewhere, `dvc pull` → the same bytes, `dvc status` clean."""
    path, _ = repo
    # The committed config, resolved: a folder beside this copy (not a developer's remote).
    remotes = _dvc(path, "remote", "list").split()
    assert remotes[:3] == ["storage", str(path.parent / "hpe-dvc-remote"), "(default)"], remotes
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline outputs (dvc.lock)"], cwd=path, check=True)
    _dvc(path, "push")
    assert "in sync" in _dvc(path, "status", "--cloud")

    # A sibling folder, so the clone's relative remote URL names the same remote.
    clone = tmp_path_factory.mktemp("dvcclone")  # empty: git clones into it
    assert clone.parent == path.parent
    subprocess.run(["git", "clone", "-q", str(path), str(clone)], check=True)
    assert not (clone / "data").exists() and not (clone / "models").exists()
    _dvc(clone, "pull")
    assert "up to date" in _dvc(clone, "status")

    lock = yaml.safe_load((path / "dvc.lock").read_text())
    outs = {o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    assert any(o.startswith("data/parquet/") for o in outs) and any(o.startswith("models/") for o in outs)
    for out in sorted(outs):
        assert _files(clone / out) == _files(path / out), out


def test_second_repro_is_a_noop_and_one_param_reruns_one_branch(repo, shared_ray_env):
    path, _ = repo
    out = _dvc(path, "repro", ray_env=shared_ray_env)
    assert _ran(out) == set(), out
    # A leaf dataset's crop: only its ingest reruns (nothing downstream reads biwi_npz).
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["ingest"]["datasets"]["biwi_npz"]["crop_margin"] = [0.1, 0.1]
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(path, "repro", ray_env=shared_ray_env)
    assert _ran(out) == {"ingest@biwi_npz"}, out
    # The registry's gate tolerance: the gate and the report are redone, nothing is retrained.
    params["registry"]["grounding_tolerance"] = 0.2
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(path, "repro", ray_env=shared_ray_env)
    assert _ran(out) == {"register", "report"}, out
