"""300W-LP (training set of HopeNet / 6DRepNet): reader and synthetic writer.

Layout (Zhu et al., 3DDFA, http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm)::

    root/{AFW,HELEN,IBUG,LFPW}/NAME.jpg       450×450 face images
    root/{AFW,HELEN,IBUG,LFPW}/NAME.mat       Pose_Para 1×7 (pitch, yaw, roll rad, tdx, tdy, tdz, s),
                                              pt2d 2×68 landmarks, roi, Shape_Para, Exp_Para, …
    root/{AFW,HELEN,IBUG,LFPW}_Flip/NAME.*    the horizontally mirrored twins (same NAME)

The ``_Flip`` folders carry their own ``Pose_Para`` (yaw and roll already negated) and mirrored
``pt2d``; the reader returns them as stored and only marks ``Item.flip``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline import geometry
from pipeline.datasets import _common
from pipeline.datasets.base import HeadPoseSample, Item, LayoutError, Listing
from pipeline.synth import head

SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")
FOLDERS = SUBSETS + tuple(f"{s}_Flip" for s in SUBSETS)
SPLIT = "train"
SIZE = 450  # 300W-LP images are 450×450
JPEG_QUALITY = 90
_EXPECTED = f"300W-LP: folders {', '.join(FOLDERS)} holding NAME.jpg + NAME.mat pairs"


def list_items(raw_root: Path) -> Listing:
    """One item per image/.mat stem in the subset folders.

    Args:
        raw_root: the 300W-LP root (the folder holding ``AFW``, ``AFW_Flip``, …).

    Returns:
        Items with ``source_id`` ``FOLDER/NAME``, ``subset`` ``FOLDER`` and ``flip`` for ``*_Flip``.

    Raises:
        LayoutError: no subset folder, or no sample in any of them.
    """
    root = _common.require_dir(raw_root, _EXPECTED)
    present = [f for f in FOLDERS if (root / f).is_dir()]
    if not present:
        raise LayoutError(f"{root}: no 300W-LP subset folder; expected {_EXPECTED}")
    items = [
        Item(source_id=f"{folder}/{stem}", split=SPLIT, subset=folder, flip=folder.endswith("_Flip"))
        for folder in present
        for stem in _common.list_stems(root / folder, (".jpg", ".mat"))
    ]
    if not items:
        raise LayoutError(f"{root}: subset folders hold no samples; expected {_EXPECTED}")
    return Listing(items)


def load_item(raw_root: Path, item: Item) -> HeadPoseSample:
    """Decode one sample: RGB image, canonical angles in degrees, ``pt2d`` landmarks and their box.

    Raises:
        BadRecord: missing / corrupt ``.jpg`` or ``.mat``, missing ``Pose_Para`` / ``pt2d``,
            wrong shapes, NaN / inf.
    """
    return _common.load_image_mat_sample(raw_root, item.source_id, landmarks_key="pt2d", landmarks_rows=2)


# ------------------------------------------------------------------------------ synthetic
def _sample_angles(rng: np.random.Generator) -> tuple[float, float, float]:
    """Yaw over ±88°, pitch over ±60°, roll over ±50°: each a uniform/normal mixture.

    Real 300W-LP's profiling and 3DDFA fits reach the poses AFLW2000 and BIWI test (pitch
    ±60°, roll ±50°); a training set concentrated near zero pitch and roll would turn the
    cross-dataset test into an extrapolation test. The normal part keeps most faces near
    frontal, as in the real set.
    """
    yaw = rng.uniform(-88.0, 88.0) if rng.uniform() < 0.6 else float(np.clip(rng.normal(0.0, 25.0), -88.0, 88.0))
    pitch = rng.uniform(-60.0, 60.0) if rng.uniform() < 0.4 else float(np.clip(rng.normal(0.0, 18.0), -60.0, 60.0))
    roll = rng.uniform(-50.0, 50.0) if rng.uniform() < 0.4 else float(np.clip(rng.normal(0.0, 12.0), -50.0, 50.0))
    return float(yaw), float(pitch), float(roll)


def synthetic_samples(n_per_subset: int, seed: int) -> Iterator[head.SyntheticHead]:
    """Render the synthetic 300W-LP: per subset ``n_per_subset`` heads, each followed by its flip twin.

    Each sample draws from its own generator seeded by ``(seed, subset, index)``, so a sample
    does not change when ``n_per_subset`` does.

    Args:
        n_per_subset: samples per subset (the ``_Flip`` folders get as many twins).
        seed: the dataset seed.

    Yields:
        :class:`~pipeline.synth.head.SyntheticHead` with ``extra`` = ``{"pose_para": 1×7}``.
    """
    look = head.get_look("300w_lp")
    for si, subset in enumerate(SUBSETS):
        for i in range(n_per_subset):
            rng = np.random.default_rng([seed, si, i])
            yaw, pitch, roll = _sample_angles(rng)
            r = head.render(yaw, pitch, roll, width=SIZE, height=SIZE, look=look, rng=rng)
            name = f"{subset}_{134212 + 7919 * i}_1_0"
            u, v = head.project(head.camera_matrix(look, SIZE, SIZE), r.centre[None])[0]
            # tdx/tdy/tdz/scale as 3DDFA's weak perspective would give them (y up); unused by readers.
            scale = look.focal_px / r.centre[2] / 1000.0
            pose_para = _common.pose_para_row(yaw, pitch, roll, (u, SIZE - v, 0.0), scale)
            yield head.SyntheticHead(f"{subset}/{name}", subset, False, yaw, pitch, roll, r.image, r.landmarks,
                                     extra={"pose_para": pose_para})  # fmt: skip
            fy, fp, fr = geometry.flip_euler(yaw, pitch, roll)
            pose_para = _common.pose_para_row(fy, fp, fr, (SIZE - 1 - u, SIZE - v, 0.0), scale)
            image, landmarks = np.ascontiguousarray(r.image[:, ::-1]), geometry.flip_points_x(r.landmarks, SIZE)
            yield head.SyntheticHead(f"{subset}_Flip/{name}", f"{subset}_Flip", True, fy, fp, fr, image, landmarks,
                                     extra={"pose_para": pose_para})  # fmt: skip


def write_sample(root: Path, s: head.SyntheticHead) -> None:
    """Write one sample as ``root/source_id.jpg`` + ``.mat`` in the 300W-LP format."""
    base = Path(root) / s.source_id
    base.parent.mkdir(parents=True, exist_ok=True)
    _common.save_jpeg(Path(f"{base}.jpg"), s.image, JPEG_QUALITY)
    _common.save_mat(
        Path(f"{base}.mat"),
        {
            "Pose_Para": s.extra["pose_para"],
            "pt2d": np.ascontiguousarray(s.landmarks.T, dtype=np.float64),
            "roi": np.array([_common.points_box(s.landmarks)], dtype=np.float64),
            "Shape_Para": np.zeros((199, 1), np.float32),
            "Exp_Para": np.zeros((29, 1), np.float32),
        },
    )


def write_synthetic(root: Path, n_per_subset: int, seed: int) -> dict:
    """Write a synthetic 300W-LP in the real layout under ``root``.

    Args:
        root: output folder (created if needed).
        n_per_subset: samples per subset; every subset's ``_Flip`` twin gets as many.
        seed: the dataset seed; the same seed writes identical bytes.

    Returns:
        Samples written per folder, e.g. ``{"AFW": 40, "AFW_Flip": 40, …}``.
    """
    counts = {f: 0 for f in FOLDERS}
    for s in synthetic_samples(n_per_subset, seed):
        write_sample(root, s)
        counts[s.subset] += 1
    return counts
