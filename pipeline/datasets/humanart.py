"""HumanArt (Ju et al., CVPR 2023): raw reader and synthetic writer.

Layout of the release (https://github.com/IDEA-Research/HumanArt, README "Dataset Download")::

    root/annotations/training_humanart.json            all scenes, train split
    root/annotations/validation_humanart.json          all scenes, val split
    root/annotations/{training,validation}_humanart_<scene>.json   one scene each
    root/images/{real_human,3D_virtual_human,2D_virtual_human}/<scene>/<image>.jpg

(The release also has ``*_coco.json`` and ``*_humanart_coco.json``, COCO re-packed and COCO +
HumanArt; they need COCO's images and are not written here.  It has no per-super-category file:
the per-scene files above are what the public release lists; per-domain evaluation sets are
built from ``validation_humanart.json`` by :mod:`pipeline.evaluate.coco_gt`.)

The files are COCO-style: images carry ``file_name`` (relative to the HumanArt root — we also
accept a leading ``HumanArt/``, as the release's mmpose configs use the parent folder as data
root), ``height``, ``width``, ``id``, ``page_url``, ``image_url``, ``picture_name``, ``author``,
``description`` and ``category`` (the scene); annotations carry ``keypoints`` (17 COCO points),
``keypoints_21`` (see :mod:`pipeline.keypoints`), ``self_contact``, ``num_keypoints``,
``num_keypoints_21``, ``iscrowd``, ``image_id``, ``area``, ``bbox``, ``category_id`` = 1, ``id`` and
``annotator``; no ``segmentation``.

Synthetic images are named ``<split>_NNNNNN.jpg`` (``train``/``val``, a per-scene counter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.base import Item, KeypointImage, Listing
from pipeline.datasets.coco import (
    flatten_keypoints,
    ground_truth_entry,
    items_from_annotations,
    load_keypoint_image,
    read_annotation_file,
    write_json,
)
from pipeline.keypoints import HUMANART_SCENES, NUM_HUMANART_KEYPOINTS, person_category
from pipeline.synth.figures import render_scene, style_for

__all__ = ["NAME", "SPLITS", "SPLIT_FILE_WORDS", "FILE_NAME_PREFIX", "annotation_path", "scene_annotation_path", "list_items",
           "load_item", "write_synthetic"]  # fmt: skip

NAME = "humanart"
SPLITS = ("train", "val")
SPLIT_FILE_WORDS = {"train": "training", "val": "validation"}  # the release's file-name words
# Image paths in the release's JSONs may start with the dataset folder itself (mmpose's data root
# is the folder above it); readers drop it so that source ids are relative to the HumanArt root.
FILE_NAME_PREFIX = "HumanArt"

_SYNTH_SIZES = ((320, 240), (240, 320), (288, 288))


def _word(split: str) -> str:
    try:
        return SPLIT_FILE_WORDS[split]
    except KeyError:
        raise ValueError(f"unknown HumanArt split {split!r}; valid: {', '.join(SPLITS)}") from None


def annotation_path(raw_root: Path, split: str) -> Path:
    """``annotations/{training,validation}_humanart.json`` under ``raw_root``.

    Raises:
        ValueError: for a split other than ``train`` / ``val``.
    """
    return Path(raw_root) / "annotations" / f"{_word(split)}_humanart.json"


def scene_annotation_path(raw_root: Path, split: str, scene: str) -> Path:
    """``annotations/{training,validation}_humanart_<scene>.json`` under ``raw_root``.

    Raises:
        ValueError: for an unknown split.
    """
    return Path(raw_root) / "annotations" / f"{_word(split)}_humanart_{scene}.json"


def list_items(raw_root: Path, split: str) -> Listing:
    """List a HumanArt split: one item per image with person annotations.

    Args:
        raw_root: the HumanArt root (holding ``annotations/`` and ``images/``).
        split: ``train`` or ``val``.

    Returns:
        The :class:`Listing`; ``source_id`` is ``images/<super>/<scene>/<file>``, ``subset`` and
        ``extra["scene"]`` the scene, ``extra["super_category"]`` its super-category, and each
        annotation also has ``keypoints_21``.

    Raises:
        LayoutError: the annotation file is missing, does not parse or is not COCO-style.
        ValueError: an unknown split.
    """
    raw_root = Path(raw_root)
    path = annotation_path(raw_root, split)
    parsed = read_annotation_file(
        path,
        images_root_rel="",
        split=split,
        label=path.relative_to(raw_root).as_posix(),
        strip_prefix=FILE_NAME_PREFIX,
    )
    return items_from_annotations(parsed, split)


def load_item(raw_root: Path, item: Item) -> KeypointImage:
    """Decode one listed HumanArt image with its annotations.

    Raises:
        BadRecord: the image is missing, does not decode, or has the wrong size.
    """
    return load_keypoint_image(raw_root, item)


def write_synthetic(
    root: Path, n_train_per_scene: int, n_val_per_scene: int, seed: int, *, return_ground_truth: bool = False
) -> dict:
    """Write a synthetic HumanArt in the release's layout, every scene in its own style.

    Args:
        root: the dataset root to create.
        n_train_per_scene: training images per scene (20 scenes).
        n_val_per_scene: validation images per scene.
        seed: the random seed (same seed ⇒ identical bytes).
        return_ground_truth: also return the renderer's ground truth (for tests).

    Returns:
        Per split (``train``, ``val``): ``annotation_file`` (relative to ``root``), ``scene_files``
        (scene → relative path), ``n_images``, ``n_annotations``, ``n_crowd``, and with
        ``return_ground_truth`` ``ground_truth``: ``{source_id: [entry, ...]}`` (see
        :func:`pipeline.datasets.coco.ground_truth_entry`; each entry has ``keypoints_21``).
    """
    root = Path(root)
    summary: dict = {}
    image_id, ann_id = 0, 0
    for split_index, (split, n_per_scene) in enumerate((("train", n_train_per_scene), ("val", n_val_per_scene))):
        word = _word(split)
        images, annotations, truth = [], [], {}
        per_scene: dict[str, tuple[list, list]] = {s: ([], []) for s in HUMANART_SCENES}
        n_crowd = 0
        for scene_index, (scene, super_category) in enumerate(HUMANART_SCENES.items()):
            style = style_for(scene)
            folder = root / "images" / super_category / scene
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_scene):
                image_id += 1
                img_rng = np.random.default_rng([seed, split_index, scene_index, i])
                w, h = _SYNTH_SIZES[int(img_rng.integers(len(_SYNTH_SIZES)))]
                rendered = render_scene(img_rng, w, h, style)
                file_name = f"images/{super_category}/{scene}/{split}_{i + 1:06d}.jpg"
                Image.fromarray(rendered.image).save(root / file_name, "JPEG", quality=92)
                n_people = sum(1 for p in rendered.persons if not p.iscrowd)
                image = {
                    "file_name": file_name, "height": h, "width": w, "id": image_id,
                    "page_url": "", "image_url": "", "picture_name": f"{scene}_{split}_{i + 1}",
                    "author": "hpe-pipeline synthetic writer",
                    "description": f"a {scene.replace('_', ' ')} of {n_people} {'person' if n_people == 1 else 'people'}",
                    "category": scene,
                }  # fmt: skip
                images.append(image)
                per_scene[scene][0].append(image)
                entries = []
                for person in rendered.persons:
                    ann_id += 1
                    n_crowd += person.iscrowd
                    ann = {
                        "keypoints": flatten_keypoints(person.keypoints17),
                        "keypoints_21": flatten_keypoints(person.keypoints),
                        "self_contact": [],
                        "num_keypoints": person.num_keypoints,
                        "num_keypoints_21": person.num_keypoints_21,
                        "iscrowd": person.iscrowd,
                        "image_id": image_id,
                        "area": person.area,
                        "bbox": list(person.bbox),
                        "category_id": 1,
                        "id": ann_id,
                        "annotator": int(img_rng.integers(1, 40)),
                    }
                    annotations.append(ann)
                    per_scene[scene][1].append(ann)
                    entries.append(ground_truth_entry(ann_id, person, NUM_HUMANART_KEYPOINTS))
                truth[file_name] = entries

        def doc(imgs: list, anns: list, what: str, word: str = word) -> dict:
            return {
                "info": {
                    "description": f"synthetic Human-Art {word} annotations ({what}), hpe-pipeline",
                    "version": "1.0",
                    "year": 2023,
                },
                "images": imgs,
                "annotations": anns,
                "categories": [person_category()],
            }

        path = annotation_path(root, split)
        write_json(path, doc(images, annotations, "all scenes"))
        scene_files = {}
        for scene, (imgs, anns) in per_scene.items():
            scene_path = scene_annotation_path(root, split, scene)
            write_json(scene_path, doc(imgs, anns, scene))
            scene_files[scene] = scene_path.relative_to(root).as_posix()
        summary[split] = {
            "annotation_file": path.relative_to(root).as_posix(),
            "scene_files": scene_files,
            "n_images": len(images),
            "n_annotations": len(annotations),
            "n_crowd": n_crowd,
        }
        if return_ground_truth:
            summary[split]["ground_truth"] = truth
    return summary


def ground_truth_source(raw_root: Path) -> tuple[Path, str, str | None]:
    """What :func:`pipeline.evaluate.coco_gt.write_ground_truth` reads for HumanArt's validation
    split: (annotation file, folder of ``file_name`` values, prefix to strip)."""
    return annotation_path(raw_root, "val"), "", FILE_NAME_PREFIX
