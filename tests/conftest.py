"""Shared fixtures: tiny params, tiny synthetic datasets, a throw-away copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Tiny sizes: every code path, seconds not minutes.
TINY = {
    "synthetic": {
        "300w_lp": {"n_per_subset": 3},
        "aflw2000": {"n": 40},
        "biwi": {"n_sequences": 2, "frames_per_sequence": 4},
        "coco": {"n_train_images": 6, "n_val_images": 4},
        "humanart": {"n_train_per_scene": 1, "n_val_per_scene": 1},
    },
}


def tiny_params_dict() -> dict:
    """params.yaml with the tiny synthetic sizes, a few training steps, two adapters, two merges."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["synthetic"] = TINY["synthetic"]
    data["pretrain_base"]["train"].update(steps=4, checkpoint_every=2, warmup_steps=1, micro_batch_size=4)
    data["lora"]["train"].update(steps=2, checkpoint_every=2, warmup_steps=0, micro_batch_size=4)
    data["lora"]["adapters"] = {"hpe": {"rehearsal": 0.0}, "grounding": {"rehearsal": 1.0}}
    data["merge"]["inputs"] = ["hpe", "grounding"]
    data["vlm"].update(eval_rows=4, heldout_fraction=0.25)
    methods = data["merge"]["methods"]
    data["merge"]["methods"] = {m: methods[m] for m in ("layer_wta", "task_arithmetic")}
    data["evaluate"].update(rows_per_set=6, grounding_rows=4)
    data["baseline"]["train"].update(steps=4, checkpoint_every=2, warmup_steps=1, micro_batch_size=8)
    data["pose"]["size"] = {"image_height": 64, "image_width": 48, "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    data["pose"]["vlpose"] = {"num_heads": 2}
    for section in ("train_original", "finetune", "train_vlpose"):
        data["pose"][section].update(steps=2, micro_batch_size=4, checkpoint_every=2, warmup_steps=0)
    return data


@pytest.fixture(scope="session", autouse=True)
def _quiet_services():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    yield


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; keep one test's URI out of the next."""
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def make_project_copy(dest: Path, params: dict) -> Path:
    """A fresh git + DVC repository holding this project's DAG, code deps and ``params``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / ".gitignore", dest / ".gitignore")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dest, check=True)
    return dest


def subprocess_env() -> dict[str, str]:
    """Environment for `dvc`/`hpe` subprocesses: this venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="session")
def shared_ray_env() -> Iterator[dict[str, str]]:
    """A Ray cluster (one node, 2 CPUs) started once per session for the tests that run many
    `hpe` stages as `dvc repro` subprocesses: with its address each stage joins it (about 7 s
    less per stage here) instead of starting and stopping a Ray of its own."""
    from pipeline import raynodes

    state = tempfile.mkdtemp(prefix="hpe-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    with raynodes.running_cluster(state, nodes=1, num_cpus=2) as cluster:
        yield cluster.driver_env()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """All tiny synthetic head-pose datasets, written once per session (read-only for tests)."""
    from pipeline import stages
    from pipeline.config import parse_params

    root = tmp_path_factory.mktemp("raw")
    params = parse_params(tiny_params_dict())
    for name in ("300w_lp", "aflw2000", "biwi"):
        stages.synth(params, name, root / name)
    return root


@pytest.fixture(scope="session")
def keypoint_raw(tmp_path_factory) -> Path:
    """Tiny synthetic COCO and HumanArt, written once per session (read-only for tests)."""
    from pipeline import stages
    from pipeline.config import parse_params

    root = tmp_path_factory.mktemp("kpraw")
    params = parse_params(tiny_params_dict())
    for name in ("coco", "humanart"):
        stages.synth(params, name, root / name)
    return root
