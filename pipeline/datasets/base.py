"""The contract between dataset readers and the ingestion job.

A dataset module (one per dataset: ``w300lp.py``, ``aflw2000.py``, ``biwi.py``, …) provides

* ``list_items(raw_root) -> Listing`` – cheap, runs on the driver; one :class:`Item` per
  unit that the dataset *claims* to hold (an image stem, an npz row, a COCO image), plus the
  units already found bad while listing (an annotation pointing to no image).  Items and
  listing-time rejects together define "counts in": every unit ends up kept, filtered or
  quarantined.  Raises :class:`LayoutError` when ``raw_root`` does not hold the dataset's
  layout at all (or an index file such as a COCO JSON does not parse: a clear error naming
  the file, never a traceback from deep inside a library).
* ``load_item(raw_root, item) -> HeadPoseSample`` (or a keypoint sample) – runs inside
  Ray Data workers; raises :class:`BadRecord` naming the file and field on bad input.
* ``write_synthetic(root, ...)`` – writes a synthetic copy of the dataset in the real layout.

Readers return labels already converted to the canonical conventions
(:mod:`pipeline.geometry`), so nothing downstream knows which dataset a record came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class LayoutError(ValueError):
    """``raw_root`` does not look like the dataset at all (wrong directory, missing files)."""


class BadRecord(ValueError):
    """One record is unusable; it goes to the quarantine table with this reason.

    Args:
        file: path of the offending file, relative to the raw root where possible.
        field: the field or key that is wrong (``"Pose_Para"``, ``"image"``, ``"pose.txt:rotation"``).
        reason: a short human-readable reason.
    """

    def __init__(self, file: str, field: str, reason: str):
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One unit listed by a reader: small, picklable, cheap.

    Attributes:
        source_id: the sample's path relative to the raw root (``AFW/AFW_134212_1_0`` without
            extension for paired files; ``BIWI_noTrack.npz#00012`` for rows of an npz).
        split: ``train`` / ``test`` / ``val``.
        subset: a sub-collection (300W-LP subset such as ``HELEN_Flip``, BIWI sequence ``07``).
        flip: the sample is a mirrored twin of another one (300W-LP ``*_Flip``).
        extra: reader-private, JSON-serialisable details needed by ``load_item``.
    """

    source_id: str
    split: str
    subset: str = ""
    flip: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """A unit found bad while listing; it is quarantined without being loaded.

    ``units`` is how many counted units it stands for (1 for a head-pose sample or a person
    annotation).
    """

    source_id: str
    split: str
    file: str
    field: str
    reason: str
    units: int = 1


@dataclass
class Listing:
    """What ``list_items`` returns."""

    items: list[Item]
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class HeadPoseSample:
    """A decoded head-pose sample in canonical conventions.

    Attributes:
        image: H×W×3 uint8, RGB.
        yaw, pitch, roll: canonical Euler angles in degrees (see :mod:`pipeline.geometry`).
        face_box: ``(x0, y0, x1, y1)`` tight face box in image pixels (the landmarks' box, or
            the projected head box for BIWI); ``None`` when the whole image is the face crop
            (pre-cropped data such as ``BIWI_noTrack.npz``).
        landmarks: (68, 2) float image-pixel coordinates, or ``None`` when the dataset has none.
    """

    image: np.ndarray
    yaw: float
    pitch: float
    roll: float
    face_box: tuple[float, float, float, float] | None
    landmarks: np.ndarray | None = None


@dataclass
class PersonInstance:
    """One person annotation of a COCO-style keypoint dataset, as in the annotation file.

    Attributes:
        annotation_id: the annotation's ``id``.
        bbox: ``(x, y, w, h)`` in image pixels (COCO ``bbox``).
        keypoints: (17, 3) float ``[x, y, v]`` in COCO keypoint order, image pixels.
        keypoints_21: (21, 3) HumanArt ``keypoints_21`` or ``None``.
        area: COCO ``area``.
        iscrowd: COCO ``iscrowd`` (crowd regions are kept for evaluation, not for training).
        num_keypoints: COCO ``num_keypoints``.
    """

    annotation_id: int
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray
    keypoints_21: np.ndarray | None
    area: float
    iscrowd: int
    num_keypoints: int


@dataclass
class KeypointImage:
    """A decoded image of a keypoint dataset with its person annotations.

    Attributes:
        image: H×W×3 uint8, RGB.
        image_id: COCO image ``id``.
        file_name: path of the image relative to the raw root.
        scene: HumanArt scene (``cartoon``, ``sketch``, …) or ``photo`` for COCO.
        super_category: HumanArt super-category (``2D_virtual_human``, ``3D_virtual_human``,
            ``real_human``) or ``real_human`` for COCO.
        instances: the image's person annotations.
    """

    image: np.ndarray
    image_id: int
    file_name: str
    scene: str
    super_category: str
    instances: list[PersonInstance]
