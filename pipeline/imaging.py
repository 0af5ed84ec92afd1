"""Image helpers shared by the record builders: crop, resize, JPEG encode/decode."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an H×W×3 uint8 RGB array (deterministic for the same input)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """H×W×3 uint8 RGB array from JPEG (or any PIL-readable) bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def crop_resize(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1 in pixels, may be fractional) and resize to ``size`` (w, h).

    PIL's ``resize(box=...)`` samples the sub-pixel box directly, so no rounding of the box
    shifts the crop (that matters when boxes are mapped back to image coordinates).
    """
    img = Image.fromarray(np.ascontiguousarray(image))
    out = img.resize(size, resample=Image.Resampling.BILINEAR, box=tuple(float(v) for v in box))
    return np.asarray(out)


def fit_longest_side(width: int, height: int, longest: int) -> tuple[int, int]:
    """Size with the aspect ratio kept and the longest side equal to ``longest``."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def box_inside_fraction(box: tuple[float, float, float, float], width: int, height: int) -> float:
    """Fraction of the box's area that lies inside a ``width``×``height`` image."""
    x0, y0, x1, y1 = box
    area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    if area <= 0.0:
        return 0.0
    ix = max(0.0, min(x1, width) - max(x0, 0.0))
    iy = max(0.0, min(y1, height) - max(y0, 0.0))
    return ix * iy / area


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """The box clipped to the image rectangle ``[0, width] × [0, height]``."""
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
