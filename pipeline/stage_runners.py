"""Registry of the DAG's stage kinds → the function that runs one stage in this process.

A DAG stage is named ``kind`` or ``kind@name`` (``dvc.yaml``'s ``foreach`` items), and each
kind's runner calls the stage function with the paths from :mod:`pipeline.layout`, exactly as the
``hpe`` command in ``dvc.yaml`` does. The Prefect flow uses this when
``orchestration.use_dvc`` is false; one registry, so a new stage kind is one ``@runner`` here.
Runners resolve paths relative to the working directory, which the caller sets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline import layout
from pipeline.config import Params

Runner = Callable[[Params, str], Any]  # returns the stage function's summary
RUNNERS: dict[str, Runner] = {}

# VLPose's trainings: DVC stage name → (``hpe pose-train`` argument, output model name).
POSE_TRAIN_STAGES = {
    "pose_train_original": ("original", "original"),
    "pose_train_finetune": ("finetune", "finetuned"),
    "pose_train_vlpose": ("vlpose", "vlpose"),
}


def runner(*kinds: str) -> Callable[[Runner], Runner]:
    def register(fn: Runner) -> Runner:
        for kind in kinds:
            if kind in RUNNERS:
                raise ValueError(f"stage kind {kind!r} registered twice")
            RUNNERS[kind] = fn
        return fn

    return register


def run_stage(stage: str, params: Params) -> Any:
    """Run DAG stage ``stage`` (``kind`` or ``kind@name``) in this process; its summary."""
    kind, _, name = stage.partition("@")
    if kind not in RUNNERS:
        raise ValueError(f"unknown stage kind {kind!r} in {stage!r}; known: {', '.join(sorted(RUNNERS))}")
    return RUNNERS[kind](params, name)


@runner("synth")
def _synth(params: Params, name: str) -> Any:
    from pipeline import stages

    return stages.synth(params, name, layout.synth_out(name))


@runner("ingest")
def _ingest(params: Params, name: str) -> Any:
    from pipeline import stages

    raw_root = params.ingest.dataset(name).raw_root
    return stages.ingest_stage(params, name, raw_root, layout.parquet_out(name), layout.ingest_metrics(name))


@runner("ground_truth")
def _ground_truth(params: Params, name: str) -> Any:
    from pipeline import stages

    return stages.ground_truth(params, name, params.ingest.dataset(name).raw_root, layout.ground_truth_out(name))


@runner("baseline")
def _baseline(params: Params, _: str) -> Any:
    from pipeline import stages

    return stages.baseline_stage(
        params, layout.baseline_out(), layout.train_runs(), layout.baseline_metrics(), curve=layout.curve("baseline")
    )


@runner("pretrain_base")
def _pretrain_base(params: Params, _: str) -> Any:
    from pipeline.vlm import stages as vlm_stages

    return vlm_stages.pretrain_base(
        params,
        layout.base_model(),
        layout.train_runs(),
        layout.pretrain_metrics(),
        curve=layout.curve("pretrain_base"),
    )


@runner("train_lora")
def _train_lora(params: Params, name: str) -> Any:
    from pipeline.vlm import stages as vlm_stages

    return vlm_stages.train_lora(
        params,
        name,
        layout.base_model(),
        layout.adapter_out(name),
        layout.train_runs(),
        layout.lora_metrics(name),
        curve=layout.curve(f"lora-{name}"),
    )


@runner("merge")
def _merge(params: Params, name: str) -> Any:
    from pipeline.vlm import stages as vlm_stages

    return vlm_stages.merge_stage(
        params, name, layout.base_model(), layout.adapters_root(), layout.merged_out(name), layout.merge_metrics(name)
    )


@runner("evaluate")
def _evaluate(params: Params, _: str) -> Any:
    from pipeline.evaluate.vlm_stage import evaluate_vlm

    return evaluate_vlm(
        params,
        layout.base_model(),
        layout.adapters_root(),
        layout.merged_root(),
        layout.eval_metrics_dir(),
        layout.evaluation_table(),
        layout.invalid_answers_dir(),
    )


@runner("register")
def _register(params: Params, _: str) -> Any:
    from pipeline.registry import register_merged

    return register_merged(params, layout.evaluation_table(), layout.merged_root(), layout.registry_out())


def _pose_train_runner(which: str, model: str) -> Runner:
    def run(params: Params, _: str) -> Any:
        from pipeline import stages

        return stages.pose_train_stage(
            params,
            which,
            layout.pose_model(model),
            layout.train_runs(),
            original=None if which == "original" else layout.pose_model("original"),
            metrics=layout.pose_train_metrics(which),
            curve=layout.curve(f"pose-{which}"),
        )

    return run


for _kind, (_which, _model) in POSE_TRAIN_STAGES.items():
    runner(_kind)(_pose_train_runner(_which, _model))


@runner("pose_evaluate")
def _pose_evaluate(params: Params, _: str) -> Any:
    from pipeline import stages

    return stages.pose_evaluate_stage(
        params, layout.pose_models_root(), layout.pose_metrics_dir(), layout.pose_predictions()
    )


@runner("pose_register")
def _pose_register(params: Params, _: str) -> Any:
    from pipeline import stages

    return stages.pose_register_stage(
        params, layout.pose_metrics_dir(), layout.pose_model("vlpose"), layout.pose_registry_out()
    )


@runner("report")
def _report(params: Params, _: str) -> Any:
    from pipeline.report import report_stage

    return report_stage(params)
