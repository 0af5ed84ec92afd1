"""pretrain_base and train_lora end to end on tiny settings: the artifacts load the way users
load them (``family.load``, ``PeftModel.from_pretrained``), only adapter weights are trained,
metrics and MLflow runs exist, and a bad LoRA target fails before any training."""

from __future__ import annotations

import json
import time

import mlflow
import pytest
import yaml
from safetensors.torch import load_file

from pipeline import stages
from pipeline.config import parse_params
from pipeline.train.ray_deepspeed import PreflightError
from pipeline.vlm import stages as vlm_stages
from pipeline.vlm.families import get_family
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


def _params(tmp_path, **lora_overrides):
    d = tiny_params_dict()
    d["pretrain_base"]["train"].update(steps=12, checkpoint_every=6, warmup_steps=2, micro_batch_size=8)
    d["lora"]["train"].update(steps=6, checkpoint_every=3, warmup_steps=1, micro_batch_size=8)
    d["lora"].update(lora_overrides)
    d["vlm"].update(eval_rows=4, heldout_fraction=0.25)
    d["tracking"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return parse_params(d)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory, synthetic_raw):
    root = tmp_path_factory.mktemp("pq")
    p = parse_params({**tiny_params_dict(), "tracking": {"enabled": False}})
    stages.ingest_stage(p, "300w_lp", synthetic_raw / "300w_lp", root / "300w_lp", engine="local")
    stages.ingest_stage(p, "aflw2000", synthetic_raw / "aflw2000", root / "aflw2000", engine="local")
    stages.ingest_stage(p, "biwi_hpdb", synthetic_raw / "biwi", root / "biwi_hpdb", engine="local")
    return root


def test_pretrain_then_lora(parquet, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path)
    summary = vlm_stages.pretrain_base(
        params, tmp_path / "base", tmp_path / "runs", tmp_path / "m.json", parquet_root=parquet
    )
    assert summary["steps"] == 12
    model, processor = get_family("tiny").load(tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").exists()
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"n", "acc_iou50", "acc_iou75", "mean_iou", "invalid_rate", "constant_box_acc_iou50"} <= set(
        m["heldout"]["grounding"]
    )

    lora = vlm_stages.train_lora(
        params,
        "hpe",
        tmp_path / "base",
        tmp_path / "adapter",
        tmp_path / "runs",
        tmp_path / "l.json",
        parquet_root=parquet,
    )
    assert lora["steps"] == 6
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it trained
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
    assert peft.peft_config["default"].r == params.lora.r
    l_metrics = json.loads((tmp_path / "l.json").read_text())
    assert {"grounding", "headpose"} <= set(l_metrics["heldout"])

    mlflow.set_tracking_uri(params.tracking.resolved_uri())
    run = mlflow.get_run(lora["mlflow_run_id"])
    assert run.data.params and "loss" in run.data.metrics
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["300w_lp"]
    assert "heldout/grounding/acc_iou50" in run.data.metrics

    # Merge the head-pose adapter with a grounding adapter, evaluate every candidate through
    # Ray Data, register the merges behind the gate.
    vlm_stages.train_lora(
        params,
        "grounding",
        tmp_path / "base",
        tmp_path / "adapters" / "grounding",
        tmp_path / "runs",
        parquet_root=parquet,
    )
    (tmp_path / "adapters" / "hpe").symlink_to(tmp_path / "adapter", target_is_directory=True)
    for method in params.merge.methods:
        merged = vlm_stages.merge_stage(
            params,
            method,
            tmp_path / "base",
            tmp_path / "adapters",
            tmp_path / "merged" / method,
            tmp_path / "merge" / f"{method}.json",
        )
        assert merged["groups"] > 0 and (tmp_path / "merged" / method / "merge_decisions.json").exists()
        get_family("tiny").load(tmp_path / "merged" / method)  # a full model folder
    from pipeline.evaluate.vlm_stage import evaluate_vlm
    from pipeline.registry import register_merged

    out = evaluate_vlm(
        params,
        tmp_path / "base",
        tmp_path / "adapters",
        tmp_path / "merged",
        tmp_path / "eval",
        tmp_path / "evaluation.json",
        tmp_path / "invalid",
        parquet_root=parquet,
    )
    names = [r["candidate"] for r in out["rows"]]
    assert names == ["base", "lora:hpe", "lora:grounding", "merge:layer_wta", "merge:task_arithmetic"]
    assert out["evaluated"] == names
    per = json.loads((tmp_path / "eval" / "merge-layer_wta.json").read_text())
    assert per["aflw2000"]["n"] == 6 and per["biwi_hpdb"]["n"] == 6 and per["grounding"]["n"] == 4
    for name in names:  # every invalid answer is kept, one line each
        lines = (tmp_path / "invalid" / f"{name.replace(':', '-')}.jsonl").read_text().splitlines()
        row = next(r for r in out["rows"] if r["candidate"] == name)
        assert len(lines) == round(
            6 * row["aflw2000/invalid_rate"] + 6 * row["biwi_hpdb/invalid_rate"] + 4 * row["grounding/invalid_rate"]
        )
    # Nothing changed: every candidate's scores come from its cached file; same table.
    table = (tmp_path / "evaluation.json").read_text()
    again = evaluate_vlm(
        params,
        tmp_path / "base",
        tmp_path / "adapters",
        tmp_path / "merged",
        tmp_path / "eval",
        tmp_path / "evaluation.json",
        tmp_path / "invalid",
        parquet_root=parquet,
    )
    assert again["evaluated"] == [] and again["reused"] == names
    assert (tmp_path / "evaluation.json").read_text() == table
    reg = register_merged(params, tmp_path / "evaluation.json", tmp_path / "merged", tmp_path / "registry.json")
    assert [d["candidate"] for d in reg["decisions"]] == ["merge:layer_wta", "merge:task_arithmetic"]
    client = mlflow.MlflowClient(params.tracking.resolved_uri())
    assert str(client.get_model_version_by_alias("hpe-vlm", "candidate").version) == reg["decisions"][-1]["version"]


def test_bad_lora_target_fails_before_training(parquet, tmp_path, monkeypatch):
    params = _params(tmp_path, target_modules=["q_proj", "no_such_proj"])
    d = yaml.safe_load(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))
    assert d  # params round-trip as plain data
    base = tmp_path / "base"
    from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm, save_vlm

    save_vlm(*build_tiny_vlm(TinyVLMConfig()), base)
    t0 = time.perf_counter()
    with pytest.raises(PreflightError, match="no_such_proj"):
        vlm_stages.train_lora(params, "hpe", base, tmp_path / "adapter", tmp_path / "runs", parquet_root=parquet)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "adapter").exists()
