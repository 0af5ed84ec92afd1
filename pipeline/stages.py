"""Stage functions: the one implementation that the CLI (and so DVC), Prefect and tests call.

Each stage takes the validated :class:`~pipeline.config.Params` and explicit paths, writes
its outputs atomically, and returns a small JSON-able summary.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.config import Params

__all__ = [
    "synth",
    "ground_truth",
    "ingest_stage",
    "baseline_stage",
    "pose_train_stage",
    "pose_evaluate_stage",
    "pose_register_stage",
    "resolve_dataset_name",
    "write_json_atomic",
]


def synth(params: Params, name: str, out: str | Path) -> dict:
    """Write the synthetic dataset ``name`` into ``out`` (replaced atomically).

    Returns:
        The writer's counts.
    """
    from pipeline.datasets import get_writer

    writer = get_writer(name)
    settings = params.synthetic.get(name).model_dump()
    with atomic_dir(out) as tmp:
        counts = writer.write(tmp, seed=params.seed, **settings)
    return {"dataset": name, "out": str(out), **({"counts": counts} if counts is not None else {})}


def ground_truth(params: Params, name: str, raw_root: str | Path, out: str | Path) -> dict:
    """COCO-format evaluation ground truth of keypoint dataset ``name`` (whole split, per
    domain, per scene), written into ``out`` (replaced atomically).

    Returns:
        ``{"dataset", "out", "files": {key: path}}``.
    """
    import importlib

    from pipeline.datasets import get_dataset
    from pipeline.evaluate.coco_gt import write_ground_truth

    spec = get_dataset(name)
    if spec.kind != "keypoints":
        raise ValueError(f"{name} is a {spec.kind} dataset; COCO ground truth exists for keypoint datasets only")
    annotation_json, images_root_rel, strip_prefix = importlib.import_module(spec.module).ground_truth_source(
        Path(raw_root)
    )
    out = Path(out)
    with atomic_dir(out) as tmp:
        files = write_ground_truth(annotation_json, images_root_rel, tmp, name, strip_prefix=strip_prefix)
    return {"dataset": name, "out": str(out), "files": {k: str(out / p.name) for k, p in files.items()}}


def resolve_dataset_name(name: str, raw_root: str | Path) -> str:
    """Map the CLI alias ``biwi`` to ``biwi_hpdb`` or ``biwi_npz`` by what ``raw_root`` holds."""
    if name != "biwi":
        return name
    root = Path(raw_root)
    if root.suffix == ".npz" or (root / "BIWI_noTrack.npz").is_file() and not (root / "hpdb").is_dir():
        return "biwi_npz"
    return "biwi_hpdb"


def ingest_stage(
    params: Params,
    name: str,
    raw_root: str | Path,
    out: str | Path,
    metrics: str | Path | None = None,
    engine: str = "ray",
) -> dict:
    """Ingest dataset ``name`` from ``raw_root`` into Parquet at ``out``; track it in MLflow.

    Returns:
        The ingest summary plus the DVC hash of ``out`` and the MLflow run id.
    """
    from pipeline.datasets import get_dataset
    from pipeline.ingest import ingest, record_kind
    from pipeline.lineage import dvc_md5

    name = resolve_dataset_name(name, raw_root)
    spec = get_dataset(name)
    ds_cfg = params.ingest.datasets.get(name)
    crop_margin = ds_cfg.crop_margin if ds_cfg is not None else (0.2, 0.2)
    settings = params.ingest.model_dump(exclude={"datasets"})
    summary = ingest(
        name, raw_root, out, seed=params.seed, crop_margin=crop_margin, settings=settings, engine=engine
    ).to_dict()
    summary["dvc_md5"] = dvc_md5(out)
    if params.tracking.enabled:
        import mlflow

        from pipeline.tracking import log_parquet_dataset, mlflow_run

        with mlflow_run(params.tracking, f"ingest-{name}", tags={"stage": "ingest", "dataset": name}) as run:
            mlflow.log_params(
                {
                    "dataset": name,
                    "raw_root": str(raw_root),
                    "seed": params.seed,
                    "crop_margin": list(crop_margin),
                    **settings,
                }
            )
            mlflow.log_metrics(
                {
                    k: float(summary[k])
                    for k in ("counts_in", "kept", "filtered", "quarantined", "bad_fraction", "seconds")
                }
            )
            log_parquet_dataset(name, Path(out), record_kind(spec.kind).SCHEMA, summary["dvc_md5"], "ingest")
            mlflow.log_dict(summary, "ingest_summary.json")
            summary["mlflow_run_id"] = run.info.run_id
    if metrics is not None:
        # Only deterministic figures go to the DVC metrics file (same params ⇒ same metrics).
        keys = (
            "dataset",
            "counts_in",
            "kept",
            "filtered",
            "quarantined",
            "kept_by_split",
            "quarantine_reasons",
            "filter_reasons",
            "bad_fraction",
            "dvc_md5",
        )
        write_json_atomic(metrics, {k: summary[k] for k in keys})
    return summary


def baseline_stage(
    params: Params,
    out: str | Path,
    runs: str | Path,
    metrics: str | Path,
    parquet_root: Path | None = None,
    curve: str | Path | None = None,
) -> dict:
    """Train the CNN baseline (params ``baseline``) on 300W-LP face crops through the one loop and
    score it on the same test sets as the VLM candidates (``evaluate.headpose_sets``)."""
    from pipeline import layout
    from pipeline.baselines import train_baseline
    from pipeline.evaluate.vlm_stage import scored_sets
    from pipeline.evaluate.yardsticks import chance_scores, split_heldout
    from pipeline.ingest import read_records
    from pipeline.tracking import loop_tracking, write_curve

    root = Path(parquet_root) if parquet_root is not None else layout.PARQUET
    # The VLMs' held-out split: both kinds of model are scored in-domain on the same pictures.
    train_rows, heldout = split_heldout(
        read_records(root / "300w_lp", "train"), params.seed, params.vlm.heldout_fraction
    )
    tests = scored_sets(params, heldout, root)
    tracking = loop_tracking(params.tracking, "baseline", [("300w_lp", root / "300w_lp")])
    summary = train_baseline(
        params.baseline, train_rows, tests, out, runs, metrics, tracking, chance=chance_scores(train_rows, tests)
    )
    if curve is not None:
        write_curve(tracking and tracking["tracking_uri"], summary["mlflow_run_id"], Path(curve))
    return summary


# ---------------------------------------------------------------- VLPose (pipeline/pose2d)
def _pose_crop(params: Params):
    from pipeline.pose2d.predict import CropSpec

    # Detected boxes must be cut exactly as the ingestion cut the ground-truth ones.
    return CropSpec.from_ingest(params.ingest.model_dump())


def pose_train_stage(
    params: Params,
    which: str,
    out: str | Path,
    runs: str | Path,
    *,
    original: str | Path | None = None,
    metrics: str | Path | None = None,
    curve: str | Path | None = None,
) -> dict:
    """``original`` (ViTPose on COCO), ``finetune`` or ``vlpose`` (both on COCO + HumanArt from
    the original): one training of :mod:`pipeline.pose2d.stages` with ``params.pose``."""
    from pipeline import layout
    from pipeline.pose2d.stages import pose_tracking, train_stage

    tracking = pose_tracking(params.tracking, which, layout.PARQUET)
    return train_stage(
        which, params.pose, tracking, out, runs, layout.PARQUET, original=original, curve=curve, metrics=metrics
    )


def pose_evaluate_stage(
    params: Params, models_root: str | Path, metrics_dir: str | Path, predictions: str | Path
) -> dict:
    """COCO keypoint AP of the original, fine-tuned and VLPose models per domain and scene."""
    from pipeline import layout
    from pipeline.pose2d.stages import POSE_MODELS, evaluate_pose

    raw_roots = {d: params.ingest.datasets[d].raw_root for d in ("coco", "humanart") if d in params.ingest.datasets}
    summary = evaluate_pose(
        params.pose,
        params.tracking,
        {m: Path(models_root) / m for m in POSE_MODELS},
        metrics_dir,
        predictions,
        layout.PARQUET,
        layout.GROUND_TRUTH,
        engine=params.evaluate.engine,
        workers=params.evaluate.workers,
        gpus_per_worker=params.evaluate.gpus_per_worker,
        raw_roots=raw_roots,
        crop=_pose_crop(params),
    )
    summary["chance"] = _mean_pose_yardstick(Path(metrics_dir))
    return summary


def _mean_pose_yardstick(metrics_dir: Path) -> dict[str, float | None]:
    """Score the mean-pose predictor (trained on every keypoint training record) like the models:
    ``<metrics_dir>/mean_pose.json``; returns its AP per domain."""
    import pyarrow as pa

    from pipeline import layout
    from pipeline.atomic import write_json_atomic
    from pipeline.ingest import read_records
    from pipeline.pose2d.chance import MEAN_POSE, mean_pose_scores, metrics_document
    from pipeline.pose2d.config import DOMAINS
    from pipeline.pose2d.stages import ground_truth_files

    columns = ["image_id", "crop_box", "crop_jpeg", "keypoints_crop"]
    train = pa.concat_tables([read_records(layout.PARQUET / d, "train").select(columns) for d in DOMAINS])
    vals = {d: read_records(layout.PARQUET / d, "val").select(columns) for d in DOMAINS}
    gt = {d: ground_truth_files(layout.GROUND_TRUTH, d) for d in DOMAINS}
    doc = metrics_document(mean_pose_scores(train, vals, gt))
    write_json_atomic(Path(metrics_dir) / f"{MEAN_POSE}.json", doc)
    return {d: doc["domains"][d]["AP"] for d in DOMAINS}


def pose_register_stage(params: Params, metrics_dir: str | Path, vlpose: str | Path, out: str | Path) -> dict:
    """VLPose into the MLflow registry as a candidate; champion only through the gate."""
    from pipeline.pose2d.registry import register_vlpose

    return register_vlpose(params.pose, params.tracking, metrics_dir, vlpose, None, out, crop=_pose_crop(params))
