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
    """Crop ``box`` (x0, y0, x1, y1, continuous pixel coordinates) and resize to ``size`` (w, h).

    Continuous coordinates: pixel ``i`` covers ``[i, i + 1)``, so a point ``x`` maps to
    ``(x - x0) * w / (x1 - x0)`` in the crop — the exact rule used to map keypoints and boxes
    in and back out. PIL's ``resize(box=...)`` samples the sub-pixel box directly (no
    rounding shifts the crop) and antialiases when shrinking. Parts of the box outside the
    image are black (top-down pose crops often extend past the border).
    """
    img = Image.fromarray(np.ascontiguousarray(image))
    x0, y0, x1, y1 = (float(v) for v in box)
    if x0 < 0 or y0 < 0 or x1 > img.width or y1 > img.height:
        # Pad onto a black canvas that covers the box, then crop from the canvas.
        ox, oy = max(0, -int(np.floor(x0))), max(0, -int(np.floor(y0)))
        cw = max(img.width + ox, int(np.ceil(x1)) + ox)
        ch = max(img.height + oy, int(np.ceil(y1)) + oy)
        canvas = Image.new("RGB", (cw, ch))
        canvas.paste(img, (ox, oy))
        img, (x0, y0, x1, y1) = canvas, (x0 + ox, y0 + oy, x1 + ox, y1 + oy)
    out = img.resize(size, resample=Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
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
