"""Keypoint conventions of COCO and HumanArt, in one place.

Everything that names, orders, pairs or weights human keypoints lives here so that the synthetic
writers, the readers, the ingestion job, the models and the evaluation agree by construction.

* COCO (https://cocodataset.org/#format-data): 17 keypoints in the order below, ``skeleton``
  1-based as in ``person_keypoints_*2017.json``, OKS sigmas from ``pycocotools.cocoeval``.
* HumanArt (https://github.com/IDEA-Research/HumanArt, CVPR 2023): images carry a ``category``
  (the scene) and annotations carry ``keypoints`` (the 17 COCO points) *and* ``keypoints_21``.
  The release notes only say "21 2D human keypoints"; the paper adds, to the 17 COCO points,
  the tips of both hands and both feet.  We therefore take ``keypoints_21`` = the 17 COCO
  keypoints in COCO order followed by ``left_finger, right_finger, left_toe, right_toe`` (the
  order of the four extras is our best reading of the release, and it is used only here).
* HumanArt scenes: the 20 scenarios of the paper under the three image folders of the release
  (``images/{real_human,3D_virtual_human,2D_virtual_human}/<scene>/``).  The public annotation
  release ships per-scene files for 19 of them (``training_humanart_<scene>.json``); the paper
  counts 12 2D scenes but its project page shows 11.  We take ``generated_image`` (the paper's
  AI-generated artwork) as the twelfth; a reader never requires a scene to be present, so the
  choice only matters for synthetic data.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
    "COCO_FLIP_PAIRS",
    "COCO_OKS_SIGMAS",
    "NUM_COCO_KEYPOINTS",
    "HUMANART_KEYPOINT_NAMES",
    "HUMANART_SKELETON",
    "HUMANART_FLIP_PAIRS",
    "NUM_HUMANART_KEYPOINTS",
    "SUPER_CATEGORIES",
    "HUMANART_SCENES",
    "COCO_SCENE",
    "COCO_SUPER_CATEGORY",
    "scenes_of",
    "super_category_of",
    "person_category",
]

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_COCO_KEYPOINTS = len(COCO_KEYPOINT_NAMES)

# 1-based joint indices, exactly the ``skeleton`` of the COCO person category.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

# 0-based (left, right) pairs swapped by a horizontal flip.
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)  # fmt: skip

# Per-keypoint OKS sigmas (pycocotools ``COCOeval.Params.kpt_oks_sigmas``); the eyes are the
# most precisely annotated points, the hips the least.
COCO_OKS_SIGMAS = np.array(
    [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
     .107, .107, .087, .087, .089, .089],
    dtype=np.float64,
)  # fmt: skip
COCO_OKS_SIGMAS.setflags(write=False)

HUMANART_KEYPOINT_NAMES: tuple[str, ...] = COCO_KEYPOINT_NAMES + (
    "left_finger",
    "right_finger",
    "left_toe",
    "right_toe",
)
NUM_HUMANART_KEYPOINTS = len(HUMANART_KEYPOINT_NAMES)

# The COCO skeleton plus wrist→finger-tip and ankle→toe-tip (1-based).
HUMANART_SKELETON: tuple[tuple[int, int], ...] = COCO_SKELETON + ((10, 18), (11, 19), (16, 20), (17, 21))

HUMANART_FLIP_PAIRS: tuple[tuple[int, int], ...] = COCO_FLIP_PAIRS + ((17, 18), (19, 20))

SUPER_CATEGORIES: tuple[str, ...] = ("real_human", "3D_virtual_human", "2D_virtual_human")

# scene -> super-category, in the release's folder names (``images/<super>/<scene>/``).
HUMANART_SCENES: dict[str, str] = {
    # 5 natural scenes: real people, photographed.
    "acrobatics": "real_human",
    "cosplay": "real_human",
    "dance": "real_human",
    "drama": "real_human",
    "movie": "real_human",
    # 3 artificial scenes whose humans are 3D objects.
    "garage_kits": "3D_virtual_human",
    "relief": "3D_virtual_human",
    "sculpture": "3D_virtual_human",
    # 12 artificial scenes whose humans are 2D depictions.
    "cartoon": "2D_virtual_human",
    "digital_art": "2D_virtual_human",
    "ink_painting": "2D_virtual_human",
    "kids_drawing": "2D_virtual_human",
    "mural": "2D_virtual_human",
    "oil_painting": "2D_virtual_human",
    "shadow_play": "2D_virtual_human",
    "sketch": "2D_virtual_human",
    "stained_glass": "2D_virtual_human",
    "ukiyoe": "2D_virtual_human",
    "watercolor": "2D_virtual_human",
    "generated_image": "2D_virtual_human",
}

# COCO is all photographs of real people: one scene, the natural super-category.
COCO_SCENE = "photo"
COCO_SUPER_CATEGORY = "real_human"


def scenes_of(super_category: str) -> tuple[str, ...]:
    """The HumanArt scenes of one super-category, in :data:`HUMANART_SCENES` order.

    Args:
        super_category: one of :data:`SUPER_CATEGORIES`.

    Returns:
        The scene names.

    Raises:
        ValueError: for an unknown super-category (the message lists the valid ones).
    """
    if super_category not in SUPER_CATEGORIES:
        raise ValueError(f"unknown super-category {super_category!r}; valid: {', '.join(SUPER_CATEGORIES)}")
    return tuple(s for s, sup in HUMANART_SCENES.items() if sup == super_category)


def super_category_of(scene: str) -> str:
    """The super-category of a scene (``photo`` — COCO — is ``real_human``).

    Args:
        scene: a HumanArt scene or :data:`COCO_SCENE`.

    Returns:
        ``real_human``, ``3D_virtual_human`` or ``2D_virtual_human``.

    Raises:
        ValueError: for an unknown scene (the message lists the valid ones).
    """
    if scene == COCO_SCENE:
        return COCO_SUPER_CATEGORY
    try:
        return HUMANART_SCENES[scene]
    except KeyError:
        valid = ", ".join([COCO_SCENE, *HUMANART_SCENES])
        raise ValueError(f"unknown scene {scene!r}; valid: {valid}") from None


def person_category() -> dict:
    """The COCO ``categories`` entry for people, as in ``person_keypoints_*2017.json``.

    Returns:
        A JSON-able dict with ``supercategory``, ``id`` (1), ``name``, ``keypoints`` (the 17 names)
        and ``skeleton`` (1-based pairs as lists).
    """
    return {
        "supercategory": "person",
        "id": 1,
        "name": "person",
        "keypoints": list(COCO_KEYPOINT_NAMES),
        "skeleton": [list(p) for p in COCO_SKELETON],
    }
