"""COCO-format keypoint ground truth per split, domain and scene, and COCO keypoint AP.

VLPose reports COCO keypoint AP on COCO val2017 and on HumanArt's validation set per
super-category (``real_human``, ``3D_virtual_human``, ``2D_virtual_human``) and per scene.  The
ground truth for each of those is a COCO annotation file that ``pycocotools.coco.COCO`` loads as
is; :func:`write_ground_truth` builds them all from the raw annotation file with the *same* checks
as the readers (:func:`pipeline.datasets.coco.read_annotation_file`), so an annotation the ingestion
quarantined is not in the ground truth either.  Images keep their id; ``file_name`` becomes the
image path relative to the raw root, i.e. the ``source_id`` of the ingested records, so
predictions can be joined back by either.

:func:`coco_keypoint_ap` wraps ``COCOeval(iouType="keypoints")``
(https://cocodataset.org/#keypoints-eval): OKS-based AP/AR, crowd and ``num_keypoints == 0``
annotations ignored, at most 20 detections per image.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

from pipeline.datasets.coco import AnnotationFile, read_annotation_file
from pipeline.keypoints import NUM_COCO_KEYPOINTS, SUPER_CATEGORIES, person_category

__all__ = ["write_ground_truth", "ground_truth_documents", "coco_keypoint_ap", "STAT_NAMES"]

# Order of ``COCOeval.stats`` for keypoints.
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def _gt_image(img: dict) -> dict:
    out = {"id": img["id"], "file_name": img["source_id"], "width": img["width"], "height": img["height"],
           "scene": img["scene"], "super_category": img["super_category"]}  # fmt: skip
    if "category" in img["raw"]:
        out["category"] = img["raw"]["category"]
    return out


def _gt_annotation(ann: dict) -> dict:
    out = {
        "id": ann["id"],
        "image_id": ann["image_id"],
        "category_id": 1,
        "bbox": ann["bbox"],
        "area": ann["area"],
        "iscrowd": ann["iscrowd"],
        "keypoints": ann["keypoints"],
        "num_keypoints": ann["num_keypoints"],
    }
    if ann["segmentation"] is not None:
        out["segmentation"] = ann["segmentation"]
    if ann["keypoints_21"] is not None:
        out["keypoints_21"] = ann["keypoints_21"]
    return out


def ground_truth_documents(parsed: AnnotationFile, dataset: str) -> dict[str, dict]:
    """COCO ground-truth documents for a checked annotation file: whole split, per domain, per scene.

    Args:
        parsed: the checked annotation file.
        dataset: dataset name, recorded in ``info``.

    Returns:
        ``{"all": doc, "domain/<super>": doc, "scene/<scene>": doc}`` for the domains and scenes
        present; every valid image (with or without people) is in the split's documents.
    """
    images = [_gt_image(img) for _, img in sorted(parsed.images.items())]
    annotations = [_gt_annotation(a) for a in parsed.annotations]

    def doc(name: str, keep_image) -> dict:
        imgs = [im for im in images if keep_image(im)]
        ids = {im["id"] for im in imgs}
        return {
            "info": {
                "description": f"{dataset} keypoint ground truth: {name}",
                "source": parsed.label,
                "version": "1.0",
            },
            "licenses": [],
            "images": imgs,
            "annotations": [a for a in annotations if a["image_id"] in ids],
            "categories": [person_category()],
        }

    docs = {"all": doc("all", lambda im: True)}
    present = {im["super_category"] for im in images}
    domains = [d for d in SUPER_CATEGORIES if d in present] + sorted(present - set(SUPER_CATEGORIES))
    for d in domains:
        docs[f"domain/{d}"] = doc(f"domain {d}", lambda im, d=d: im["super_category"] == d)
    for s in sorted({im["scene"] for im in images}):
        docs[f"scene/{s}"] = doc(f"scene {s}", lambda im, s=s: im["scene"] == s)
    return docs


def _write_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False))
    os.replace(tmp, path)  # readers never see a half-written file


def write_ground_truth(
    annotation_json: Path,
    images_root_rel: str,
    out_dir: Path,
    dataset: str,
    *,
    strip_prefix: str | None = None,
) -> dict[str, Path]:
    """Write COCO ground-truth files for one split of a keypoint dataset.

    Args:
        annotation_json: the raw annotation file (``person_keypoints_val2017.json``,
            ``validation_humanart.json``).
        images_root_rel: folder, relative to the raw root, that the file's ``file_name`` values are
            relative to (``val2017`` for COCO, ``""`` for HumanArt); the ground truth's
            ``file_name`` is then the image path relative to the raw root (the ``source_id``).
        out_dir: where to write; created if needed.
        dataset: the dataset name; prefixes the file names.
        strip_prefix: a leading folder to drop from ``file_name`` (HumanArt:
            :data:`pipeline.datasets.humanart.FILE_NAME_PREFIX`).

    Returns:
        ``{"all": path, "domain/<super>": path, "scene/<scene>": path}``; files are
        ``<dataset>_all.json``, ``<dataset>_domain_<super>.json``, ``<dataset>_scene_<scene>.json``.

    Raises:
        LayoutError: the annotation file is missing, does not parse or is not COCO-style.
    """
    parsed = read_annotation_file(
        Path(annotation_json), images_root_rel=images_root_rel, split="val", strip_prefix=strip_prefix
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, doc in ground_truth_documents(parsed, dataset).items():
        path = out_dir / f"{dataset}_{key.replace('/', '_')}.json"
        _write_atomic(path, doc)
        paths[key] = path
    return paths


def coco_keypoint_ap(gt_json: Path | str, predictions: list[dict]) -> dict[str, float]:
    """COCO keypoint AP/AR of predictions against a ground-truth file, without the prints.

    Args:
        gt_json: a COCO keypoint ground-truth file (e.g. from :func:`write_ground_truth`).
        predictions: COCO results: ``image_id``, ``keypoints`` (51 numbers ``x, y, score``…),
            ``score`` and optionally ``category_id`` (default 1).  Not modified.

    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APm``, ``APl``, ``AR``, ``AR50``, ``AR75``, ``ARm``, ``ARl``
        (``-1`` where the ground truth has no person in that area range, as COCOeval reports;
        all 0 for no predictions).

    Raises:
        ValueError: a prediction names an image not in the ground truth, or has keypoints of the
            wrong length.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
    if not predictions:
        return {name: 0.0 for name in STAT_NAMES}
    preds = []
    known = set(gt.getImgIds())
    for i, p in enumerate(predictions):
        if p.get("image_id") not in known:
            raise ValueError(f"predictions[{i}]: image_id {p.get('image_id')!r} is not in {gt_json}")
        if len(p.get("keypoints", ())) != 3 * NUM_COCO_KEYPOINTS:
            raise ValueError(f"predictions[{i}]: expected {3 * NUM_COCO_KEYPOINTS} keypoint values")
        q = copy.deepcopy(p)  # loadRes writes area, bbox and id into the dicts it is given
        q.setdefault("category_id", 1)
        preds.append(q)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(preds)
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}
