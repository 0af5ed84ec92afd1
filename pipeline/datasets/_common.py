"""Helpers shared by the head-pose readers and writers: decode an image, load a .mat, list stems.

Readers turn every failure of a library (PIL, scipy) into a :class:`BadRecord` naming the file
and field, so that one broken file is quarantined instead of crashing a Ray worker with a
traceback from deep inside a decoder.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from pipeline.datasets._matfile import check_mat_v5
from pipeline.datasets.base import BadRecord, HeadPoseSample, LayoutError

# scipy writes the creation time into a .mat header; a fixed text keeps same-seed writes
# byte-identical (the header is 116 bytes of free text, padded with spaces).
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: hpe-pipeline synthetic writer"


def decode_image(path: Path, rel: str) -> np.ndarray:
    """Decode an image file completely into an (H, W, 3) uint8 RGB array.

    Args:
        path: the file.
        rel: its path relative to the raw root, for the error.

    Returns:
        The RGB image (greyscale / palette / RGBA converted to RGB).

    Raises:
        BadRecord: ``(rel, "image", …)`` when the file is missing, truncated or not an image.
    """
    if not path.is_file():
        raise BadRecord(rel, "image", "missing file")
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not later
            rgb = img.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, … on bad data
        raise BadRecord(rel, "image", f"cannot decode ({type(e).__name__}: {e})") from None
    return np.array(rgb, dtype=np.uint8)


def load_mat(path: Path, rel: str) -> dict:
    """Load a MATLAB v5 ``.mat`` file.

    Args:
        path: the file.
        rel: its path relative to the raw root, for the error.

    Returns:
        ``scipy.io.loadmat``'s dict (arrays keep their MATLAB 2-D shapes).

    Raises:
        BadRecord: ``(rel, "mat", …)`` when the file is missing, truncated or not a .mat.
    """
    if not path.is_file():
        raise BadRecord(rel, "mat", "missing file")
    data = path.read_bytes()
    check_mat_v5(data, rel)  # a corrupt type code would crash scipy's reader outright (segfault)
    try:
        return scipy.io.loadmat(io.BytesIO(data))
    except Exception as e:  # MatReadError, ValueError, OSError, NotImplementedError (v7.3), …
        raise BadRecord(rel, "mat", f"cannot read .mat ({type(e).__name__}: {e})") from None


def mat_array(mat: dict, key: str, shape: tuple[int, int], rel: str, *, finite: bool = True) -> np.ndarray:
    """``mat[key]`` as a float64 array of exactly ``shape`` (and all finite, unless ``finite=False``).

    Raises:
        BadRecord: ``(rel, key, …)`` when the key is missing, not a real-valued numeric array
            (text, cell, struct, complex), of another shape, or holds NaN / inf.
    """
    if key not in mat:
        raise BadRecord(rel, key, "missing key")
    value = mat[key]
    # Only integer / float (and logical, read as uint8) arrays: np.asarray would silently drop
    # the imaginary part of a complex array and could turn a cell of numbers into numbers.
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise BadRecord(rel, key, f"not a real numeric array ({kind})")
    arr = value.astype(np.float64)
    if arr.shape != shape:
        raise BadRecord(rel, key, f"shape {arr.shape}, expected {shape}")
    if finite:
        require_finite(arr, rel, key)
    return arr


def require_finite(values: np.ndarray, rel: str, field: str) -> None:
    """Raise ``BadRecord(rel, field, …)`` when ``values`` holds NaN or inf."""
    if not np.isfinite(values).all():
        raise BadRecord(rel, field, "NaN or inf")


def save_mat(path: Path, mdict: dict) -> None:
    """Write ``mdict`` as a MATLAB v5 .mat (what ``scipy.io.loadmat`` and MATLAB read), reproducibly.

    ``scipy.io.savemat`` stamps the creation time into the header; it is replaced by a fixed
    text so that the same data always gives the same bytes.
    """
    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, format="5", do_compression=False, oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    """Write an RGB uint8 array as a baseline JPEG (deterministic for the same input)."""
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="JPEG", quality=quality)


def pose_para_angles(pose_para: np.ndarray) -> tuple[float, float, float]:
    """Canonical ``(yaw, pitch, roll)`` degrees from a 300W-LP / AFLW2000 ``Pose_Para`` (1×7).

    ``Pose_Para[0][:3]`` is ``[pitch, yaw, roll]`` in radians (HopeNet ``get_ypr_from_mat``).
    """
    pitch, yaw, roll = (math.degrees(float(v)) for v in pose_para[0, :3])
    return yaw, pitch, roll


def pose_para_row(yaw: float, pitch: float, roll: float, t: tuple[float, float, float], scale: float) -> np.ndarray:
    """A 1×7 float32 ``Pose_Para``: pitch, yaw, roll in radians, then tdx, tdy, tdz, scale."""
    return np.array([[math.radians(pitch), math.radians(yaw), math.radians(roll), *t, scale]], dtype=np.float32)


def points_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of (N, 2) points."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def list_stems(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Sorted stems of the files in ``folder`` with one of ``suffixes`` (the union, so a stem with
    only one of its files is still listed and fails in ``load_item`` naming the missing one)."""
    stems = {p.name[: -len(s)] for p in folder.iterdir() for s in suffixes if p.name.endswith(s) and p.is_file()}
    return sorted(stems)


def require_dir(root: Path, expected: str) -> Path:
    """``root`` as a Path, or :class:`LayoutError` saying what was ``expected`` there."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory; expected {expected}")
    return root


def load_image_mat_sample(raw_root: Path, source_id: str, *, landmarks_key: str, landmarks_rows: int) -> HeadPoseSample:
    """Load a 300W-LP-style sample: ``source_id.jpg`` + ``source_id.mat`` with ``Pose_Para``.

    Args:
        raw_root: the dataset root.
        source_id: sample path relative to the root, without extension.
        landmarks_key: ``pt2d`` (2×68) or ``pt3d_68`` (3×68, x and y in pixels, then z).
        landmarks_rows: 2 or 3, the key's expected first dimension.

    Returns:
        The sample; ``face_box`` is the landmarks' box.

    Raises:
        BadRecord: naming the file and field (missing / corrupt image or .mat, missing key,
            wrong shape, NaN / inf).
    """
    base = Path(raw_root) / source_id
    mat_rel = f"{source_id}.mat"
    mat = load_mat(Path(f"{base}.mat"), mat_rel)
    pose_para = mat_array(mat, "Pose_Para", (1, 7), mat_rel, finite=False)
    require_finite(pose_para[0, :3], mat_rel, "Pose_Para")  # translation and scale are unused
    yaw, pitch, roll = pose_para_angles(pose_para)
    landmarks = mat_array(mat, landmarks_key, (landmarks_rows, 68), mat_rel)[:2].T.copy()
    image = decode_image(Path(f"{base}.jpg"), f"{source_id}.jpg")
    return HeadPoseSample(
        image=image, yaw=yaw, pitch=pitch, roll=roll, face_box=points_box(landmarks), landmarks=landmarks
    )
