"""Head-pose error metrics, the same for every candidate (VLM answers, the CNN baseline).

* **MAE** per angle (yaw, pitch, roll) and their mean, in degrees, the cross-dataset numbers
  papers report (6DRepNet, HPE-CogVLM). The difference is wrapped into [-180°, 180°) first, so
  a prediction of 179° for a truth of −179° is 2° off, not 358°.
* **MAEV** (6DRepNet): the mean angle between the three column vectors (left, down, front) of
  the predicted and true rotation matrices: free of Euler-angle singularities.
* **Geodesic** error on SO(3), the angle of the rotation between prediction and truth.

Invalid predictions (a VLM answer that did not parse) are *counted*, never scored: the MAE is
over valid answers, and ``invalid_rate`` says how many were left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.geometry import rotation_matrix

ANGLES = ("yaw", "pitch", "roll")


def wrapped_abs_error(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``|pred − true|`` in degrees with the difference wrapped into [-180°, 180°)."""
    diff = (np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64) + 180.0) % 360.0 - 180.0
    return np.abs(diff)


def _vector_errors(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the mean column-vector angle (MAEV) and the geodesic angle, in degrees."""
    maev, geo = [], []
    for p, t in zip(pred, true, strict=True):
        rp, rt = rotation_matrix(*p), rotation_matrix(*t)
        cos_cols = np.clip(np.sum(rp * rt, axis=0), -1.0, 1.0)
        maev.append(np.rad2deg(np.arccos(cos_cols)).mean())
        cos_geo = np.clip((np.trace(rp.T @ rt) - 1.0) / 2.0, -1.0, 1.0)
        geo.append(np.rad2deg(np.arccos(cos_geo)))
    return np.asarray(maev), np.asarray(geo)


def headpose_metrics(
    pred: Sequence[Sequence[float] | None], true: Sequence[Sequence[float]]
) -> dict[str, float | int | None]:
    """Scores of head-pose predictions against the truth.

    Args:
        pred: per sample ``(yaw, pitch, roll)`` in degrees, or ``None`` for an invalid answer.
        true: per sample the true ``(yaw, pitch, roll)``.

    Returns:
        ``n``, ``n_valid``, ``invalid_rate``, ``mae_yaw``, ``mae_pitch``, ``mae_roll``, ``mae``
        (mean of the three), ``maev``, ``geodesic``; the error fields are ``None`` when no
        prediction is valid (JSON has no NaN).

    Raises:
        ValueError: when the lengths differ or a triple does not have three finite numbers.
    """
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions for {len(true)} ground-truth poses")
    valid = [i for i, p in enumerate(pred) if p is not None]
    n = len(true)
    out: dict[str, float | int | None] = {
        "n": n,
        "n_valid": len(valid),
        "invalid_rate": (n - len(valid)) / n if n else 0.0,
    }
    if not valid:
        out.update(dict.fromkeys(("mae_yaw", "mae_pitch", "mae_roll", "mae", "maev", "geodesic")))
        return out
    p = np.asarray([pred[i] for i in valid], dtype=np.float64)
    t = np.asarray([true[i] for i in valid], dtype=np.float64)
    if p.shape[1:] != (3,) or t.shape[1:] != (3,) or not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("every pose must be three finite numbers (yaw, pitch, roll)")
    mae = wrapped_abs_error(p, t).mean(axis=0)
    maev, geo = _vector_errors(p, t)
    out.update({f"mae_{a}": float(v) for a, v in zip(ANGLES, mae, strict=True)})
    out.update(mae=float(mae.mean()), maev=float(maev.mean()), geodesic=float(geo.mean()))
    return out


def mae_by_bin(
    pred: Sequence[Sequence[float] | None],
    true: Sequence[Sequence[float]],
    edges: Sequence[float] = (0, 15, 30, 45, 60, 75, 90, 180),
) -> list[dict[str, float | int | None]]:
    """Mean-of-three MAE per bin of the true |yaw| (large yaws are where models fail)."""
    rows = []
    abs_yaw = np.abs(np.asarray([t[0] for t in true], dtype=np.float64))
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        idx = [i for i in range(len(true)) if lo <= abs_yaw[i] < hi]
        m = headpose_metrics([pred[i] for i in idx], [true[i] for i in idx]) if idx else {"n": 0, "mae": None}
        rows.append({"bin": f"{lo:g}-{hi:g}", "n": m["n"], "mae": m["mae"]})
    return rows
