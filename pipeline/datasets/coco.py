"""COCO person keypoints: raw reader, synthetic writer, and the COCO-style annotation parser.

Layout (https://cocodataset.org/#download, 2017 release)::

    root/annotations/person_keypoints_train2017.json
    root/annotations/person_keypoints_val2017.json
    root/train2017/000000xxxxxx.jpg
    root/val2017/000000xxxxxx.jpg

An annotation file holds ``info``, ``licenses``, ``images`` (``id``, ``file_name`` — the bare file
name, relative to ``<split>2017/`` — ``width``, ``height``, …), ``annotations`` (``id``,
``image_id``, ``category_id`` = 1, ``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd``, ``keypoints``
= 17 × ``[x, y, v]`` flattened, ``num_keypoints``, ``segmentation``) and ``categories`` (the person
category with keypoint names and the 1-based skeleton).

The counted unit is the *person annotation*: :func:`list_items` returns one :class:`Item` per image
with its valid annotations, and one :class:`Rejected` (``units=1``) per annotation that cannot be
used (pointing to no image, keypoints of the wrong length or not finite numbers, a box of
non-positive size, entirely outside its image or reaching more than one image size past it, an
id that does not fit in 64 bits, …).  Crowd annotations (``iscrowd=1``) are kept:
ingestion leaves them out of training records, evaluation needs them in the ground truth.

:func:`read_annotation_file` is the parser shared with HumanArt (same format plus an image
``category`` and ``keypoints_21``) and with :mod:`pipeline.evaluate.coco_gt`.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.base import BadRecord, Item, KeypointImage, LayoutError, Listing, PersonInstance, Rejected
from pipeline.keypoints import (
    COCO_SCENE,
    COCO_SUPER_CATEGORY,
    HUMANART_SCENES,
    NUM_COCO_KEYPOINTS,
    NUM_HUMANART_KEYPOINTS,
    SUPER_CATEGORIES,
    person_category,
)
from pipeline.synth.figures import PersonGT, render_scene, style_for

__all__ = [
    "NAME",
    "SPLITS",
    "AnnotationFile",
    "annotation_path",
    "read_annotation_file",
    "items_from_annotations",
    "load_keypoint_image",
    "list_items",
    "load_item",
    "write_synthetic",
    "write_json",
    "flatten_keypoints",
    "ground_truth_entry",
]

NAME = "coco"
SPLITS = ("train", "val")

# Synthetic image sizes: COCO's are mostly 640×480 landscape or portrait; ours are half that.
_SYNTH_SIZES = ((320, 240), (240, 320), (320, 214))

# Ids are stored in int64 Parquet columns: a larger integer cannot be written.
_INT64 = (-(2**63), 2**63 - 1)
# COCO writes boxes with two decimals; a side below this is corrupt, and a box of a subnormal
# size makes the top-down crop box collapse to a point (division by zero in its mapping).
_MIN_BOX_SIDE = 0.01


# --------------------------------------------------------------------------------------------
# Parsing (shared with HumanArt and the ground-truth builder)
# --------------------------------------------------------------------------------------------


@dataclass
class AnnotationFile:
    """A COCO-style keypoint annotation file, checked.

    Attributes:
        label: how the file is named in messages and :class:`Rejected` entries (relative to the
            raw root where possible).
        images: valid images by id: ``id``, ``source_id`` (image path relative to the raw root),
            ``file_name`` (as in the file), ``width``, ``height``, ``scene``, ``super_category``, and
            ``raw`` (the image entry as read).
        annotations: valid person annotations, normalised: ``id``, ``image_id``, ``bbox``, ``area``,
            ``iscrowd``, ``keypoints`` (51 floats), ``num_keypoints``, ``keypoints_21`` (63 floats or
            ``None``), ``segmentation`` (as in the file, or ``None``).
        rejected: annotations that cannot be used.
        n_annotations: number of entries in the file's ``annotations``.
    """

    label: str
    images: dict[int, dict]
    annotations: list[dict]
    rejected: list[Rejected] = field(default_factory=list)
    n_annotations: int = 0


def annotation_path(raw_root: Path, split: str) -> Path:
    """``annotations/person_keypoints_{split}2017.json`` under ``raw_root``.

    Raises:
        ValueError: for a split other than ``train`` / ``val``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown COCO split {split!r}; valid: {', '.join(SPLITS)}")
    return Path(raw_root) / "annotations" / f"person_keypoints_{split}2017.json"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite_numbers(values, n: int) -> str | None:
    """Why ``values`` is not a list of ``n`` finite numbers, or ``None`` when it is."""
    if not isinstance(values, list):
        return f"expected a list of {n} numbers, got {type(values).__name__}"
    if len(values) != n:
        return f"expected {n} values, got {len(values)}"
    for i, v in enumerate(values):
        if not _is_number(v):
            return f"value {i} is not a number: {v!r}"
        if not math.isfinite(v):
            return f"value {i} is not finite: {v!r}"
    return None


def _keypoint_problem(values, n_joints: int) -> str | None:
    why = _finite_numbers(values, 3 * n_joints)
    if why is not None:
        return why
    bad_v = [v for v in values[2::3] if v not in (0, 1, 2)]
    if bad_v:
        return f"visibility flags must be 0, 1 or 2, got {bad_v[0]!r}"
    return None


def _is_int64(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and _INT64[0] <= x <= _INT64[1]


def _beyond_image(x: float, y: float, width: int, height: int) -> bool:
    """The point lies more than one image size outside the ``width``×``height`` image.

    Boxes and keypoints may pass the border a little (people at the edge), never by a whole
    image: such a value is corrupt, and a top-down crop around such a box would need a canvas
    of its size (a MemoryError, or an OverflowError for a box near the float maximum), while
    keypoints beyond the float32 range would turn into inf in the Parquet columns.
    """
    return not (-width <= x <= 2 * width and -height <= y <= 2 * height)


def _far_keypoint(values: list, width: int, height: int) -> str | None:
    """Why a flat ``[x, y, v, …]`` list has a point far outside the image, or ``None``."""
    for j in range(0, len(values), 3):
        if _beyond_image(values[j], values[j + 1], width, height):
            return (
                f"point {j // 3} ({values[j]}, {values[j + 1]}) lies more than one image size "
                f"outside the {width}x{height} image"
            )
    return None


def _source_id(images_root_rel: str, file_name: str, strip_prefix: str | None) -> str | None:
    """Image path relative to the raw root, or ``None`` when ``file_name`` escapes it."""
    path = posixpath.normpath(posixpath.join(images_root_rel, file_name.replace("\\", "/")))
    if strip_prefix and path.startswith(strip_prefix + "/"):
        path = path[len(strip_prefix) + 1 :]
    if path.startswith(("../", "/")) or path in ("..", "."):
        return None
    return path


def _scene_of(image: dict, source_id: str) -> tuple[str, str]:
    """(scene, super-category): HumanArt images carry ``category``; COCO images are photos."""
    scene = image.get("category")
    if not isinstance(scene, str) or not scene:
        return COCO_SCENE, COCO_SUPER_CATEGORY
    parts = source_id.split("/")
    # The release's folders say it directly: images/<super>/<scene>/<file>.
    if len(parts) >= 4 and parts[0] == "images" and parts[1] in SUPER_CATEGORIES:
        return scene, parts[1]
    return scene, HUMANART_SCENES.get(scene, "unknown")


def read_annotation_file(
    ann_path: Path,
    *,
    images_root_rel: str,
    split: str,
    label: str | None = None,
    strip_prefix: str | None = None,
) -> AnnotationFile:
    """Parse and check a COCO-style keypoint annotation file (COCO or HumanArt).

    Args:
        ann_path: the JSON file.
        images_root_rel: folder, relative to the raw root, that the images' ``file_name`` values
            are relative to (``val2017`` for COCO, ``""`` for HumanArt).
        split: the split, recorded in :class:`Rejected` entries.
        label: name of the file in messages (default: ``ann_path`` as given).
        strip_prefix: a leading path component to drop from ``file_name`` (HumanArt's JSONs may
            name images ``HumanArt/images/...`` relative to the folder *above* the dataset).

    Returns:
        The checked :class:`AnnotationFile`.

    Raises:
        LayoutError: the file is missing, does not parse, or lacks ``images`` / ``annotations`` lists.
    """
    ann_path = Path(ann_path)
    label = label or str(ann_path)
    if not ann_path.is_file():
        raise LayoutError(f"{label}: annotation file not found")
    try:
        doc = json.loads(ann_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{label}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise LayoutError(f"{label}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise LayoutError(f"{label}: missing '{key}' list (not a COCO-style annotation file)")

    person_ids = {1}
    cats = doc.get("categories")
    if isinstance(cats, list):
        named = {
            c["id"] for c in cats if isinstance(c, dict) and c.get("name") == "person" and isinstance(c.get("id"), int)
        }
        person_ids = named or person_ids

    images: dict[int, dict] = {}
    bad_images: dict[int, tuple[str, str]] = {}  # image id -> (field, reason)
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
            continue  # no usable id: no annotation can point to it, so it cannot hide any unit
        iid = img["id"]
        problem = None
        if not _is_int64(iid):
            problem = (f"images[{i}].id", f"id {iid} does not fit in 64 bits")
        elif iid in images or iid in bad_images:
            problem = (f"images[{i}].id", f"duplicate image id {iid}")
        elif not isinstance(img.get("file_name"), str) or not img["file_name"]:
            problem = (f"images[{i}].file_name", "missing file_name")
        else:
            for dim in ("width", "height"):
                v = img.get(dim)
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    problem = (f"images[{i}].{dim}", f"expected a positive integer, got {v!r}")
                    break
        source_id = None
        if problem is None:
            source_id = _source_id(images_root_rel, img["file_name"], strip_prefix)
            if source_id is None:
                problem = (f"images[{i}].file_name", f"path leaves the dataset root: {img['file_name']!r}")
        if problem is not None:
            bad_images.setdefault(iid, problem)
            continue
        scene, super_category = _scene_of(img, source_id)
        images[iid] = {
            "id": iid,
            "source_id": source_id,
            "file_name": img["file_name"],
            "width": img["width"],
            "height": img["height"],
            "scene": scene,
            "super_category": super_category,
            "raw": img,
        }

    out = AnnotationFile(label=label, images=images, annotations=[], n_annotations=len(doc["annotations"]))
    seen_ids: set[int] = set()
    for k, ann in enumerate(doc["annotations"]):
        where = f"annotations[{k}]"
        iid = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool):
            iid = None  # an id that cannot be looked up (a list, a string, …) points to no image
        image = images.get(iid)
        source_id = image["source_id"] if image else f"{label}#{where}"

        def reject(fld: str, reason: str, source_id=source_id) -> None:
            out.rejected.append(Rejected(source_id=source_id, split=split, file=label, field=fld, reason=reason))

        if not isinstance(ann, dict):
            reject(where, f"expected an object, got {type(ann).__name__}")
            continue
        aid = ann.get("id")
        if not isinstance(aid, int) or isinstance(aid, bool):
            reject(f"{where}.id", f"expected an integer id, got {aid!r}")
            continue
        if not _is_int64(aid):
            reject(f"{where}.id", f"id {aid} does not fit in 64 bits")
            continue
        if aid in seen_ids:
            reject(f"{where}.id", f"duplicate annotation id {aid}")
            continue
        seen_ids.add(aid)
        if image is None:
            if iid in bad_images:
                fld, reason = bad_images[iid]
                reject(fld, f"image {iid} is unusable: {reason}")
            else:
                reject(f"{where}.image_id", f"points to no image (image_id={ann.get('image_id')!r})")
            continue
        category = ann.get("category_id", 1)
        if not isinstance(category, int) or category not in person_ids:
            reject(f"{where}.category_id", f"not a person annotation (category_id={ann.get('category_id')!r})")
            continue
        why = _keypoint_problem(ann.get("keypoints"), NUM_COCO_KEYPOINTS)
        if why:
            reject(f"{where}.keypoints", why)
            continue
        kp21 = ann.get("keypoints_21")
        if kp21 is not None:
            why = _keypoint_problem(kp21, NUM_HUMANART_KEYPOINTS)
            if why:
                reject(f"{where}.keypoints_21", why)
                continue
        bbox = ann.get("bbox")
        why = _finite_numbers(bbox, 4)
        if why:
            reject(f"{where}.bbox", why)
            continue
        x, y, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            reject(f"{where}.bbox", f"non-positive size {bw}x{bh}")
            continue
        if bw < _MIN_BOX_SIDE or bh < _MIN_BOX_SIDE:
            reject(f"{where}.bbox", f"size {bw}x{bh} is below {_MIN_BOX_SIDE} pixel")
            continue
        W, H = image["width"], image["height"]
        if x >= W or y >= H or x + bw <= 0 or y + bh <= 0:
            reject(f"{where}.bbox", f"box {bbox} lies entirely outside the {W}x{H} image")
            continue
        if _beyond_image(x, y, W, H) or _beyond_image(x + bw, y + bh, W, H):
            reject(f"{where}.bbox", f"box {bbox} reaches more than one image size outside the {W}x{H} image")
            continue
        far = _far_keypoint(ann["keypoints"], W, H)
        if far:
            reject(f"{where}.keypoints", far)
            continue
        far = _far_keypoint(kp21, W, H) if kp21 is not None else None
        if far:
            reject(f"{where}.keypoints_21", far)
            continue
        area = ann.get("area")
        if not _is_number(area) or not math.isfinite(area) or area < 0 or area > 9 * W * H:
            reject(
                f"{where}.area",
                f"expected a non-negative number within the image grown by its size on every side "
                f"(at most {9 * W * H}), got {area!r}",
            )
            continue
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            reject(f"{where}.iscrowd", f"expected 0 or 1, got {iscrowd!r}")
            continue
        kps = [float(v) for v in ann["keypoints"]]
        n_kp = ann.get("num_keypoints")
        if not isinstance(n_kp, int) or isinstance(n_kp, bool) or not 0 <= n_kp <= NUM_COCO_KEYPOINTS:
            n_kp = sum(1 for v in kps[2::3] if v > 0)  # COCO's definition
        out.annotations.append({
            "id": aid,
            "image_id": iid,
            "bbox": [float(v) for v in bbox],
            "area": float(area),
            "iscrowd": int(iscrowd),
            "keypoints": kps,
            "num_keypoints": int(n_kp),
            "keypoints_21": None if kp21 is None else [float(v) for v in kp21],
            "segmentation": ann.get("segmentation"),
        })  # fmt: skip
    return out


def items_from_annotations(parsed: AnnotationFile, split: str) -> Listing:
    """One :class:`Item` per image that has at least one valid annotation.

    Images without a usable annotation carry no counted unit, so listing them would only cost a
    decode.  ``Item.extra`` holds plain JSON data: ``annotation_file``, ``image_id``, ``width``,
    ``height``, ``scene``, ``super_category`` and ``annotations`` (``id``, ``bbox``, ``area``,
    ``iscrowd``, ``keypoints``, ``num_keypoints``, ``keypoints_21``).

    Args:
        parsed: a checked annotation file.
        split: the split recorded in the items.

    Returns:
        The :class:`Listing` (items in image-id order, and the file's rejected annotations).
    """
    by_image: dict[int, list[dict]] = {}
    for a in parsed.annotations:
        by_image.setdefault(a["image_id"], []).append(
            {k: a[k] for k in ("id", "bbox", "area", "iscrowd", "keypoints", "num_keypoints", "keypoints_21")}
        )
    items = []
    for iid in sorted(by_image):
        img = parsed.images[iid]
        items.append(
            Item(
                source_id=img["source_id"],
                split=split,
                subset=img["scene"],
                extra={
                    "annotation_file": parsed.label,
                    "image_id": iid,
                    "width": img["width"],
                    "height": img["height"],
                    "scene": img["scene"],
                    "super_category": img["super_category"],
                    "annotations": by_image[iid],
                },
            )
        )
    return Listing(items=items, rejected=list(parsed.rejected))


def load_keypoint_image(raw_root: Path, item: Item) -> KeypointImage:
    """Decode an item's image and attach its annotations (COCO and HumanArt alike).

    Args:
        raw_root: the dataset's raw root.
        item: an item from ``list_items``.

    Returns:
        The :class:`KeypointImage`.

    Raises:
        BadRecord: the image is missing, does not decode, or its size differs from the annotation
            file's (its keypoints would then be in the wrong frame).
    """
    path = Path(raw_root) / item.source_id
    if not path.is_file():
        raise BadRecord(item.source_id, "image", "missing file")
    try:
        with Image.open(path) as im:
            im.load()  # decode fully now: a truncated file fails here, not later in training
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types (OSError, SyntaxError, ValueError, …)
        raise BadRecord(item.source_id, "image", f"cannot decode: {e}") from None
    ex = item.extra
    if rgb.shape[:2] != (ex["height"], ex["width"]):
        raise BadRecord(
            item.source_id,
            "image",
            f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the annotation's {ex['width']}x{ex['height']}",
        )
    instances = [
        PersonInstance(
            annotation_id=a["id"],
            bbox=tuple(a["bbox"]),
            keypoints=np.asarray(a["keypoints"], dtype=np.float64).reshape(NUM_COCO_KEYPOINTS, 3),
            keypoints_21=None
            if a["keypoints_21"] is None
            else np.asarray(a["keypoints_21"], dtype=np.float64).reshape(NUM_HUMANART_KEYPOINTS, 3),
            area=a["area"],
            iscrowd=a["iscrowd"],
            num_keypoints=a["num_keypoints"],
        )
        for a in ex["annotations"]
    ]
    return KeypointImage(
        image=rgb,
        image_id=ex["image_id"],
        file_name=item.source_id,
        scene=ex["scene"],
        super_category=ex["super_category"],
        instances=instances,
    )


# --------------------------------------------------------------------------------------------
# COCO reader
# --------------------------------------------------------------------------------------------


def list_items(raw_root: Path, split: str) -> Listing:
    """List a COCO split: one item per image with person annotations.

    Args:
        raw_root: the COCO root (holding ``annotations/``, ``train2017/``, ``val2017/``).
        split: ``train`` or ``val``.

    Returns:
        The :class:`Listing`; ``source_id`` is ``<split>2017/<file_name>``.

    Raises:
        LayoutError: the annotation file is missing, does not parse or is not COCO-style.
        ValueError: an unknown split.
    """
    raw_root = Path(raw_root)
    path = annotation_path(raw_root, split)
    parsed = read_annotation_file(
        path, images_root_rel=f"{split}2017", split=split, label=path.relative_to(raw_root).as_posix()
    )
    return items_from_annotations(parsed, split)


def load_item(raw_root: Path, item: Item) -> KeypointImage:
    """Decode one listed COCO image with its annotations (see :func:`load_keypoint_image`)."""
    return load_keypoint_image(raw_root, item)


# --------------------------------------------------------------------------------------------
# Synthetic writer
# --------------------------------------------------------------------------------------------


def write_json(path: Path, doc: dict) -> None:
    """Write compact JSON (like the real release) atomically: a temp file, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False))
    os.replace(tmp, path)


def flatten_keypoints(kps: np.ndarray) -> list:
    """``[x, y, v, ...]`` with integer visibility flags, as COCO writes them.

    Args:
        kps: (J, 3) ``[x, y, v]`` rows.

    Returns:
        The flat list of ``3J`` values.
    """
    out: list = []
    for x, y, v in kps:
        out += [float(x), float(y), int(v)]
    return out


def ground_truth_entry(annotation_id: int, person: PersonGT, n_joints: int) -> dict:
    """The writer's ground truth of one annotation (what a reader must give back exactly).

    Args:
        annotation_id: the annotation's id.
        person: the rendered person.
        n_joints: 17 (COCO) or 21 (HumanArt, which also keeps the 17).

    Returns:
        ``id``, ``keypoints`` ((17, 3) list), ``keypoints_21`` ((21, 3) list or ``None``), ``bbox``,
        ``area``, ``iscrowd``, ``num_keypoints``.
    """
    return {
        "id": annotation_id,
        "keypoints": person.keypoints17.tolist(),
        "keypoints_21": person.keypoints.tolist() if n_joints == NUM_HUMANART_KEYPOINTS else None,
        "bbox": list(person.bbox),
        "area": person.area,
        "iscrowd": person.iscrowd,
        "num_keypoints": person.num_keypoints,
    }


def write_synthetic(
    root: Path, n_train_images: int, n_val_images: int, seed: int, *, return_ground_truth: bool = False
) -> dict:
    """Write a synthetic COCO keypoints dataset in the real layout.

    Images are photo-style renders (:func:`pipeline.synth.figures.render_scene`, style ``photo``);
    image ids are sparse random 6-digit numbers as in COCO, file names ``%012d.jpg``.  The output
    is a pure function of the arguments (same seed ⇒ identical bytes).

    Args:
        root: the dataset root to create.
        n_train_images: images in ``train2017``.
        n_val_images: images in ``val2017``.
        seed: the random seed.
        return_ground_truth: also return the renderer's ground truth (for tests; it is as big as
            the annotation files, so the pipeline's stage summary leaves it out).

    Returns:
        Per split (``train``, ``val``): ``annotation_file`` (relative to ``root``), ``n_images``,
        ``n_annotations``, ``n_crowd``, and with ``return_ground_truth`` ``ground_truth``:
        ``{source_id: [entry, ...]}`` with the entries of :func:`ground_truth_entry`, straight
        from the renderer.
    """
    root = Path(root)
    style = style_for(COCO_SCENE)
    rng = np.random.default_rng([seed, 0])
    n_total = n_train_images + n_val_images
    image_ids = rng.choice(np.arange(1, 1_000_000), size=n_total, replace=False)
    ann_id = int(rng.integers(100_000, 200_000))
    summary: dict = {}
    offset = 0
    for split_index, (split, n_images) in enumerate((("train", n_train_images), ("val", n_val_images))):
        img_dir = root / f"{split}2017"
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, truth = [], [], {}
        n_crowd = 0
        for i in range(n_images):
            iid = int(image_ids[offset + i])
            img_rng = np.random.default_rng([seed, 1 + split_index, i])
            w, h = _SYNTH_SIZES[int(img_rng.integers(len(_SYNTH_SIZES)))]
            scene = render_scene(img_rng, w, h, style)
            file_name = f"{iid:012d}.jpg"
            Image.fromarray(scene.image).save(img_dir / file_name, "JPEG", quality=92)
            images.append({
                "license": 1, "file_name": file_name, "coco_url": "", "height": h, "width": w,
                "date_captured": "2013-11-14 00:00:00", "flickr_url": "", "id": iid,
            })  # fmt: skip
            entries = []
            for person in scene.persons:
                ann_id += 1
                n_crowd += person.iscrowd
                annotations.append({
                    "segmentation": person.segmentation,
                    "num_keypoints": person.num_keypoints,
                    "area": person.area,
                    "iscrowd": person.iscrowd,
                    "keypoints": flatten_keypoints(person.keypoints17),
                    "image_id": iid,
                    "bbox": list(person.bbox),
                    "category_id": 1,
                    "id": ann_id,
                })  # fmt: skip
                entries.append(ground_truth_entry(ann_id, person, NUM_COCO_KEYPOINTS))
            truth[f"{split}2017/{file_name}"] = entries
        offset += n_images
        doc = {
            "info": {
                "description": "synthetic COCO-format person keypoints (hpe-pipeline)",
                "url": "",
                "version": "1.0",
                "year": 2017,
                "contributor": "hpe-pipeline synthetic writer",
                "date_created": "2017/09/01",
            },
            "licenses": [{"url": "", "id": 1, "name": "synthetic, no rights reserved"}],
            "images": images,
            "annotations": annotations,
            "categories": [person_category()],
        }
        path = annotation_path(root, split)
        write_json(path, doc)
        summary[split] = {
            "annotation_file": path.relative_to(root).as_posix(),
            "n_images": n_images,
            "n_annotations": len(annotations),
            "n_crowd": n_crowd,
        }
        if return_ground_truth:
            summary[split]["ground_truth"] = truth
    return summary


def ground_truth_source(raw_root: Path) -> tuple[Path, str, str | None]:
    """What :func:`pipeline.evaluate.coco_gt.write_ground_truth` reads for COCO's evaluation split:
    (annotation file, folder its ``file_name`` values are relative to, prefix to strip)."""
    return annotation_path(raw_root, "val"), "val2017", None
