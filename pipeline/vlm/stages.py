"""VLM stages: ``pretrain_base`` (a base VLM that grounds) and ``train_lora`` (one adapter).

Both train through the one loop (:func:`pipeline.train.ray_deepspeed.train`) with a
:class:`~pipeline.vlm.task.VLMTask`, then score grounding (and head pose for adapters) on
held-out 300W-LP frames so that forgetting is visible as soon as an adapter exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import layout
from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.config import Params
from pipeline.ingest import read_records
from pipeline.tracking import loop_tracking, write_curve
from pipeline.train.run_names import run_name
from pipeline.vlm.task import VLMTask, row_fraction

LINK_FILE = "checkpoint.json"  # models/base/checkpoint.json when params name a real VLM


def grounding_rows(params: Params, parquet_root: Path = layout.PARQUET) -> tuple[pa.Table, pa.Table]:
    """Training frames and held-out frames for the VLM: a fixed hash split by picture (flip
    twins on the same side), the same split the CNN baseline's in-domain score uses."""
    from pipeline.evaluate.yardsticks import split_heldout

    tables = [read_records(parquet_root / name, "train") for name in params.vlm.grounding_data]
    return split_heldout(pa.concat_tables(tables), params.seed, params.vlm.heldout_fraction)


def heldout_crops(params: Params, heldout: pa.Table, n: int) -> pa.Table:
    """The first ``n`` held-out frames, each cut by a crop window fixed by ``(seed, source_id)``.

    Grounding is scored on these: heads sit alike in a dataset's whole frames, so the average
    box would score well there and hide a model that ignores the image.
    """
    import numpy as np

    from pipeline.vlm.examples import crop_row, random_window

    scale = params.vlm.crop_min_scale or 0.6
    rows = []
    for r in heldout.slice(0, n).to_pylist():
        rng = np.random.default_rng(int(row_fraction(params.seed, str(r["source_id"]), "heldout-crop") * 2**63))
        rows.append(crop_row(r, random_window(r["head_box"], r["frame_width"], r["frame_height"], rng, scale)))
    return pa.Table.from_pylist(rows, schema=heldout.schema)


def resolve_base(base_dir: Path) -> Path:
    """The folder holding the base VLM: ``base_dir`` itself, or what its link file names."""
    link = Path(base_dir) / LINK_FILE
    if link.is_file():
        return Path(json.loads(link.read_text())["path"])
    return Path(base_dir)


def _data_digest(params: Params, parquet_root: Path) -> list[str]:
    from pipeline.lineage import dvc_md5

    return [dvc_md5(parquet_root / n) for n in params.vlm.grounding_data]


def _train_config(section: dict[str, Any], **override: Any) -> Any:
    from pipeline.train.config import TrainConfig

    return TrainConfig.model_validate({**section, **{k: v for k, v in override.items() if v is not None}})


def _heldout_eval(
    params: Params,
    model_dir: Path,
    adapter_dir: Path | None,
    heldout: pa.Table,
    with_headpose: bool,
    train_rows: pa.Table,
) -> dict[str, Any]:
    from pipeline.evaluate.vlm_answers import evaluate_grounding, evaluate_headpose, mean_relative_box
    from pipeline.vlm.families import get_family

    family = get_family(params.vlm.family)
    model, processor = family.load(model_dir, trust_remote_code=params.vlm.trust_remote_code)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    rows = heldout.slice(0, params.vlm.eval_rows).to_pylist()
    crops = heldout_crops(params, heldout, params.vlm.eval_rows).to_pylist()
    constant = mean_relative_box(train_rows.select(["head_box", "frame_width", "frame_height"]).to_pylist())
    out: dict[str, Any] = {
        "grounding": evaluate_grounding(
            model, processor, family, crops, constant_box=constant, batch_size=params.vlm.eval_batch_size
        )
    }
    if with_headpose:
        out["headpose"] = evaluate_headpose(model, processor, family, rows, batch_size=params.vlm.eval_batch_size)
    return out


def _log_eval(run_id: str | None, params: Params, metrics: dict[str, Any]) -> None:
    if not (params.tracking.enabled and run_id):
        return
    import mlflow

    mlflow.set_tracking_uri(params.tracking.resolved_uri())
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {f"heldout/{task}/{k}": float(v) for task, m in metrics.items() for k, v in m.items() if v is not None}
        )


def pretrain_base(
    params: Params,
    out: str | Path,
    runs: str | Path,
    metrics: str | Path | None = None,
    parquet_root: Path = layout.PARQUET,
    curve: str | Path | None = None,
) -> dict[str, Any]:
    """Train the tiny VLM on grounding from scratch (or validate and link a real checkpoint).

    Args:
        params: validated params.
        out: the base model folder (``save_pretrained``; replaced atomically).
        runs: run folder of the training loop (checkpoints: a killed run resumes from here).
        metrics: where to write the held-out grounding metrics (DVC metrics).
        curve: where to write the training curve (loss, lr per step; DVC plots).

    Returns:
        Summary: training figures and held-out grounding accuracy.
    """
    out = Path(out)
    if params.vlm.checkpoint is not None:
        from pipeline.vlm.families import get_family

        family = get_family(params.vlm.family)
        family.load(params.vlm.checkpoint, trust_remote_code=params.vlm.trust_remote_code)  # validates
        with atomic_dir(out) as tmp:
            write_json_atomic(
                tmp / LINK_FILE, {"path": str(Path(params.vlm.checkpoint).resolve()), "family": params.vlm.family}
            )
        summary: dict[str, Any] = {"linked": str(params.vlm.checkpoint)}
    else:
        from pipeline.train.ray_deepspeed import train

        train_rows, _ = grounding_rows(params, parquet_root)
        task = VLMTask(
            family=params.vlm.family,
            tiny=params.vlm.tiny,
            rehearsal=1.0,
            seed=params.seed,
            crop_min_scale=params.vlm.crop_min_scale,
            torch_threads=params.vlm.torch_threads,
            headpose_jitter=params.vlm.headpose_jitter,
            headpose_zoom=params.vlm.headpose_zoom,
            headpose_augment=params.vlm.headpose_augment,
            number_sigma=params.vlm.number_sigma,
            facepoints=params.pretrain_base.facepoints,
        )
        cfg = _train_config(params.pretrain_base.train)
        name = run_name(
            "pretrain_base",
            cfg.model_dump(),
            params.vlm.model_dump(mode="json"),
            params.pretrain_base.facepoints,
            params.seed,
            _data_digest(params, parquet_root),
        )
        result = train(
            task,
            train_rows,
            cfg,
            Path(runs),
            run_name=name,
            tracking=loop_tracking(
                params.tracking, "pretrain_base", [(n, parquet_root / n) for n in params.vlm.grounding_data]
            ),
        )
        with atomic_dir(out) as tmp:
            shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
        summary = {
            "steps": result.steps,
            "final_loss": result.final_loss,
            "samples_per_s": result.samples_per_s,
            "mlflow_run_id": result.mlflow_run_id,
            "resumed_from_step": result.resumed_from_step,
        }
    train_rows, heldout = grounding_rows(params, parquet_root)
    evals = _heldout_eval(params, resolve_base(out), None, heldout, with_headpose=False, train_rows=train_rows)
    _log_eval(summary.get("mlflow_run_id"), params, evals)
    summary["heldout"] = evals
    if curve is not None:
        write_curve(params.tracking.resolved_uri(), summary.get("mlflow_run_id"), Path(curve))
    if metrics is not None:
        write_json_atomic(
            metrics, {"heldout": evals, **({"final_loss": summary["final_loss"]} if "final_loss" in summary else {})}
        )
    return summary


def train_lora(
    params: Params,
    name: str,
    base: str | Path,
    out: str | Path,
    runs: str | Path,
    metrics: str | Path | None = None,
    parquet_root: Path = layout.PARQUET,
    curve: str | Path | None = None,
) -> dict[str, Any]:
    """Train LoRA adapter ``name`` (params ``lora.adapters.<name>``) on the base VLM.

    Head-pose questions on 300W-LP frames, mixed with grounding questions at the adapter's
    rehearsal ratio; the adapter is saved with PEFT's ``save_pretrained`` (loadable with
    ``PeftModel.from_pretrained``).
    """
    from pipeline.train.ray_deepspeed import train

    try:
        adapter = params.lora.adapters[name]
    except KeyError:
        raise KeyError(
            f"lora.adapters.{name} is not configured; configured: {', '.join(sorted(params.lora.adapters))}"
        ) from None
    base_dir = resolve_base(Path(base)).resolve()  # Ray Train workers run in another cwd
    lora = {
        "r": params.lora.r,
        "lora_alpha": params.lora.lora_alpha,
        "lora_dropout": params.lora.lora_dropout,
        "target_modules": params.lora.target_modules,
    }
    task = VLMTask(
        family=params.vlm.family,
        model_dir=str(base_dir),
        lora=lora,
        rehearsal=adapter.rehearsal,
        seed=params.seed,
        trust_remote_code=params.vlm.trust_remote_code,
        crop_min_scale=params.vlm.crop_min_scale,
        torch_threads=params.vlm.torch_threads,
        headpose_jitter=params.vlm.headpose_jitter,
        headpose_zoom=params.vlm.headpose_zoom,
        headpose_augment=params.vlm.headpose_augment,
        number_sigma=params.vlm.number_sigma,
    )
    train_rows, heldout = grounding_rows(params, parquet_root)
    cfg = _train_config(params.lora.train, steps=adapter.steps)
    from pipeline.lineage import dvc_md5

    rname = run_name(
        f"lora-{name}",
        cfg.model_dump(),
        lora,
        adapter.model_dump(),
        # the question mix and loss of the adapter's examples (headpose_jitter, number_sigma…)
        params.vlm.model_dump(mode="json"),
        params.seed,
        _data_digest(params, parquet_root),
        dvc_md5(base_dir),
    )
    result = train(
        task,
        train_rows,
        cfg,
        Path(runs),
        run_name=rname,
        tracking=loop_tracking(
            params.tracking, f"train_lora@{name}", [(n, parquet_root / n) for n in params.vlm.grounding_data]
        ),
    )
    out = Path(out)
    with atomic_dir(out) as tmp:
        shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
    evals = _heldout_eval(params, base_dir, out, heldout, with_headpose=True, train_rows=train_rows)
    _log_eval(result.mlflow_run_id, params, evals)
    summary = {
        "adapter": name,
        "rehearsal": adapter.rehearsal,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "samples_per_s": result.samples_per_s,
        "mlflow_run_id": result.mlflow_run_id,
        "heldout": evals,
    }
    if curve is not None:
        write_curve(params.tracking.resolved_uri(), result.mlflow_run_id, Path(curve))
    if metrics is not None:
        write_json_atomic(
            metrics,
            {"adapter": name, "rehearsal": adapter.rehearsal, "final_loss": result.final_loss, "heldout": evals},
        )
    return summary


def merge_stage(
    params: Params,
    method: str,
    base: str | Path,
    adapters_root: str | Path,
    out: str | Path,
    metrics: str | Path | None = None,
) -> dict[str, Any]:
    """Merge the adapters ``merge.inputs`` into the base VLM by ``method`` (CPU, outside DeepSpeed).

    ``merge.methods.<method>`` holds the method's parameters (``granularity`` among them); the
    merged model is a full ``save_pretrained`` folder with ``merge_decisions.json`` beside it,
    and the decisions are logged to MLflow.
    """
    from pipeline.merging import DECISIONS_FILE, write_merged_model

    if method not in params.merge.methods:
        raise KeyError(
            f"merge.methods.{method} is not configured; configured: {', '.join(sorted(params.merge.methods))}"
        )
    settings = dict(params.merge.methods[method])
    granularity = settings.pop("granularity", "module")
    base_dir = resolve_base(Path(base)).resolve()
    adapters = [Path(adapters_root) / name for name in params.merge.inputs]
    decisions = write_merged_model(
        base_dir,
        adapters,
        params.merge.weights,
        out,
        method=method,
        family=params.vlm.family,
        granularity=granularity,
        params=settings,
        trust_remote_code=params.vlm.trust_remote_code,
    )
    winners = [d.winner for d in decisions if d.action == "winner"]
    summary: dict[str, Any] = {
        "method": method,
        "granularity": granularity,
        "params": settings,
        "inputs": params.merge.inputs,
        "weights": params.merge.weights,
        "groups": len(decisions),
        "combined": sum(d.action == "combine" for d in decisions),
        "won_by": {name: winners.count(i) for i, name in enumerate(params.merge.inputs)},
    }
    if params.tracking.enabled:
        import mlflow

        from pipeline.tracking import mlflow_run

        with mlflow_run(params.tracking, f"merge-{method}", tags={"stage": "merge", "method": method}) as run:
            mlflow.log_params(
                {
                    "method": method,
                    "granularity": granularity,
                    "inputs": ",".join(params.merge.inputs),
                    "weights": ",".join(map(str, params.merge.weights)),
                    **{f"param.{k}": v for k, v in settings.items()},
                }
            )
            mlflow.log_metrics(
                {
                    "groups": summary["groups"],
                    "combined": summary["combined"],
                    **{f"won_by.{k}": v for k, v in summary["won_by"].items()},
                }
            )
            mlflow.log_artifact(str(Path(out) / DECISIONS_FILE))
            summary["mlflow_run_id"] = run.info.run_id
    if metrics is not None:
        write_json_atomic(metrics, {k: v for k, v in summary.items() if k != "mlflow_run_id"})
    return summary
