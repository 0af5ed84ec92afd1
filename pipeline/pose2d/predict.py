"""Batch inference over keypoint records → COCO results, and COCO keypoint AP per domain and scene.

A prediction is made in the crop (model-input pixels), scaled to the ingested crop's pixels and
mapped to the image with the record's own crop transform
(:func:`pipeline.records.keypoints.from_crop`), so it lands in the coordinates of the COCO
ground truth written by :func:`pipeline.evaluate.coco_gt.write_ground_truth`. Each person gets
one result: ``image_id``, ``category_id`` 1, 17 ``[x, y, joint score]`` and an instance score =
mean joint score × box score (1: the boxes are the ground-truth boxes, as in the papers'
top-down evaluation with GT boxes).

:func:`predict_rows` works on one batch of rows (Python dicts), so it also serves as the body of
a Ray Data ``map_batches`` call; :func:`predict_table` loops over a whole Arrow table, and
:func:`predict_records` runs :class:`KeypointPredictor` (a model loaded once) over one through
Ray Data or a local loop.

Boxes that were not ingested (detections, a served request) become records by the ingestion's
own crop (:func:`crop_records`: :func:`pipeline.records.keypoints.topdown_box`, then
:func:`pipeline.imaging.crop_resize` to the ingested crop size and JPEG), so a box is predicted
exactly as the same box in the Parquet records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.evaluate.coco_gt import coco_keypoint_ap
from pipeline.imaging import crop_resize, encode_jpeg
from pipeline.pose2d.artifacts import PoseEstimator, load_pose_model
from pipeline.pose2d.heatmaps import decode_heatmaps, default_blur_kernel
from pipeline.pose2d.inputs import jpeg_size, load_crop, normalise
from pipeline.records.keypoints import from_crop, topdown_box

__all__ = [
    "PREDICT_COLUMNS",
    "CropSpec",
    "crop_records",
    "coco_results",
    "predict_rows",
    "predict_table",
    "KeypointPredictor",
    "predict_records",
    "keypoint_ap",
    "evaluate_keypoints",
]

PREDICT_COLUMNS = ("image_id", "crop_box", "crop_jpeg", "scene", "super_category")


def coco_results(
    rows: Sequence[dict],
    keypoints_crop: np.ndarray,
    joint_scores: np.ndarray,
    box_score: float = 1.0,
) -> list[dict]:
    """COCO keypoint results from keypoints in each record's crop pixels.

    Args:
        rows: the records (``image_id``, ``crop_box``, ``crop_jpeg`` — whose size is the crop's).
        keypoints_crop: ``(N, K, 2)`` in crop pixels (the same frame as ``keypoints_crop``).
        joint_scores: ``(N, K)`` confidence per joint.
        box_score: the person box's score (1 for ground-truth boxes).

    Returns:
        One dict per row: ``image_id``, ``category_id`` (1), ``keypoints`` (``x, y, s`` × K in
        image pixels), ``score``.
    """
    out = []
    for row, xy, s in zip(rows, np.asarray(keypoints_crop), np.asarray(joint_scores), strict=True):
        size = jpeg_size(row["crop_jpeg"])
        image_xy = from_crop(np.asarray(xy, dtype=np.float64), tuple(row["crop_box"]), size)
        kps = np.concatenate([image_xy[:, :2], np.asarray(s, dtype=np.float64)[:, None]], axis=1)
        out.append(
            {
                "image_id": int(row["image_id"]),
                "category_id": 1,
                "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
                "score": float(np.mean(s)) * box_score,
            }
        )
    return out


def predict_rows(estimator: PoseEstimator, rows: Sequence[dict], *, blur_kernel: int | None = None) -> list[dict]:
    """COCO results for one batch of keypoint records.

    Args:
        estimator: from :func:`pipeline.pose2d.artifacts.load_pose_model`.
        rows: records with :data:`PREDICT_COLUMNS`.
        blur_kernel: DARK's smoothing kernel; ``None`` = 11 at 64×48, scaled to the heatmap.
    """
    if not rows:
        return []
    size = estimator.input_size
    images, scales = zip(*(load_crop(r["crop_jpeg"], size) for r in rows), strict=True)
    heatmaps = estimator.heatmaps(
        normalise(np.stack(images)),
        scenes=[r.get("scene", "photo") for r in rows],
        super_categories=[r.get("super_category") for r in rows],
    )
    kernel = default_blur_kernel(tuple(heatmaps.shape[-2:])) if blur_kernel is None else blur_kernel
    xy, scores = decode_heatmaps(heatmaps.float().cpu(), size, blur_kernel=kernel)
    xy_crop = xy.numpy() / np.asarray(scales)[:, None, :]  # model input → ingested crop pixels
    return coco_results(rows, xy_crop, scores.numpy())


def predict_table(
    estimator: PoseEstimator, table: pa.Table, *, batch_size: int = 32, blur_kernel: int | None = None
) -> list[dict]:
    """COCO results for every record of a keypoint table, in row order.

    Raises:
        ValueError: the table lacks a column prediction needs.
    """
    missing = [c for c in PREDICT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"keypoint table lacks columns {missing} (has {table.column_names})")
    table = table.select(list(PREDICT_COLUMNS))
    estimator.model.eval()
    out: list[dict] = []
    with torch.inference_mode():
        for start in range(0, table.num_rows, batch_size):
            rows = table.slice(start, batch_size).to_pylist()
            out += predict_rows(estimator, rows, blur_kernel=blur_kernel)
    return out


@dataclass(frozen=True)
class CropSpec:
    """How ingestion cut a person out of an image (``ingest.pose_input``, ``pose_padding``, ``jpeg_quality``).

    Attributes:
        size: crop ``(w, h)`` in pixels (ViTPose's 3:4; the box is grown to this aspect).
        padding: scale on the aspect-corrected box (1.25 in ViTPose).
        jpeg_quality: the crop is JPEG-encoded at this quality, as the ingested ``crop_jpeg``.
    """

    size: tuple[int, int] = (192, 256)
    padding: float = 1.25
    jpeg_quality: int = 90

    @classmethod
    def from_ingest(cls, settings: Mapping[str, Any]) -> CropSpec:
        """From the ``ingest`` params section (``pose_input``, ``pose_padding``, ``jpeg_quality``)."""
        return cls(
            size=tuple(int(v) for v in settings.get("pose_input", cls.size)),
            padding=float(settings.get("pose_padding", cls.padding)),
            jpeg_quality=int(settings.get("jpeg_quality", cls.jpeg_quality)),
        )


def crop_records(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    *,
    image_id: int = 0,
    scene: str = "photo",
    super_category: str | None = None,
    spec: CropSpec | None = None,
) -> list[dict]:
    """Records with :data:`PREDICT_COLUMNS` for person boxes of one image, cut as ingestion does.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: COCO ``[x, y, w, h]`` boxes in image pixels.
        image_id: the image's id (carried into the COCO results).
        scene, super_category: the domain of the image (VLPose builds its prompt from them).
        spec: the ingestion's crop settings (default: ``ingest``'s defaults).
    """
    spec = spec or CropSpec()
    w, h = spec.size
    rows = []
    for box in boxes:
        crop_box = topdown_box(tuple(float(v) for v in box), w / h, spec.padding)
        rows.append(
            {
                "image_id": int(image_id),
                "crop_box": [float(v) for v in crop_box],
                "crop_jpeg": encode_jpeg(crop_resize(image, crop_box, (w, h)), spec.jpeg_quality),
                "scene": scene,
                "super_category": super_category,
            }
        )
    return rows


class KeypointPredictor:
    """Loads a pose model folder once and predicts batches of records (a Ray Data actor).

    Args:
        model_dir: a folder :func:`~pipeline.pose2d.artifacts.load_pose_model` reads.
        torch_threads: torch threads of this process (one per actor on a shared machine).
        blur_kernel: DARK's smoothing kernel (``None``: scaled to the heatmap).

    Called on an Arrow batch with :data:`PREDICT_COLUMNS` and ``row``, it returns ``row``,
    ``keypoints`` (``x, y, score`` × K in image pixels) and ``score`` per record.
    """

    def __init__(
        self, model_dir: str, torch_threads: int | None = 1, blur_kernel: int | None = None, gpus: float = 0.0
    ):
        from pipeline.raycluster import actor_device

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.estimator = load_pose_model(model_dir)
        self.estimator.model.to(actor_device(gpus))  # heatmaps() follows the model's device
        self.blur_kernel = blur_kernel

    def __call__(self, batch: pa.Table) -> pa.Table:
        with torch.inference_mode():
            results = predict_rows(self.estimator, batch.to_pylist(), blur_kernel=self.blur_kernel)
        return pa.table(
            {
                "row": batch.column("row"),
                "keypoints": pa.array([r["keypoints"] for r in results], pa.list_(pa.float64())),
                "score": pa.array([r["score"] for r in results], pa.float64()),
            }
        )


def predict_records(
    model_dir: str | Path,
    table: pa.Table,
    *,
    engine: str = "ray",
    batch_size: int = 32,
    torch_threads: int | None = 1,
    blur_kernel: int | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
) -> list[dict]:
    """COCO results for every record of ``table``, in row order, from a model folder.

    ``engine="ray"``: Ray Data ``map_batches`` over one :class:`KeypointPredictor` actor (the
    model loaded once; Ray must be running or startable, see
    :func:`pipeline.raycluster.ray_session`); ``engine="local"``: the same predictor in a loop.
    ``workers``: Ray Data actors (each loads the model once and uses ``torch_threads`` threads);
    ``gpus_per_worker``: each actor's GPU share (0: CPU).

    Raises:
        ValueError: a missing column, an unknown engine, or a record that came back without a
            prediction (never silently lost).
    """
    missing = [c for c in PREDICT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"keypoint table lacks columns {missing} (has {table.column_names})")
    rows = table.select(list(PREDICT_COLUMNS)).append_column("row", pa.array(range(table.num_rows), pa.int64()))
    kwargs = {
        "model_dir": str(Path(model_dir).resolve()),
        "torch_threads": torch_threads,
        "blur_kernel": blur_kernel,
        "gpus": gpus_per_worker,
    }
    if engine == "local":
        predictor = KeypointPredictor(**kwargs)
        parts = [predictor(rows.slice(i, batch_size)) for i in range(0, rows.num_rows, batch_size)]
    elif engine == "ray":
        import ray
        import ray.data

        from pipeline.raycluster import actor_resources, ray_session

        with ray_session():
            ds = ray.data.from_arrow(rows).map_batches(
                KeypointPredictor,
                fn_constructor_kwargs=kwargs,
                batch_size=batch_size,
                batch_format="pyarrow",
                concurrency=workers,
                **actor_resources(gpus_per_worker),
            )
            parts = [ray.get(ref) for ref in ds.to_arrow_refs()]
    else:
        raise ValueError(f"engine must be 'ray' or 'local', not {engine!r}")
    done = pa.concat_tables(parts).to_pylist() if parts else []
    by_row = {r["row"]: r for r in done}
    if len(by_row) != rows.num_rows:
        raise ValueError(f"{model_dir}: {rows.num_rows - len(by_row)} records came back without a prediction")
    image_ids = table.column("image_id").to_pylist()
    return [
        {
            "image_id": int(image_ids[i]),
            "category_id": 1,
            "keypoints": by_row[i]["keypoints"],
            "score": by_row[i]["score"],
        }
        for i in range(rows.num_rows)
    ]


def _image_ids(gt_json: Path | str) -> set[int]:
    return {int(im["id"]) for im in json.loads(Path(gt_json).read_text())["images"]}


def keypoint_ap(predictions: Sequence[dict], gt_files: Mapping[str, Path | str]) -> dict[str, dict[str, float]]:
    """COCO keypoint AP/AR of one dataset's predictions against each of its ground-truth files.

    Args:
        predictions: COCO results of one dataset (image ids of another dataset may collide).
        gt_files: name → ground-truth file, e.g. the ``{"all", "domain/<super>", "scene/<scene>"}``
            of :func:`pipeline.evaluate.coco_gt.write_ground_truth`.

    Returns:
        name → ``{"AP", "AP50", …, "ARl"}``; each file is scored on the predictions of its own images.
    """
    results = {}
    for name, path in gt_files.items():
        ids = _image_ids(path)
        results[name] = coco_keypoint_ap(path, [p for p in predictions if p["image_id"] in ids])
    return results


def evaluate_keypoints(
    estimator: PoseEstimator,
    table: pa.Table,
    gt_files: Mapping[str, Path | str],
    *,
    batch_size: int = 32,
    blur_kernel: int | None = None,
) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Predict a dataset's validation records and score them per ground-truth file.

    Returns:
        ``(metrics, predictions)``: :func:`keypoint_ap`'s metrics and the COCO results.
    """
    predictions = predict_table(estimator, table, batch_size=batch_size, blur_kernel=blur_kernel)
    return keypoint_ap(predictions, gt_files), predictions
