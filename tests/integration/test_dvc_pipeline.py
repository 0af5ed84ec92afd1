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


def test_vlm_artifacts_load_the_way_users_load_them(repo, monkeypatch):
    """pretrain_base → LoRA → merges → evaluation → registry, as `dvc repro` left them: the
    models load through the family and PEFT, only adapter weights trained, every invalid answer
    kept, the evaluation reuses unchanged candidates, MLflow holds the runs and the aliases."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from pipeline import layout
    from pipeline.stage_runners import run_stage
    from pipeline.vlm.families import get_family

    path, _ = repo
    params = parse_params(yaml.safe_load((path / "params.yaml").read_text()))
    family = get_family("tiny")
    model, _ = family.load(path / layout.base_model())
    pre = json.loads((path / layout.pretrain_metrics()).read_text())
    assert {"n", "acc_iou50", "acc_iou75", "mean_iou", "invalid_rate", "constant_box_acc_iou50"} <= set(
        pre["heldout"]["grounding"]
    )
    weights = load_file(path / layout.adapter_out("hpe") / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it trained
    peft = PeftModel.from_pretrained(model, str(path / layout.adapter_out("hpe")))
    assert peft.peft_config["default"].r == params.lora.r
    assert {"grounding", "headpose"} <= set(json.loads((path / layout.lora_metrics("hpe")).read_text())["heldout"])
    for method in params.merge.methods:
        assert (path / layout.merged_out(method) / "merge_decisions.json").exists()
        family.load(path / layout.merged_out(method))  # a full model folder

    rows = json.loads((path / layout.evaluation_table()).read_text())["candidates"]
    names = [r["candidate"] for r in rows]
    assert names == ["base", "lora:hpe", "lora:grounding", "merge:layer_wta", "merge:task_arithmetic"]
    per = json.loads((path / layout.eval_metrics_dir() / "merge-layer_wta.json").read_text())
    assert per["aflw2000"]["n"] == 6 and per["biwi_hpdb"]["n"] == 6 and per["grounding"]["n"] == 4
    assert per["300w_lp"]["n"] == per["300w_lp_blank"]["n"] > 0  # in-domain and its blank-image ablation
    for row in rows:  # every invalid answer is kept, one line each, on every evaluation set
        slug = row["candidate"].replace(":", "-")
        lines = (path / layout.invalid_answers_dir() / f"{slug}.jsonl").read_text()
        sets = json.loads((path / layout.eval_metrics_dir() / f"{slug}.json").read_text())
        expected = sum(round(m["n"] * m["invalid_rate"]) for m in sets.values() if isinstance(m, dict) and "n" in m)
        assert len(lines.splitlines()) == expected
    # Nothing changed: every candidate's scores come from its stored file; the same table.
    monkeypatch.chdir(path)
    table = layout.evaluation_table().read_text()
    again = run_stage("evaluate", params)  # what the flow runs with orchestration.use_dvc: false
    assert again["evaluated"] == [] and again["reused"] == names
    assert layout.evaluation_table().read_text() == table

    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    lora_runs = [r for r in mlflow.search_runs(experiment_names=["hpe"], output_format="list")
                 if r.data.tags.get("stage", "").startswith("train_lora@")]  # fmt: skip
    assert lora_runs and all("loss" in r.data.metrics and r.data.params for r in lora_runs)
    assert all([i.dataset.name for i in r.inputs.dataset_inputs] == ["300w_lp"] for r in lora_runs)
    reg = json.loads((path / layout.registry_out()).read_text())
    assert [d["candidate"] for d in reg["decisions"]] == ["merge:layer_wta", "merge:task_arithmetic"]
    assert str(client.get_model_version_by_alias("hpe-vlm", "candidate").version) == reg["decisions"][-1]["version"]


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
