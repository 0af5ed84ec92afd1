"""Keypoint records (COCO, HumanArt): one row per person instance for top-down pose.

Schema (version :data:`SCHEMA_VERSION`):

================ ================= =========================================================
column           type              meaning
================ ================= =========================================================
source_id        string            image path relative to the raw root
dataset          string            ``coco`` / ``humanart``
split            string            ``train`` / ``val``
scene            string            HumanArt scene (``sketch``…) or ``photo`` for COCO
super_category   string            ``real_human`` / ``2D_virtual_human`` / ``3D_virtual_human``
image_id         int64             COCO image id (for COCOeval)
annotation_id    int64             COCO annotation id
image_width      int32             original image size
image_height     int32
bbox             fixed_list<f32,4> COCO ``[x, y, w, h]``, image pixels
area             float32           COCO ``area``
num_keypoints    int32             labelled keypoints
keypoints        list<f32>         17×3 ``[x, y, v]`` flattened, COCO order, image pixels
keypoints_crop   list<f32>         the same in crop pixels (v unchanged; v=0 points stay 0, 0)
keypoints_21     list<f32>         HumanArt 21×3, image pixels; null for COCO
crop_box         fixed_list<f32,4> ViTPose crop (x0, y0, x1, y1) in image pixels, may pass the border
crop_jpeg        binary            the crop resized to ``pose_input`` (w, h)
================ ================= =========================================================

The crop follows ViTPose/mmpose top-down: the box centre, the box grown to the input aspect
ratio (3:4), then scaled by ``pose_padding`` (1.25). Mapping back:
``x_image = x0 + x_crop · (x1 − x0) / w``.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from pipeline.datasets.base import Item, KeypointImage
from pipeline.imaging import crop_resize, encode_jpeg
from pipeline.records import Outcome

SCHEMA_VERSION = "1"
KIND = "keypoints"
NUM_KEYPOINTS = 17

SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("scene", pa.string()),
        ("super_category", pa.string()),
        ("image_id", pa.int64()),
        ("annotation_id", pa.int64()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("area", pa.float32()),
        ("num_keypoints", pa.int32()),
        ("keypoints", pa.list_(pa.float32())),
        ("keypoints_crop", pa.list_(pa.float32())),
        ("keypoints_21", pa.list_(pa.float32())),
        ("crop_box", pa.list_(pa.float32(), 4)),
        ("crop_jpeg", pa.binary()),
    ]
)


def topdown_box(
    bbox: tuple[float, float, float, float], aspect: float, padding: float
) -> tuple[float, float, float, float]:
    """ViTPose crop box ``(x0, y0, x1, y1)`` for a COCO ``[x, y, w, h]`` box.

    Args:
        bbox: COCO box.
        aspect: input width / height (192/256 = 0.75 for ViTPose).
        padding: scale factor on the aspect-corrected box (1.25 in ViTPose).
    """
    x, y, w, h = bbox
    cx, cy = x + w / 2.0, y + h / 2.0
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    w, h = w * padding, h * padding
    return (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)


def to_crop(keypoints: np.ndarray, crop_box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Map (K, 3) ``[x, y, v]`` image keypoints into crop pixels; unlabelled (v=0) stay at 0."""
    x0, y0, x1, y1 = crop_box
    out = np.array(keypoints, dtype=np.float64, copy=True)
    labelled = out[:, 2] > 0
    out[labelled, 0] = (out[labelled, 0] - x0) * size[0] / (x1 - x0)
    out[labelled, 1] = (out[labelled, 1] - y0) * size[1] / (y1 - y0)
    out[~labelled, :2] = 0.0
    return out


def from_crop(
    keypoints_crop: np.ndarray, crop_box: tuple[float, float, float, float], size: tuple[int, int]
) -> np.ndarray:
    """Inverse of :func:`to_crop` for the x, y columns (predictions back to image pixels)."""
    x0, y0, x1, y1 = crop_box
    out = np.array(keypoints_crop, dtype=np.float64, copy=True)
    out[:, 0] = x0 + out[:, 0] * (x1 - x0) / size[0]
    out[:, 1] = y0 + out[:, 1] * (y1 - y0) / size[1]
    return out


def units(item: Item) -> int:
    """Counted units per listed image: its person annotations."""
    return len(item.extra.get("annotations", []))


def build(sample: KeypointImage, item: Item, ctx: dict) -> Outcome:
    """One row per usable person instance of an image; crowd / unlabelled ones filtered.

    Args:
        sample: decoded image with its annotations.
        item: the listed image.
        ctx: ``dataset``, ``pose_input`` (w, h) and ``pose_padding``, ``jpeg_quality``.
    """
    out = Outcome()
    image = sample.image
    height, width = image.shape[:2]
    size = tuple(ctx["pose_input"])
    for inst in sample.instances:
        sid = f"{item.source_id}#{inst.annotation_id}"
        if inst.iscrowd:
            out.filtered.append((sid, "crowd region (evaluation ground truth only)"))
            continue
        if inst.num_keypoints <= 0:
            out.filtered.append((sid, "no labelled keypoints"))
            continue
        kps = np.asarray(inst.keypoints, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
        if not np.isfinite(kps).all() or not all(math.isfinite(v) for v in inst.bbox):
            out.quarantined.append((sid, item.source_id, "keypoints", "non-finite keypoint or box value", 1))
            continue
        crop_box = topdown_box(inst.bbox, size[0] / size[1], ctx["pose_padding"])
        crop = crop_resize(image, crop_box, size)
        kp21 = None
        if inst.keypoints_21 is not None:
            kp21 = np.asarray(inst.keypoints_21, dtype=np.float32).reshape(-1).tolist()
        out.rows.append(
            {
                "source_id": item.source_id,
                "dataset": ctx["dataset"],
                "split": item.split,
                "scene": sample.scene,
                "super_category": sample.super_category,
                "image_id": int(sample.image_id),
                "annotation_id": int(inst.annotation_id),
                "image_width": width,
                "image_height": height,
                "bbox": [float(v) for v in inst.bbox],
                "area": float(inst.area),
                "num_keypoints": int(inst.num_keypoints),
                "keypoints": kps.astype(np.float32).reshape(-1).tolist(),
                "keypoints_crop": to_crop(kps, crop_box, size).astype(np.float32).reshape(-1).tolist(),
                "keypoints_21": kp21,
                "crop_box": [float(v) for v in crop_box],
                "crop_jpeg": encode_jpeg(crop, ctx["jpeg_quality"]),
            }
        )
    return out
