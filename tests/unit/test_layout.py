"""dvc.yaml, pipeline.layout and the Prefect flow agree on stage names and output paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.repo import Repo

from flows.hpe import stage_graph, stage_names
from pipeline import layout
from pipeline.config import load_params
from pipeline.pose2d.stages import POSE_MODELS
from pipeline.stage_runners import POSE_TRAIN_STAGES, RUNNERS, run_stage

ROOT = Path(__file__).resolve().parents[2]


def _dvc_stages() -> dict[str, list[str]]:
    with Repo(str(ROOT)) as repo:
        return {s.addressing: [str(Path(o.def_path)) for o in s.outs] for s in repo.index.stages}


def test_flow_runs_every_dvc_stage_and_paths_match():
    params = load_params(ROOT / "params.yaml")
    dvc = _dvc_stages()
    assert set(stage_names(params)) == set(dvc)
    for name in params.synthetic.model_dump(by_alias=True):
        assert dvc[f"synth@{name}"] == [str(layout.synth_out(name))]
    for name in params.ingest.datasets:
        assert dvc[f"ingest@{name}"] == [str(layout.parquet_out(name)), str(layout.ingest_metrics(name))]
    for name in ("coco", "humanart"):
        assert dvc[f"ground_truth@{name}"] == [str(layout.ground_truth_out(name))]
    assert dvc["pretrain_base"] == [
        str(layout.base_model()),
        str(layout.pretrain_metrics()),
        str(layout.curve("pretrain_base")),
    ]
    for name in params.lora.adapters:
        assert dvc[f"train_lora@{name}"] == [
            str(layout.adapter_out(name)),
            str(layout.lora_metrics(name)),
            str(layout.curve(f"lora-{name}")),
        ]
    for method in params.merge.methods:
        assert dvc[f"merge@{method}"] == [str(layout.merged_out(method)), str(layout.merge_metrics(method))]
    assert set(dvc["evaluate"]) == {
        str(layout.invalid_answers_dir()),
        str(layout.evaluation_table()),
        str(layout.eval_metrics_dir()),
    }
    assert dvc["register"] == [str(layout.registry_out())]
    assert dvc["report"] == [str(layout.report_md()), str(layout.REPORTS / "figures")]
    for stage, (which, model) in POSE_TRAIN_STAGES.items():
        assert dvc[stage] == [
            str(layout.pose_model(model)),
            str(layout.pose_train_metrics(which)),
            str(layout.curve(f"pose-{which}")),
        ]
    assert dvc["pose_evaluate"] == [str(layout.pose_predictions())] + [
        str(layout.pose_metrics_dir() / f"{m}.json") for m in POSE_MODELS
    ]
    assert dvc["pose_register"] == [str(layout.pose_registry_out())]
    assert dvc["baseline"] == [
        str(layout.baseline_out()),
        str(layout.baseline_metrics()),
        str(layout.curve("baseline")),
    ]


def test_flow_order_is_topological():
    params = load_params(ROOT / "params.yaml")
    order = stage_names(params)
    for name, cfg in params.ingest.datasets.items():
        writer = next(s for s in order if s.startswith("synth@") and str(cfg.raw_root).endswith(s.split("@")[1]))
        assert order.index(writer) < order.index(f"ingest@{name}")


def test_every_stage_kind_has_a_direct_runner_and_unknown_kinds_are_named():
    params = load_params(ROOT / "params.yaml")
    kinds = {stage.partition("@")[0] for stage in stage_names(params)}
    assert kinds <= set(RUNNERS), kinds - set(RUNNERS)
    assert set(RUNNERS) <= kinds  # no runner for a stage the DAG no longer has
    with pytest.raises(ValueError, match=r"unknown stage kind 'trian_lora' in 'trian_lora@hpe'; known: .*train_lora"):
        run_stage("trian_lora@hpe", params)


def test_stage_graph_lets_independent_branches_overlap(tmp_path):
    params = load_params(ROOT / "params.yaml")
    names = stage_names(params)
    up = stage_graph(ROOT, names)
    assert set(up) == set(names)
    for name, before in up.items():  # only earlier stages: the flow's order stays topological
        assert all(names.index(b) < names.index(name) for b in before), name
    # The three branches (baseline, VLM, VLPose) do not wait for each other.
    assert "pretrain_base" not in up["baseline"] and "baseline" not in up["pretrain_base"]
    assert not {"pretrain_base", "baseline"} & set(up["pose_train_original"])
    assert {"ingest@300w_lp", "synth@300w_lp"} <= set(up["baseline"])
    assert {f"merge@{m}" for m in params.merge.methods} <= set(up["evaluate"])
    assert "train_lora@hpe" not in up["train_lora@grounding"]
    # A selection waits through the stages it leaves out (pretrain_base reads ingest@300w_lp's output).
    assert stage_graph(ROOT, ["synth@300w_lp", "pretrain_base"]) == {
        "synth@300w_lp": [],
        "pretrain_base": ["synth@300w_lp"],
    }
    # Without a dvc.yaml, one stage after another.
    assert stage_graph(tmp_path, ["a", "b", "c"]) == {"a": [], "b": ["a"], "c": ["b"]}
    with pytest.raises(ValueError, match=r"\['nope'\] are not in .*dvc.yaml"):
        stage_graph(ROOT, ["synth@coco", "nope"])
