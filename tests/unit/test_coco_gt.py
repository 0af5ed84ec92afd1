"""COCO-format ground truth per split / domain / scene, and COCO keypoint AP through pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipeline.datasets import coco, humanart
from pipeline.evaluate import coco_keypoint_ap, write_ground_truth
from pipeline.keypoints import HUMANART_SCENES, SUPER_CATEGORIES, person_category


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _perfect(gt: dict) -> list[dict]:
    """Predictions equal to the ground truth (score 1) for every person COCOeval scores."""
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]


@pytest.fixture(scope="module")
def humanart_gt(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("humanart")
    humanart.write_synthetic(root, 0, 2, seed=8)
    paths = write_ground_truth(
        root / "annotations/validation_humanart.json",
        "",
        root / "gt",
        "humanart",
        strip_prefix=humanart.FILE_NAME_PREFIX,
    )
    return root, paths


@pytest.fixture(scope="module")
def coco_gt(tmp_path_factory) -> tuple[Path, dict, dict[str, Path]]:
    root = tmp_path_factory.mktemp("coco")
    # Seed chosen so that val holds a crowd region (ignored by COCOeval, kept in the ground truth).
    summary = coco.write_synthetic(root, 0, 12, seed=2)
    paths = write_ground_truth(root / "annotations/person_keypoints_val2017.json", "val2017", root / "gt", "coco")
    return root, summary, paths


def test_humanart_files_per_domain_and_scene_hold_exactly_their_images(humanart_gt):
    root, paths = humanart_gt
    assert set(paths) == {"all"} | {f"domain/{d}" for d in SUPER_CATEGORIES} | {f"scene/{s}" for s in HUMANART_SCENES}
    raw = json.loads((root / "annotations/validation_humanart.json").read_text())
    scene_of = {im["id"]: im["category"] for im in raw["images"]}
    everything = json.loads(paths["all"].read_text())
    assert {im["id"] for im in everything["images"]} == set(scene_of)
    assert [a["id"] for a in everything["annotations"]] == [a["id"] for a in raw["annotations"]]
    assert everything["categories"] == [person_category()]
    for key, path in paths.items():
        gt = _load(path)  # pycocotools reads every file as is
        doc = json.loads(path.read_text())
        ids = set(gt.getImgIds())
        if key.startswith("scene/"):
            want = {i for i, s in scene_of.items() if s == key.split("/")[1]}
        elif key.startswith("domain/"):
            want = {i for i, s in scene_of.items() if HUMANART_SCENES[s] == key.split("/")[1]}
        else:
            want = set(scene_of)
        assert ids == want and want, key
        assert {a["image_id"] for a in doc["annotations"]} <= ids
        assert len(doc["annotations"]) == sum(1 for a in raw["annotations"] if a["image_id"] in ids)
    domain_ids = [set(_load(paths[f"domain/{d}"]).getImgIds()) for d in SUPER_CATEGORIES]
    assert set().union(*domain_ids) == set(scene_of) and sum(map(len, domain_ids)) == len(scene_of)


def test_file_names_are_the_ingested_source_ids(humanart_gt, coco_gt):
    root, paths = humanart_gt
    listed = {it.extra["image_id"]: it.source_id for it in humanart.list_items(root, "val").items}
    names = {im["id"]: im["file_name"] for im in json.loads(paths["all"].read_text())["images"]}
    assert listed and all(names[i] == sid for i, sid in listed.items())
    root, _, paths = coco_gt
    listed = {it.extra["image_id"]: it.source_id for it in coco.list_items(root, "val").items}
    names = {im["id"]: im["file_name"] for im in json.loads(paths["all"].read_text())["images"]}
    assert all(n.startswith("val2017/") for n in names.values())
    assert listed and all(names[i] == sid for i, sid in listed.items())


def test_ground_truth_scored_against_itself_is_perfect(humanart_gt, coco_gt):
    _, paths = humanart_gt
    for key in ["all", *(f"domain/{d}" for d in SUPER_CATEGORIES), "scene/sketch", "scene/acrobatics"]:
        gt = json.loads(paths[key].read_text())
        result = coco_keypoint_ap(paths[key], _perfect(gt))
        assert result["AP"] == pytest.approx(1.0) and result["AR"] == pytest.approx(1.0), key
        assert set(result) >= {"AP", "AP50", "AP75", "APm", "APl", "AR"}
    _, summary, paths = coco_gt
    assert summary["val"]["n_crowd"] >= 1
    gt = json.loads(paths["all"].read_text())
    assert any(a["iscrowd"] for a in gt["annotations"]) and any("segmentation" in a for a in gt["annotations"])
    assert coco_keypoint_ap(paths["all"], _perfect(gt))["AP"] == pytest.approx(1.0)


def test_noisier_keypoints_score_lower(humanart_gt):
    _, paths = humanart_gt
    gt = json.loads(paths["all"].read_text())
    perfect = _perfect(gt)
    rng = np.random.default_rng(0)
    unit = rng.standard_normal((len(perfect), 17, 2))  # the same noise, scaled: a clean comparison
    aps = []
    for sigma in (1.0, 3.0, 8.0):
        noisy = []
        for p, n in zip(perfect, unit, strict=True):
            k = np.asarray(p["keypoints"], dtype=float).reshape(17, 3)
            k[:, :2] += sigma * n
            noisy.append({**p, "keypoints": k.ravel().tolist()})
        aps.append(coco_keypoint_ap(paths["all"], noisy)["AP"])
    assert 1.0 > aps[0] > aps[1] > aps[2] >= 0.0, aps


def test_predictions_are_checked_and_left_untouched(humanart_gt):
    _, paths = humanart_gt
    gt = json.loads(paths["all"].read_text())
    preds = _perfect(gt)[:3]
    before = json.dumps(preds)
    coco_keypoint_ap(paths["all"], preds)
    assert json.dumps(preds) == before  # loadRes would add area/bbox/id to them
    assert coco_keypoint_ap(paths["all"], []) == dict.fromkeys(
        ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"), 0.0
    )
    with pytest.raises(ValueError, match="image_id 424242"):
        coco_keypoint_ap(paths["all"], [{**preds[0], "image_id": 424242}])
    with pytest.raises(ValueError, match="51 keypoint values"):
        coco_keypoint_ap(paths["all"], [{**preds[0], "keypoints": [1.0, 2.0, 1.0]}])


def test_rejected_annotations_stay_out_and_writes_are_atomic(tmp_path):
    ann = tmp_path / "person_keypoints_val2017.json"
    kps = [10.0, 10.0, 2] + [0] * 48
    doc = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "area": 400, "iscrowd": 0,
             "keypoints": kps, "num_keypoints": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "area": 400, "iscrowd": 0,
             "keypoints": kps[:-3], "num_keypoints": 1},
            {"id": 3, "image_id": 9, "category_id": 1, "bbox": [5, 5, 20, 30], "area": 400, "iscrowd": 0,
             "keypoints": kps, "num_keypoints": 1},
        ],
    }  # fmt: skip
    ann.write_text(json.dumps(doc))
    out = tmp_path / "gt"
    paths = write_ground_truth(ann, "val2017", out, "coco")
    assert set(paths) == {"all", "domain/real_human", "scene/photo"}
    first = {k: p.read_bytes() for k, p in paths.items()}
    gt = json.loads(paths["all"].read_text())
    assert [a["id"] for a in gt["annotations"]] == [1]
    assert gt["images"][0]["file_name"] == "val2017/000000000001.jpg"
    assert _load(paths["all"]).getAnnIds() == [1]
    again = write_ground_truth(ann, "val2017", out, "coco")
    assert {k: p.read_bytes() for k, p in again.items()} == first
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp files left
