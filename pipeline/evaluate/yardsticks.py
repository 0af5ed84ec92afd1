"""The yardsticks every head-pose result is read against: chance, in-domain, blank images.

* **Chance**: always answering the training set's median yaw, pitch and roll. A model whose
  MAE is not clearly below this has learnt nothing about the picture, whatever its ranking.
* **In-domain**: a held-out slice of the training dataset (300W-LP), split by *picture*:
  a ``*_Flip`` twin is the same render mirrored, so both twins fall on the same side of the
  split (splitting by ``source_id`` alone would leak every held-out picture into training
  through its mirror, which flip augmentation then undoes).
* **Blank images**: the same head-pose questions on uniform grey frames of the same size. A
  VLM whose answers depend on the image scores about chance or worse there; one that scores
  as well as on the real frames answers from the prompt (the box) alone.

:data:`CLEARLY_BELOW_CHANCE` is the ratio under which a result counts as learnt: the report
compares two models only when both are under it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.evaluate.headpose import headpose_metrics
from pipeline.imaging import encode_jpeg

IN_DOMAIN = "300w_lp"  # the held-out training-dataset slice, scored like a test set
BLANK_SUFFIX = "_blank"  # eval-set name of the blank-image ablation of a set
CLEARLY_BELOW_CHANCE = 0.7  # MAE / chance under which a model counts as having learnt
ANGLES = ("yaw", "pitch", "roll")


def picture_key(source_id: str) -> str:
    """The picture a row shows: its ``source_id`` with a 300W-LP ``_Flip`` folder unflipped."""
    head, sep, tail = source_id.partition("/")
    return f"{head.removesuffix('_Flip')}{sep}{tail}"


def heldout_fraction_of(seed: int, source_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, picture): the held-out split's coin."""
    digest = hashlib.sha256(f"{seed}:heldout:{picture_key(source_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def split_heldout(table: pa.Table, seed: int, fraction: float) -> tuple[pa.Table, pa.Table]:
    """``(train, heldout)`` rows of ``table``: ``fraction`` of its pictures, flip twins together."""
    held = pa.array([heldout_fraction_of(seed, sid) < fraction for sid in table.column("source_id").to_pylist()])
    return table.filter(pc.invert(held)), table.filter(held)


def true_poses(table: pa.Table) -> np.ndarray:
    """``(n, 3)`` yaw, pitch, roll labels of a head-pose table."""
    return np.stack([table.column(a).to_numpy(zero_copy_only=False) for a in ANGLES], axis=1).astype(np.float64)


def chance_pose(train: pa.Table) -> tuple[float, float, float]:
    """The training median of each angle: the chance predictor's constant answer."""
    yaw, pitch, roll = np.median(true_poses(train), axis=0)
    return float(yaw), float(pitch), float(roll)


def chance_scores(train: pa.Table, test_sets: Mapping[str, pa.Table]) -> dict[str, Any]:
    """:func:`headpose_metrics` of the chance predictor on each set, plus its constant answer."""
    pose = chance_pose(train)
    out: dict[str, Any] = {"answer": dict(zip(ANGLES, pose, strict=True))}
    for name, table in test_sets.items():
        truth = [tuple(r) for r in true_poses(table).tolist()]
        out[name] = headpose_metrics([pose] * len(truth), truth)
    return out


def ratio_to_chance(mae: float | None, chance_mae: float | None) -> float | None:
    """``mae / chance_mae``, or None when either is missing."""
    if mae is None or not chance_mae:
        return None
    return mae / chance_mae


def blank_frames(table: pa.Table, grey: int = 128) -> pa.Table:
    """``table`` with every ``frame_jpeg`` replaced by a uniform grey frame of the same size."""
    cache: dict[tuple[int, int], bytes] = {}
    blanks = []
    for w, h in zip(table.column("frame_width").to_pylist(), table.column("frame_height").to_pylist(), strict=True):
        if (w, h) not in cache:
            cache[(w, h)] = encode_jpeg(np.full((h, w, 3), grey, np.uint8), 90)
        blanks.append(cache[(w, h)])
    i = table.schema.get_field_index("frame_jpeg")
    return table.set_column(i, table.schema.field(i), pa.array(blanks, table.schema.field(i).type))
