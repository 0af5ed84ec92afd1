"""Head-pose records: the fixed Parquet schema and the per-sample validate/crop/encode step.

Schema (version :data:`SCHEMA_VERSION`, stored in the file metadata as ``hpe.schema_version``):

=============== ================== ==========================================================
column          type               meaning
=============== ================== ==========================================================
source_id       string             sample path relative to the raw root, no extension
dataset         string             registry name (``300w_lp``, ``aflw2000``, ``biwi_hpdb``…)
split           string             ``train`` / ``test``
subset          string             300W-LP subset (``HELEN_Flip``) or BIWI sequence (``07``)
flip            bool               mirrored twin (300W-LP ``*_Flip``)
yaw pitch roll  float64            canonical Euler angles, degrees (``pipeline.geometry``)
face_jpeg       binary             face crop (HopeNet protocol, squared), ``crop_size``² JPEG
crop_box        fixed_list<f32,4>  that square crop in source-image pixels (x0, y0, x1, y1); may
                                   extend past the image (black there)
crop_margin     float32            the k used for the crop
frame_jpeg      binary             full frame, longest side ``frame_size``, aspect kept
frame_width     int32              stored frame width (pixels)
frame_height    int32              stored frame height
head_box        fixed_list<f32,4>  head box in stored-frame pixels (k = ``head_margin``)
source_width    int32              original image width
source_height   int32              original image height
landmarks       list<f32>          68×2 landmarks flattened (x0, y0, x1, y1, …), source pixels;
                                   null when the dataset has none
=============== ================== ==========================================================
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa

from pipeline.datasets.base import HeadPoseSample, Item
from pipeline.imaging import box_inside_fraction, clip_box, crop_resize, encode_jpeg, fit_longest_side
from pipeline.records import Outcome

SCHEMA_VERSION = "1"
KIND = "headpose"

SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("subset", pa.string()),
        ("flip", pa.bool_()),
        ("yaw", pa.float64()),
        ("pitch", pa.float64()),
        ("roll", pa.float64()),
        ("face_jpeg", pa.binary()),
        ("crop_box", pa.list_(pa.float32(), 4)),
        ("crop_margin", pa.float32()),
        ("frame_jpeg", pa.binary()),
        ("frame_width", pa.int32()),
        ("frame_height", pa.int32()),
        ("head_box", pa.list_(pa.float32(), 4)),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("landmarks", pa.list_(pa.float32())),
    ]
)

# An angle beyond ±180° cannot come from any Euler decomposition: the label is corrupt.
_VALID_ANGLE = 180.0


def expand_box(box: tuple[float, float, float, float], k: float) -> tuple[float, float, float, float]:
    """HopeNet/6DRepNet face-crop expansion of a landmark box by margin ``k``.

    x grows by 0.6·k·w on each side, the top by 2·k·h (forehead and hair, which the
    landmarks do not cover) and the bottom by 0.6·k·h.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return (x0 - 0.6 * k * w, y0 - 2.0 * k * h, x1 + 0.6 * k * w, y1 + 0.6 * k * h)


def square_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The square about ``box``'s centre whose side is its longer side.

    The face crop is stored square; resizing a 0.8:1 landmark crop to a square would stretch
    faces sideways by 25 % while a square test crop (BIWI's head box) is not stretched, and a
    yaw regressor reads a horizontally squeezed face as a smaller yaw (measured: BIWI yaw
    predictions at half their true slope). HopeNet and 6DRepNet keep the aspect too (their
    ``Resize(240)`` scales the shorter side).
    """
    x0, y0, x1, y1 = box
    half = max(x1 - x0, y1 - y0) / 2.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return (cx - half, cy - half, cx + half, cy + half)


def sample_margin(lo: float, hi: float, seed: int, source_id: str) -> float:
    """Per-sample crop margin in ``[lo, hi]``, a pure function of (seed, source_id).

    Hashing instead of a shared RNG keeps the result independent of worker scheduling, so
    the Parquet bytes are the same however Ray splits the work.
    """
    if lo == hi:
        return lo
    digest = hashlib.sha256(f"{seed}:{source_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    return lo + (hi - lo) * u


def build(sample: HeadPoseSample, item: Item, ctx: dict) -> Outcome:
    """Validate one decoded sample and turn it into a Parquet row.

    Args:
        sample: decoded sample from a reader.
        item: the listed item (source id, split, subset, flip).
        ctx: ``dataset``, ``seed``, ``crop_margin`` (lo, hi) and the ingest settings
            ``crop_size``, ``frame_size``, ``head_margin``, ``jpeg_quality``, ``max_abs_angle``,
            ``min_box_inside``.

    Returns:
        An :class:`Outcome` with one row, one filtered reason or one quarantine entry.
    """
    sid, out = item.source_id, Outcome()
    angles = {"yaw": sample.yaw, "pitch": sample.pitch, "roll": sample.roll}
    for name, value in angles.items():
        if value is None or not math.isfinite(value):
            out.quarantined.append((sid, sid, name, f"{name} is not a finite number ({value})", 1))
            return out
        if abs(value) > _VALID_ANGLE:
            out.quarantined.append((sid, sid, name, f"{name}={value:.2f}° is outside ±180°", 1))
            return out
    if item.split != "train":
        worst = max(angles, key=lambda n: abs(angles[n]))
        if abs(angles[worst]) > ctx["max_abs_angle"]:
            out.filtered.append((sid, f"|{worst}| > {ctx['max_abs_angle']:g}° (test protocol)"))
            return out

    image = sample.image
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2:
        out.quarantined.append((sid, sid, "image", f"expected H×W×3 uint8, got {image.shape} {image.dtype}", 1))
        return out
    height, width = image.shape[:2]

    box = sample.face_box if sample.face_box is not None else (0.0, 0.0, float(width), float(height))
    box = tuple(float(v) for v in box)
    if not all(math.isfinite(v) for v in box) or box[2] - box[0] < 2 or box[3] - box[1] < 2:
        out.quarantined.append((sid, sid, "face_box", f"degenerate face box {box}", 1))
        return out
    inside = box_inside_fraction(box, width, height)
    if inside < ctx["min_box_inside"]:
        out.quarantined.append(
            (
                sid,
                sid,
                "face_box",
                f"only {inside:.0%} of the face box {tuple(round(v, 1) for v in box)} "
                f"lies inside the {width}×{height} image",
                1,
            )
        )
        return out

    lo, hi = ctx["crop_margin"]
    k = sample_margin(lo, hi, ctx["seed"], sid)
    # Parts of the square outside the image are black (crop_resize pads), as at a border.
    crop_box = square_box(expand_box(box, k))
    face = crop_resize(image, crop_box, (ctx["crop_size"], ctx["crop_size"]))

    fw, fh = fit_longest_side(width, height, ctx["frame_size"])
    frame = crop_resize(image, (0.0, 0.0, float(width), float(height)), (fw, fh))
    sx, sy = fw / width, fh / height
    hx0, hy0, hx1, hy1 = clip_box(expand_box(box, ctx["head_margin"]), width, height)
    head_box = [hx0 * sx, hy0 * sy, hx1 * sx, hy1 * sy]

    landmarks = None
    if sample.landmarks is not None:
        landmarks = np.asarray(sample.landmarks, dtype=np.float32).reshape(-1).tolist()

    out.rows.append(
        {
            "source_id": sid,
            "dataset": ctx["dataset"],
            "split": item.split,
            "subset": item.subset,
            "flip": bool(item.flip),
            "yaw": float(sample.yaw),
            "pitch": float(sample.pitch),
            "roll": float(sample.roll),
            "face_jpeg": encode_jpeg(face, ctx["jpeg_quality"]),
            "crop_box": [float(v) for v in crop_box],
            "crop_margin": float(k),
            "frame_jpeg": encode_jpeg(frame, ctx["jpeg_quality"]),
            "frame_width": fw,
            "frame_height": fh,
            "head_box": head_box,
            "source_width": width,
            "source_height": height,
            "landmarks": landmarks,
        }
    )
    return out


def units(item: Item) -> int:
    """Counted units per listed item: one head-pose sample."""
    return 1
