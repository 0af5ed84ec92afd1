"""The VLPose stages: train the original ViTPose, the fine-tuned ViTPose baseline and VLPose, then
score all three with COCO keypoint AP on COCO and HumanArt.

Issue: "VLPose: language-guided keypoint estimation on COCO and HumanArt, against fine-tuned
ViTPose" (VLPose: https://arxiv.org/abs/2402.14456). The DAG::

    data/parquet/coco ──train_original──▶ models/pose/original ──train_finetune──▶ models/pose/finetuned
                                              │        ▲ (COCO + HumanArt train)
                                              │        └─ or pose.checkpoint, validated and linked
                                              └─────────train_vlpose────▶ models/pose/vlpose
    {original, finetuned, vlpose} ──evaluate_pose──▶ metrics/pose/<model>.json, reports/pose_predictions/<model>/

Each stage is a plain function of the validated :class:`~pipeline.pose2d.config.PoseConfig` and
explicit paths; it writes its outputs atomically and returns a JSON-able summary. Training goes
through the one loop (:func:`pipeline.train.ray_deepspeed.train`) with the
:mod:`pipeline.pose2d.task` tasks; a killed stage resumes from its last checkpoint under
``runs`` (the run name hashes the config and the input data, so changed params start afresh).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import layout
from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.pose2d.config import DOMAINS, PoseConfig
from pipeline.train.run_names import run_name

__all__ = [
    "LINK_FILE",
    "POSE_MODELS",
    "TRAIN_STAGES",
    "resolve_model_dir",
    "pose_tracking",
    "ground_truth_files",
    "train_original",
    "train_finetune",
    "train_vlpose",
    "train_stage",
    "evaluate_pose",
]

LINK_FILE = "checkpoint.json"  # models/pose/original/checkpoint.json when pose.checkpoint names a folder
POSE_MODELS = ("original", "finetuned", "vlpose")
# Per super-category and per scene scores: HumanArt's protocol. COCO is one scene of real
# people, whose breakdown would repeat its total (and clash with HumanArt's ``real_human``).
BREAKDOWN_DOMAINS = ("humanart",)
REPORTED_STATS = ("AP", "AP50", "AP75", "AR")
# Training stage → its ``pose`` params section and the Parquet folders it reads (split "train").
TRAIN_SECTIONS = {"original": "train_original", "finetune": "finetune", "vlpose": "train_vlpose"}
STAGE_DATA = {"original": ("coco",), "finetune": DOMAINS, "vlpose": DOMAINS}


# ---------------------------------------------------------------- helpers
def resolve_model_dir(folder: str | Path) -> Path:
    """The folder holding a pose model: ``folder`` itself, or the one its link file names."""
    link = Path(folder) / LINK_FILE
    if link.is_file():
        return Path(json.loads(link.read_text())["path"])
    return Path(folder)


def pose_tracking(tracking_cfg: Any, stage: str, parquet_root: Path = layout.PARQUET) -> dict[str, Any] | None:
    """The loop's ``tracking`` argument for a training stage, naming the Parquet folders it reads.

    Args:
        tracking_cfg: the ``tracking`` params (:class:`~pipeline.config.TrackingConfig`).
        stage: ``original``, ``finetune`` or ``vlpose`` (a key of :data:`TRAIN_STAGES`); the
            MLflow run is tagged ``stage=pose_train_<stage>``.
        parquet_root: where the ingested datasets are.

    Returns:
        ``None`` when tracking is off (see :func:`pipeline.tracking.loop_tracking`).
    """
    from pipeline.tracking import loop_tracking

    if stage not in STAGE_DATA:
        raise KeyError(f"unknown pose training stage {stage!r}; valid: {', '.join(STAGE_DATA)}")
    datasets = [(d, Path(parquet_root) / d) for d in STAGE_DATA[stage]]
    return loop_tracking(tracking_cfg, f"pose_train_{stage}", datasets)


def _train_folders(stage: str, parquet_root: Path) -> list[Path]:
    folders = [Path(parquet_root) / d / "train" for d in STAGE_DATA[stage]]
    for f in folders:
        if not f.is_dir():
            raise FileNotFoundError(f"{f}: no ingested training split (run the ingest stage for {f.parent.name})")
    return folders


def _fit(
    stage: str,
    task: Any,
    cfg: PoseConfig,
    tracking: Mapping[str, Any] | None,
    out: Path,
    runs: Path,
    parquet_root: Path,
    curve: Path | None,
    metrics: Path | None,
    identity: list[Any],
) -> dict[str, Any]:
    """Train ``task`` through the one loop, copy the model into ``out``, write curve and metrics."""
    from pipeline.lineage import dvc_md5
    from pipeline.tracking import write_curve
    from pipeline.train.ray_deepspeed import train

    train_cfg = cfg.train_config(TRAIN_SECTIONS[stage])
    folders = _train_folders(stage, parquet_root)
    name = run_name(f"pose-{stage}", train_cfg.model_dump(mode="json"), identity, [dvc_md5(f) for f in folders])
    result = train(task, folders, train_cfg, Path(runs) / f"pose-{stage}", run_name=name, tracking=tracking)
    with atomic_dir(out) as tmp:
        shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
    task_metrics = {k: v for k, v in result.metrics.items() if k.endswith("keypoint_error_px")}
    if curve is not None:
        write_curve(tracking and tracking.get("tracking_uri"), result.mlflow_run_id, Path(curve))
    if metrics is not None:
        # Deterministic figures only (same params + seed ⇒ same file); timings go to the summary.
        write_json_atomic(
            metrics, {"stage": stage, "steps": result.steps, "final_loss": result.final_loss, **task_metrics}
        )
    return {
        "stage": stage,
        "out": str(out),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "samples_per_s": result.samples_per_s,
        "wall_seconds": result.wall_seconds,
        "startup_seconds": result.startup_seconds,
        "resumed_from_step": result.resumed_from_step,
        "mlflow_run_id": result.mlflow_run_id,
        **task_metrics,
    }


def _original_dir(original: str | Path) -> str:
    """The original ViTPose's folder as an absolute path (Ray workers run in another cwd)."""
    folder = resolve_model_dir(original).resolve()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a ViTPose model folder (no config.json); run train_original first")
    return str(folder)


# ---------------------------------------------------------------- training stages
def train_original(
    cfg: PoseConfig,
    tracking: Mapping[str, Any] | None,
    out: str | Path,
    runs: str | Path,
    parquet_root: str | Path = layout.PARQUET,
    curve: str | Path | None = None,
    metrics: str | Path | None = None,
) -> dict[str, Any]:
    """The original ViTPose: trained from scratch on COCO train, or the user's checkpoint linked.

    With ``cfg.checkpoint`` set, the folder is loaded once (config, safetensors weights, 17
    keypoints, a head VLPose can twin) and ``out`` only holds ``checkpoint.json`` naming it
    (:func:`resolve_model_dir` follows the link), so a multi-GB checkpoint is not copied.

    Args:
        cfg: the ``pose`` params.
        tracking: the loop's MLflow settings (:func:`pose_tracking`); ``None``: no MLflow.
        out: the model folder (replaced atomically).
        runs: scratch folder of the training loop (checkpoints: a killed run resumes).
        parquet_root: folder of the ingested datasets (reads ``coco/train``).
        curve: where to write the training curve (loss, lr per step; DVC plots).
        metrics: where to write the final loss and keypoint error (DVC metrics).

    Returns:
        The training summary (steps, final loss, throughput, MLflow run id) or
        ``{"stage", "out", "linked", "size"}`` for a linked checkpoint.

    Raises:
        FileNotFoundError: no COCO training split, or the checkpoint is not a model folder.
        ValueError: the checkpoint is not a 17-keypoint ViTPose with a supported head.
    """
    out = Path(out)
    if cfg.checkpoint is not None:
        return _link_checkpoint(cfg.checkpoint, out, curve, metrics)
    from pipeline.pose2d.task import ViTPoseTask

    task = ViTPoseTask(size=dict(cfg.size), sigma=cfg.sigma, flip_prob=cfg.flip_prob, seed=cfg.seed)
    identity = [dict(cfg.size), cfg.sigma, cfg.flip_prob, cfg.seed]
    return _fit(
        "original", task, cfg, tracking, out, Path(runs), Path(parquet_root), _opt(curve), _opt(metrics), identity
    )


def _opt(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path)


def _link_checkpoint(checkpoint: Path, out: Path, curve: str | Path | None, metrics: str | Path | None) -> dict:
    from pipeline.keypoints import NUM_COCO_KEYPOINTS
    from pipeline.pose2d.artifacts import load_pose_model
    from pipeline.pose2d.vitpose import decoder_stages, size_of

    folder = Path(checkpoint).resolve()
    estimator = load_pose_model(folder)  # config + weights: fails here, not three stages later
    if estimator.kind != "vitpose":
        raise ValueError(f"pose.checkpoint {folder}: a {estimator.kind} model; the original must be a ViTPose")
    if estimator.vitpose.config.num_labels != NUM_COCO_KEYPOINTS:
        raise ValueError(
            f"pose.checkpoint {folder}: {estimator.vitpose.config.num_labels} keypoints, expected {NUM_COCO_KEYPOINTS}"
        )
    try:
        decoder_stages(estimator.vitpose.head)
    except TypeError as e:
        raise ValueError(f"pose.checkpoint {folder}: {e}") from None
    size = size_of(estimator.vitpose)
    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / LINK_FILE, {"path": str(folder), "size": size})
    if curve is not None:
        write_json_atomic(curve, [])
    if metrics is not None:
        write_json_atomic(metrics, {"stage": "original", "linked": str(folder)})
    return {"stage": "original", "out": str(out), "linked": str(folder), "size": size}


def train_finetune(
    cfg: PoseConfig,
    tracking: Mapping[str, Any] | None,
    original: str | Path,
    out: str | Path,
    runs: str | Path,
    parquet_root: str | Path = layout.PARQUET,
    curve: str | Path | None = None,
    metrics: str | Path | None = None,
) -> dict[str, Any]:
    """The fine-tuned ViTPose baseline: the original trained further on COCO + HumanArt train.

    Every weight trains (``cfg.finetune_backbone``; ``false``: the head only), with the same
    data, σ and augmentation as VLPose: the paper's "ViTPose fine-tuned on the same data".

    Args:
        original: the original ViTPose folder (output of :func:`train_original`, or its link).
        Others as :func:`train_original` (reads ``coco/train`` and ``humanart/train``).
    """
    from pipeline.lineage import dvc_md5
    from pipeline.pose2d.task import ViTPoseTask

    base = _original_dir(original)
    task = ViTPoseTask(
        model_dir=base, train_backbone=cfg.finetune_backbone, sigma=cfg.sigma, flip_prob=cfg.flip_prob, seed=cfg.seed
    )
    identity = [cfg.finetune_backbone, cfg.sigma, cfg.flip_prob, dvc_md5(base)]
    return _fit(
        "finetune", task, cfg, tracking, Path(out), Path(runs), Path(parquet_root), _opt(curve), _opt(metrics), identity
    )


def train_vlpose(
    cfg: PoseConfig,
    tracking: Mapping[str, Any] | None,
    original: str | Path,
    out: str | Path,
    runs: str | Path,
    parquet_root: str | Path = layout.PARQUET,
    curve: str | Path | None = None,
    metrics: str | Path | None = None,
) -> dict[str, Any]:
    """VLPose on the frozen original: matcher, twin decoder and injectors trained on COCO + HumanArt.

    The saved folder carries the original unchanged (``original/``) and the prompt embeddings,
    so prediction needs no text encoder for the known scenes.

    Args:
        original: the original ViTPose folder (output of :func:`train_original`, or its link).
        Others as :func:`train_original` (reads ``coco/train`` and ``humanart/train``).
    """
    from pipeline.lineage import dvc_md5
    from pipeline.pose2d.task import VLPoseTask

    base = _original_dir(original)
    encoder = None if cfg.text_encoder_dir is None else str(Path(cfg.text_encoder_dir).resolve())
    task = VLPoseTask(
        base_dir=base,
        vlpose=dict(cfg.vlpose),
        prompts=dict(cfg.prompts),
        text_encoder_dir=encoder,
        sigma=cfg.sigma,
        flip_prob=cfg.flip_prob,
        seed=cfg.seed,
    )
    identity = [dict(cfg.vlpose), dict(cfg.prompts), encoder, cfg.sigma, cfg.flip_prob, cfg.seed, dvc_md5(base)]
    return _fit(
        "vlpose",
        task,
        cfg,
        tracking,
        Path(out),
        Path(runs),
        Path(parquet_root),
        _opt(curve),
        _opt(metrics),
        identity,
    )


TRAIN_STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "original": train_original,
    "finetune": train_finetune,
    "vlpose": train_vlpose,
}


def train_stage(
    name: str,
    cfg: PoseConfig,
    tracking: Mapping[str, Any] | None,
    out: str | Path,
    runs: str | Path,
    parquet_root: str | Path = layout.PARQUET,
    original: str | Path | None = None,
    curve: str | Path | None = None,
    metrics: str | Path | None = None,
) -> dict[str, Any]:
    """Run training stage ``name`` (a key of :data:`TRAIN_STAGES`): the CLI's ``hpe pose-train <name>``.

    Args:
        original: the original ViTPose folder (``finetune`` and ``vlpose`` only).
        Others as :func:`train_original`.

    Raises:
        KeyError: an unknown stage, listing the valid ones.
        ValueError: ``finetune``/``vlpose`` without ``original``.
    """
    if name not in TRAIN_STAGES:
        raise KeyError(f"unknown pose training stage {name!r}; valid: {', '.join(TRAIN_STAGES)}")
    if name == "original":
        return train_original(cfg, tracking, out, runs, parquet_root, curve, metrics)
    if original is None:
        raise ValueError(f"pose training stage {name!r} trains on the original ViTPose: pass its folder")
    return TRAIN_STAGES[name](cfg, tracking, original, out, runs, parquet_root, curve, metrics)


# ---------------------------------------------------------------- evaluation
def ground_truth_files(gt_root: str | Path, domain: str) -> dict[str, Path]:
    """The COCO ground-truth files of one domain, as written by the ``ground_truth`` stage.

    Returns:
        ``{"all": <gt_root>/<domain>/<domain>_all.json, "domain/<super>": …, "scene/<scene>": …}``
        (the names :func:`pipeline.evaluate.coco_gt.write_ground_truth` gives them).

    Raises:
        FileNotFoundError: no ``<domain>_all.json``.
    """
    folder = Path(gt_root) / domain
    files = {"all": folder / f"{domain}_all.json"}
    if not files["all"].is_file():
        raise FileNotFoundError(f"{files['all']}: no ground truth for {domain} (run the ground_truth stage)")
    for kind in ("domain", "scene"):
        prefix = f"{domain}_{kind}_"
        for path in sorted(folder.glob(f"{prefix}*.json")):
            files[f"{kind}/{path.stem.removeprefix(prefix)}"] = path
    return files


def _stats(scores: Mapping[str, float]) -> dict[str, float | None]:
    # COCOeval reports -1 where the ground truth has no person to score: no number, not a zero.
    return {k: (None if scores[k] < 0 else float(scores[k])) for k in REPORTED_STATS}


def _metrics_doc(per_domain: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """``{"domains": {domain | super-category: stats}, "scenes": {scene: stats}}`` from
    :func:`~pipeline.pose2d.predict.keypoint_ap` results per domain."""
    domains: dict[str, Any] = {}
    scenes: dict[str, Any] = {}
    for domain, scores in per_domain.items():
        domains[domain] = _stats(scores["all"])
        if domain not in BREAKDOWN_DOMAINS:
            continue
        for key, value in scores.items():
            kind, _, name = key.partition("/")
            if kind == "domain":
                domains[name] = _stats(value)
            elif kind == "scene":
                scenes[name] = _stats(value)
    return {"domains": domains, "scenes": scenes}


def _detection_table(
    domain: str, detections: Path, gt_all: Path, raw_root: Path, min_score: float, crop: Any
) -> tuple[pa.Table, list[float]]:
    """Records (:data:`~pipeline.pose2d.predict.PREDICT_COLUMNS`) cut around detected boxes, and the
    box scores: each image read from ``raw_root`` by its ground-truth ``file_name``."""
    from pipeline.imaging import decode_jpeg
    from pipeline.pose2d.predict import crop_records

    try:
        dets = json.loads(Path(detections).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"pose.detections.{domain}: {detections}: cannot read COCO results ({e})") from None
    if not isinstance(dets, list):
        raise ValueError(f"pose.detections.{domain}: {detections}: expected a list of COCO results")
    images = {im["id"]: im for im in json.loads(Path(gt_all).read_text())["images"]}
    boxes: dict[int, list[tuple[list[float], float]]] = {}
    for i, d in enumerate(dets):
        try:
            image_id, bbox, score = int(d["image_id"]), [float(v) for v in d["bbox"]], float(d.get("score", 1.0))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{detections}[{i}]: needs image_id, bbox [x, y, w, h] and score") from None
        if int(d.get("category_id", 1)) != 1 or score < min_score:
            continue
        if image_id not in images:
            raise ValueError(f"{detections}[{i}]: field 'image_id' {image_id} is not in {gt_all}")
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            raise ValueError(f"{detections}[{i}]: field 'bbox' must be [x, y, w, h] with w, h > 0, got {d['bbox']}")
        boxes.setdefault(image_id, []).append((bbox, score))
    rows, box_scores = [], []
    for image_id in sorted(boxes):
        im = images[image_id]
        path = Path(raw_root) / im["file_name"]
        try:
            image = decode_jpeg(path.read_bytes())
        except OSError as e:
            raise FileNotFoundError(f"{path}: image {image_id} of {gt_all} cannot be read ({e})") from None
        found = boxes[image_id]
        rows += crop_records(
            image,
            [b for b, _ in found],
            image_id=image_id,
            scene=im.get("scene", "photo"),
            super_category=im.get("super_category"),
            spec=crop,
        )
        box_scores += [s for _, s in found]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("image_id", pa.int64()),
                ("crop_box", pa.list_(pa.float32(), 4)),
                ("crop_jpeg", pa.binary()),
                ("scene", pa.string()),
                ("super_category", pa.string()),
            ]
        ),
    )
    return table, box_scores


def _log_evaluation(tracking_cfg: Any, name: str, doc: dict[str, Any]) -> str | None:
    if tracking_cfg is None or not tracking_cfg.enabled:
        return None
    import mlflow

    from pipeline.tracking import mlflow_run

    flat = {}
    for prefix, block in (("", doc), ("detected/", doc.get("detected") or {})):
        for group in ("domains", "scenes"):
            for key, stats in (block.get(group) or {}).items():
                for stat, value in stats.items():
                    if value is not None:
                        flat[f"{prefix}{'scene/' if group == 'scenes' else ''}{key}/{stat}"] = value
    with mlflow_run(tracking_cfg, f"pose-evaluate-{name}", tags={"stage": "pose_evaluate", "model": name}) as run:
        mlflow.log_params({"model": name, "model_kind": doc["kind"]})
        mlflow.log_metrics(flat)
        mlflow.log_dict(doc, f"pose_metrics_{name}.json")
        return run.info.run_id


def evaluate_pose(
    cfg: PoseConfig,
    tracking_cfg: Any,
    models: Mapping[str, str | Path],
    metrics_dir: str | Path,
    predictions_dir: str | Path,
    parquet_root: str | Path = layout.PARQUET,
    gt_root: str | Path = layout.GROUND_TRUTH,
    *,
    engine: str = "ray",
    raw_roots: Mapping[str, str | Path] | None = None,
    crop: Any = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
) -> dict[str, Any]:
    """COCO keypoint AP of every model on COCO val and HumanArt val, with ground-truth boxes.

    Writes ``<metrics_dir>/<model>.json``::

        {"model": name, "kind": "vitpose" | "vlpose",
         "domains": {"coco": {"AP", "AP50", "AP75", "AR"}, "humanart": {…},
                     "real_human": {…}, "3D_virtual_human": {…}, "2D_virtual_human": {…}},
         "scenes": {"<scene>": {…}},
         "detected": {"domains": …, "scenes": …}}        # only with pose.detections

    (fractions 0–1; ``null`` where COCOeval has no person to score), and the COCO results under
    ``<predictions_dir>/<model>/<domain>.json`` (``<domain>_detected.json`` for detected boxes).

    Args:
        cfg: the ``pose`` params (``eval_batch_size``, ``detections``, ``detection_min_score``).
        tracking_cfg: the ``tracking`` params; one MLflow run per model (``None`` or disabled: none).
        models: model name → folder (e.g. ``{"original": models/pose/original, …}``; links followed).
        metrics_dir, predictions_dir: output folders (files replaced atomically).
        parquet_root: ingested datasets (reads ``coco/val`` and ``humanart/val``).
        gt_root: ground truth (``<gt_root>/<domain>/<domain>_all.json`` …).
        engine: ``ray`` (Ray Data actors, each loading the model once) or ``local`` (same code, a loop).
        workers: Ray Data actors (``engine="ray"``).
        gpus_per_worker: GPU share of each actor (0: CPU).
        raw_roots: domain → raw dataset folder; needed only with ``cfg.detections`` (images are
            read by their ground-truth ``file_name``).
        crop: a :class:`~pipeline.pose2d.predict.CropSpec` (the ingestion's crop settings) for
            detected boxes; ``None``: the ``ingest`` defaults.

    Returns:
        ``{"models": {name: {domain: AP}}, "metrics": {name: path}, "engine", "seconds"}``.

    Raises:
        FileNotFoundError: a missing validation split, ground truth, model folder or raw image.
        ValueError: an unusable detections file, or raw roots missing for a domain with detections.
    """
    from pipeline.ingest import read_records
    from pipeline.pose2d.artifacts import META_FILE
    from pipeline.pose2d.predict import PREDICT_COLUMNS, keypoint_ap, predict_records

    t0 = time.perf_counter()
    gt = {d: ground_truth_files(gt_root, d) for d in DOMAINS}
    # Every table a model predicts, in one pass per model (the model is loaded once):
    # each domain's validation records, then the records cut around its detected boxes.
    segments: dict[str, pa.Table] = {
        d: read_records(Path(parquet_root) / d, "val").select(list(PREDICT_COLUMNS)) for d in DOMAINS
    }
    box_scores: dict[str, list[float]] = {}
    if cfg.detections:
        missing = [d for d in cfg.detections if not raw_roots or d not in raw_roots]
        if missing:
            raise ValueError(f"pose.detections names {missing}: evaluating detected boxes needs their raw image roots")
        for d, path in cfg.detections.items():
            segments[f"{d}_detected"], box_scores[d] = _detection_table(
                d, Path(path), gt[d]["all"], Path(raw_roots[d]), cfg.detection_min_score, crop
            )
    schema = segments[DOMAINS[0]].schema
    combined = pa.concat_tables([t.cast(schema) for t in segments.values()])
    bounds, start = {}, 0
    for key, t in segments.items():
        bounds[key] = (start, start + t.num_rows)
        start += t.num_rows

    summary: dict[str, Any] = {"models": {}, "metrics": {}, "engine": engine}
    session = _ray_session() if engine == "ray" else _null()
    with session:  # one Ray start for every model
        for name, model_dir in models.items():
            folder = resolve_model_dir(model_dir)
            if not (folder / "config.json").is_file() and not (folder / META_FILE).is_file():
                raise FileNotFoundError(f"{folder}: not a pose model folder (model {name!r})")
            preds = predict_records(
                folder,
                combined,
                engine=engine,
                batch_size=cfg.eval_batch_size,
                workers=workers,
                gpus_per_worker=gpus_per_worker,
            )
            outputs = {key: preds[lo:hi] for key, (lo, hi) in bounds.items()}
            doc: dict[str, Any] = {
                "model": name,
                "kind": _kind(folder),
                **_metrics_doc({d: keypoint_ap(outputs[d], gt[d]) for d in DOMAINS}),
            }
            if box_scores:
                for d, scores in box_scores.items():
                    for r, s in zip(outputs[f"{d}_detected"], scores, strict=True):
                        r["score"] *= s  # instance score = mean joint score × box score
                doc["detected"] = _metrics_doc({d: keypoint_ap(outputs[f"{d}_detected"], gt[d]) for d in box_scores})
            with atomic_dir(Path(predictions_dir) / name) as tmp:
                for key, results in outputs.items():
                    (tmp / f"{key}.json").write_text(json.dumps(results))
            path = Path(metrics_dir) / f"{name}.json"
            write_json_atomic(path, doc)
            run_id = _log_evaluation(tracking_cfg, name, doc)
            summary["models"][name] = {d: doc["domains"][d]["AP"] for d in DOMAINS}
            summary["metrics"][name] = str(path)
            if run_id is not None:
                summary.setdefault("mlflow_run_ids", {})[name] = run_id
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _kind(folder: Path) -> str:
    from pipeline.pose2d.artifacts import META_FILE

    meta = folder / META_FILE
    return json.loads(meta.read_text()).get("kind", "vitpose") if meta.is_file() else "vitpose"


def _ray_session() -> Any:
    from pipeline.raycluster import ray_session

    return ray_session()


def _null() -> Any:
    from contextlib import nullcontext

    return nullcontext()
