"""COCO and HumanArt: keypoint conventions, the figure renderer, synthetic writers and raw readers.

The writers render figures with known joints; the readers must give every number back exactly,
from the real on-disk layouts, and turn every kind of bad input into a named rejection.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.datasets import coco, humanart
from pipeline.datasets.base import BadRecord, KeypointImage, LayoutError
from pipeline.keypoints import (
    COCO_FLIP_PAIRS,
    COCO_KEYPOINT_NAMES,
    COCO_OKS_SIGMAS,
    COCO_SKELETON,
    HUMANART_FLIP_PAIRS,
    HUMANART_KEYPOINT_NAMES,
    HUMANART_SCENES,
    SUPER_CATEGORIES,
    person_category,
    scenes_of,
    super_category_of,
)
from pipeline.synth.figures import (
    BACKGROUND,
    CROWD,
    STYLES,
    PoseStats,
    mask_to_rle,
    render_scene,
    sample_skeleton,
    style_for,
)

COCO_ANN = "annotations/person_keypoints_val2017.json"


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_raw(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco")
    return root, coco.write_synthetic(root, 4, 6, seed=3, return_ground_truth=True)


@pytest.fixture(scope="module")
def humanart_raw(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("humanart")
    return root, humanart.write_synthetic(root, 1, 1, seed=5, return_ground_truth=True)


def _assert_matches_truth(img: KeypointImage, truth: list[dict], with_21: bool) -> None:
    assert [inst.annotation_id for inst in img.instances] == [t["id"] for t in truth]
    for inst, t in zip(img.instances, truth, strict=True):
        assert np.array_equal(inst.keypoints, np.asarray(t["keypoints"])), inst.annotation_id
        assert inst.bbox == tuple(t["bbox"])
        assert inst.area == t["area"]
        assert inst.iscrowd == t["iscrowd"]
        assert inst.num_keypoints == t["num_keypoints"] == int((inst.keypoints[:, 2] > 0).sum())
        assert set(np.unique(inst.keypoints[:, 2])) <= {0.0, 1.0, 2.0}
        unlabelled = inst.keypoints[:, 2] == 0
        assert not inst.keypoints[unlabelled].any(), "v=0 keypoints are written as [0, 0, 0]"
        if with_21:
            assert np.array_equal(inst.keypoints_21, np.asarray(t["keypoints_21"]))
            assert np.array_equal(inst.keypoints_21[:17], inst.keypoints)
        else:
            assert inst.keypoints_21 is None


# ------------------------------------------------------------------------------------------
# conventions
# ------------------------------------------------------------------------------------------


def test_keypoint_conventions():
    assert len(COCO_KEYPOINT_NAMES) == len(COCO_OKS_SIGMAS) == 17
    assert COCO_KEYPOINT_NAMES[0] == "nose" and COCO_KEYPOINT_NAMES[16] == "right_ankle"
    assert COCO_OKS_SIGMAS[0] == 0.026 and COCO_OKS_SIGMAS[11] == 0.107
    assert all(1 <= a <= 17 and 1 <= b <= 17 for a, b in COCO_SKELETON) and len(COCO_SKELETON) == 19
    for pairs, names in ((COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES), (HUMANART_FLIP_PAIRS, HUMANART_KEYPOINT_NAMES)):
        for left, right in pairs:
            assert names[left].replace("left_", "right_") == names[right]
    assert len(HUMANART_KEYPOINT_NAMES) == 21 and HUMANART_KEYPOINT_NAMES[:17] == COCO_KEYPOINT_NAMES
    assert len(HUMANART_SCENES) == 20
    assert [len(scenes_of(s)) for s in SUPER_CATEGORIES] == [5, 3, 12]
    assert super_category_of("ukiyoe") == "2D_virtual_human" and super_category_of("photo") == "real_human"
    with pytest.raises(ValueError, match="valid: photo, acrobatics"):
        super_category_of("cubism")
    cat = person_category()
    assert cat["id"] == 1 and cat["keypoints"] == list(COCO_KEYPOINT_NAMES) and [16, 14] in cat["skeleton"]


# ------------------------------------------------------------------------------------------
# figure model
# ------------------------------------------------------------------------------------------


def test_facing_camera_puts_the_persons_left_on_the_image_right():
    pose = PoseStats(lean=0.0, back_prob=0.0)
    flips = 0
    for seed in range(30):
        sk = sample_skeleton(np.random.default_rng(seed), 200.0, (160.0, 150.0), pose)
        j = sk.joints
        flips += j[5, 0] > j[6, 0]  # left shoulder right of the right shoulder
        assert j[0, 1] < j[5, 1] < j[11, 1], "upright: head above shoulders above hips"
        assert np.array_equal(j, np.round(j, 2)), "joints are drawn from their annotated (rounded) values"
    assert flips >= 27


@pytest.mark.parametrize("domain", sorted(STYLES))
def test_rendered_joints_are_on_their_figure(domain):
    style = style_for(domain)
    n_visible = n_differ = 0
    for seed in range(3):
        r = render_scene(np.random.default_rng([11, seed]), 320, 240, style, with_background=True)
        assert r.image.shape == (240, 320, 3) and r.image.dtype == np.uint8
        for p in r.persons:
            if p.iscrowd:
                continue
            for x, y, v in p.keypoints:
                if v == 0:
                    assert x == y == 0
                    continue
                code = r.owner[int(y), int(x)]
                if v == 2:
                    assert code == p.owner_code
                    n_visible += 1
                    diff = np.abs(r.image[int(y), int(x)].astype(int) - r.background[int(y), int(x)].astype(int)).sum()
                    n_differ += diff > 24
                else:
                    assert code != p.owner_code and code != BACKGROUND, "v=1: covered by someone or something"
    assert n_visible > 0
    assert n_differ >= 0.9 * n_visible, f"{domain}: {n_differ}/{n_visible} visible joints show the figure"


def test_boxes_areas_and_masks_are_the_visible_pixels():
    style = replace(style_for("photo"), crowd_prob=1.0, occluder_prob=1.0, n_figures=(3, 4))
    seen_crowd = seen_occluded = False
    for seed in range(4):
        r = render_scene(np.random.default_rng([21, seed]), 320, 240, style)
        for p in r.persons:
            visible = r.owner == p.owner_code
            ys, xs = np.nonzero(visible)
            assert p.bbox == (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
            assert p.area == visible.sum()
            rle = mask_utils.frPyObjects(p.segmentation, 240, 320)
            assert np.array_equal(mask_utils.decode(rle).astype(bool), visible)
            assert float(mask_utils.area(rle)) == p.area
            if p.iscrowd:
                seen_crowd = True
                assert p.owner_code == CROWD and p.num_keypoints == 0 and not p.keypoints.any()
            seen_occluded |= bool((p.keypoints[:, 2] == 1).any())
    assert seen_crowd and seen_occluded


def test_mask_to_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 9)) < 0.4
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        mine = mask_utils.frPyObjects(mask_to_rle(m), 7, 9)
        assert mine["counts"] == ref["counts"]


def _style_features(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32) / 255.0
    hi, lo = f.max(axis=2), f.min(axis=2)
    saturation = ((hi - lo) / np.maximum(hi, 1e-6)).mean()
    lum = f.mean(axis=2)
    gx, gy = np.abs(np.diff(lum, axis=1))[:-1], np.abs(np.diff(lum, axis=0))[:, :-1]
    edge_density = ((gx + gy) > 0.08).mean()
    return np.array([saturation, lum.mean(), lum.std(), edge_density, gx.mean() + gy.mean()])


def test_styles_differ_across_domains_and_from_coco():
    feats = {
        d: np.mean(
            [_style_features(render_scene(np.random.default_rng([7, i]), 320, 240, s).image) for i in range(6)], 0
        )
        for d, s in STYLES.items()
    }
    names = list(feats)
    X = np.stack([feats[n] for n in names])
    Z = X / X.std(axis=0)  # each statistic in units of its spread over the domains
    dist = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    assert dist[i, j] > 0.5, f"{names[i]} and {names[j]} look alike"
    groups = {"coco": Z[names.index("photo")]}
    for sup in SUPER_CATEGORIES:
        groups[sup] = Z[[names.index(s) for s in scenes_of(sup)]].mean(axis=0)
    keys = list(groups)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            assert np.linalg.norm(groups[keys[a]] - groups[keys[b]]) > 0.5, (keys[a], keys[b])
    # Monochrome media are grey, glass and cartoons are colourful; drawings have more edges than photos.
    for grey in ("sketch", "watercolor", "ink_painting", "sculpture"):
        assert feats[grey][0] < feats["photo"][0] < feats["stained_glass"][0]
    art_edges = np.mean([feats[s][3] for s in ("sketch", "kids_drawing", "ink_painting", "stained_glass")])
    assert art_edges > 2 * feats["photo"][3]


# ------------------------------------------------------------------------------------------
# COCO: writer -> reader
# ------------------------------------------------------------------------------------------


def test_coco_layout_and_json_fields(coco_raw):
    root, summary = coco_raw
    for split in ("train", "val"):
        doc = json.loads((root / f"annotations/person_keypoints_{split}2017.json").read_text())
        assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
        assert doc["categories"] == [person_category()]
        assert len(doc["images"]) == summary[split]["n_images"]
        for img in doc["images"]:
            assert img["file_name"] == f"{img['id']:012d}.jpg"
            assert (root / f"{split}2017" / img["file_name"]).is_file()
            assert {"id", "file_name", "width", "height", "license", "coco_url", "date_captured"} <= set(img)
        for ann in doc["annotations"]:
            assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "keypoints", "num_keypoints",
                    "segmentation"} <= set(ann)  # fmt: skip
            assert ann["category_id"] == 1 and len(ann["keypoints"]) == 51
    train_ids = {
        i["id"] for i in json.loads((root / "annotations/person_keypoints_train2017.json").read_text())["images"]
    }
    val_ids = {i["id"] for i in json.loads((root / COCO_ANN).read_text())["images"]}
    assert not train_ids & val_ids


def test_coco_reader_recovers_the_writers_ground_truth(coco_raw):
    root, summary = coco_raw
    for split in ("train", "val"):
        listing = coco.list_items(root, split)
        truth = summary[split]["ground_truth"]
        assert listing.rejected == []
        assert sum(len(it.extra["annotations"]) for it in listing.items) == summary[split]["n_annotations"] > 0
        assert {it.source_id for it in listing.items} == {k for k, v in truth.items() if v}
        for item in listing.items:
            assert item.split == split and item.source_id.startswith(f"{split}2017/")
            json.dumps(item.extra)  # plain JSON data: it travels to Ray workers
            img = coco.load_item(root, item)
            assert img.image.shape == (item.extra["height"], item.extra["width"], 3)
            assert (img.scene, img.super_category, img.file_name) == ("photo", "real_human", item.source_id)
            _assert_matches_truth(img, truth[item.source_id], with_21=False)


# ------------------------------------------------------------------------------------------
# HumanArt: writer -> reader
# ------------------------------------------------------------------------------------------


def test_humanart_layout_and_per_scene_files(humanart_raw):
    root, summary = humanart_raw
    for split, word in (("train", "training"), ("val", "validation")):
        doc = json.loads((root / f"annotations/{word}_humanart.json").read_text())
        assert len(doc["images"]) == 20 == summary[split]["n_images"]
        for img in doc["images"]:
            sup = HUMANART_SCENES[img["category"]]
            assert img["file_name"].startswith(f"images/{sup}/{img['category']}/{split}_")
            assert (root / img["file_name"]).is_file()
        for ann in doc["annotations"]:
            assert len(ann["keypoints"]) == 51 and len(ann["keypoints_21"]) == 63
            assert ann["keypoints_21"][:51] == ann["keypoints"]
            assert ann["num_keypoints_21"] >= ann["num_keypoints"]
        for scene in HUMANART_SCENES:
            part = json.loads((root / f"annotations/{word}_humanart_{scene}.json").read_text())
            want = [i for i in doc["images"] if i["category"] == scene]
            assert part["images"] == want
            ids = {i["id"] for i in want}
            assert part["annotations"] == [a for a in doc["annotations"] if a["image_id"] in ids]


def test_humanart_reader_recovers_the_writers_ground_truth(humanart_raw):
    root, summary = humanart_raw
    for split in ("train", "val"):
        listing = humanart.list_items(root, split)
        truth = summary[split]["ground_truth"]
        assert listing.rejected == []
        assert sum(len(it.extra["annotations"]) for it in listing.items) == summary[split]["n_annotations"]
        scenes = set()
        for item in listing.items:
            img = humanart.load_item(root, item)
            scene = item.source_id.split("/")[2]
            assert img.scene == item.subset == scene and img.super_category == HUMANART_SCENES[scene]
            scenes.add(scene)
            _assert_matches_truth(img, truth[item.source_id], with_21=True)
        assert len(scenes) >= 18  # a scene image can, rarely, hold nobody annotatable


# ------------------------------------------------------------------------------------------
# hand-made directories in the real layout
# ------------------------------------------------------------------------------------------


def _jpeg(path: Path, size: tuple[int, int], colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)


def _kps(points: list[tuple[float, float, int]]) -> list:
    out = [0] * 51
    for j, (x, y, v) in enumerate(points):
        out[3 * j : 3 * j + 3] = [x, y, v]
    return out


def _coco_doc(images: list, annotations: list) -> dict:
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": [person_category()]}


def test_hand_made_coco_directory(tmp_path):
    _jpeg(tmp_path / "val2017/000000000139.jpg", (64, 48))
    _jpeg(tmp_path / "val2017/000000000285.jpg", (40, 30), colour=(20, 20, 220))
    _jpeg(tmp_path / "val2017/000000000632.jpg", (40, 30))  # no person in it
    person = _kps([(30, 10, 2), (31, 9, 2), (29, 9, 1)] + [(0, 0, 0)] * 2 + [(35, 20, 2)])
    doc = _coco_doc(
        [
            {"license": 1, "file_name": "000000000139.jpg", "height": 48, "width": 64, "id": 139},
            {"license": 1, "file_name": "000000000285.jpg", "height": 30, "width": 40, "id": 285},
            {"license": 1, "file_name": "000000000632.jpg", "height": 30, "width": 40, "id": 632},
        ],
        [
            {"segmentation": [[20, 5, 40, 5, 40, 40, 20, 40]], "num_keypoints": 4, "area": 700.0, "iscrowd": 0,
             "keypoints": person, "image_id": 139, "bbox": [20.0, 5.0, 20.0, 35.0], "category_id": 1, "id": 2001},
            {"segmentation": {"counts": [100, 50, 3000], "size": [48, 64]}, "num_keypoints": 0, "area": 50,
             "iscrowd": 1, "keypoints": [0] * 51, "image_id": 139, "bbox": [1, 2, 10, 5], "category_id": 1, "id": 2002},
            {"num_keypoints": 1, "area": 12.5, "iscrowd": 0, "keypoints": _kps([(5.5, 6.25, 2)]),
             "image_id": 285, "bbox": [2, 3, 10, 12], "category_id": 1, "id": 2003},
        ],
    )  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / COCO_ANN).write_text(json.dumps(doc))

    listing = coco.list_items(tmp_path, "val")
    assert listing.rejected == []
    assert [it.source_id for it in listing.items] == ["val2017/000000000139.jpg", "val2017/000000000285.jpg"]
    first = coco.load_item(tmp_path, listing.items[0])
    assert first.image_id == 139 and first.image.shape == (48, 64, 3)
    assert abs(int(first.image[20, 30, 0]) - 200) < 8 and first.image[20, 30, 2] < 50
    a, crowd = first.instances
    assert a.annotation_id == 2001 and a.bbox == (20.0, 5.0, 20.0, 35.0) and a.area == 700.0
    assert a.keypoints.shape == (17, 3) and a.keypoints[5].tolist() == [35, 20, 2] and a.keypoints[2, 2] == 1
    assert a.num_keypoints == 4 and a.iscrowd == 0 and a.keypoints_21 is None
    assert crowd.iscrowd == 1 and crowd.num_keypoints == 0 and crowd.bbox == (1, 2, 10, 5)
    second = coco.load_item(tmp_path, listing.items[1])
    assert second.instances[0].keypoints[0].tolist() == [5.5, 6.25, 2.0] and second.image[5, 5, 2] > 180


def test_hand_made_humanart_directory_with_release_style_paths(tmp_path):
    kp21 = _kps([(10, 10, 2)]) + [12, 30, 2, 0, 0, 0, 11, 40, 1, 0, 0, 0]
    _jpeg(tmp_path / "images/2D_virtual_human/ukiyoe/000001.jpg", (50, 60))
    doc = {
        "info": {},
        "images": [{"file_name": "HumanArt/images/2D_virtual_human/ukiyoe/000001.jpg", "height": 60, "width": 50,
                    "id": 7, "category": "ukiyoe", "description": "a print"}],
        "annotations": [{"keypoints": kp21[:51], "keypoints_21": kp21, "self_contact": [], "num_keypoints": 1,
                         "num_keypoints_21": 3, "iscrowd": 0, "image_id": 7, "area": 100, "bbox": [5, 5, 20, 40],
                         "category_id": 1, "id": 70, "annotator": 3}],
        "categories": [person_category()],
    }  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/validation_humanart.json").write_text(json.dumps(doc))
    listing = humanart.list_items(tmp_path, "val")
    (item,) = listing.items
    assert item.source_id == "images/2D_virtual_human/ukiyoe/000001.jpg"
    img = humanart.load_item(tmp_path, item)
    assert (img.scene, img.super_category) == ("ukiyoe", "2D_virtual_human")
    assert img.instances[0].keypoints_21[18].tolist() == [0, 0, 0] and img.instances[0].keypoints_21[19, 2] == 1


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


@pytest.fixture
def bad_coco(tmp_path) -> Path:
    _jpeg(tmp_path / "val2017/000000000001.jpg", (64, 48))
    good = tmp_path / "val2017/000000000001.jpg"
    (tmp_path / "val2017/000000000003.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "val2017/000000000004.jpg").write_bytes(good.read_bytes()[:200])  # truncated
    _jpeg(tmp_path / "val2017/000000000005.jpg", (30, 30))  # the file says 64x48
    images = [{"file_name": f"{i:012d}.jpg", "height": 48, "width": 64, "id": i} for i in (1, 2, 3, 4, 5)]
    ok = _kps([(10, 10, 2), (12, 9, 1)])

    def ann(aid, image_id=1, keypoints=ok, bbox=(5, 5, 20, 30)):
        return {"id": aid, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "area": 100.0,
                "iscrowd": 0, "keypoints": keypoints, "num_keypoints": 2}  # fmt: skip

    nan_kps = list(ok)
    nan_kps[4] = float("nan")
    text_kps = list(ok)
    text_kps[0] = "x"
    bad_v = list(ok)
    bad_v[2] = 3
    annotations = [
        ann(1),  # fine
        ann(2, image_id=2),  # its image file is missing
        ann(3, keypoints=ok[:-3]),  # 16 keypoints
        ann(4, bbox=(100, 100, 5, 5)),  # entirely right of / below the 64x48 image
        ann(5, keypoints=nan_kps),
        ann(6, image_id=999),  # no such image
        ann(7, bbox=(5, 5, 0, 10)),
        ann(8, keypoints=text_kps),
        ann(9, keypoints=bad_v),
        ann(10, image_id=3),  # not a JPEG
        ann(11, image_id=4),  # truncated JPEG
        ann(12, image_id=5),  # wrong size
        ann(13, bbox=(-30, 5, 20, 10)),  # entirely left of the image
    ]
    (tmp_path / "annotations").mkdir()
    (tmp_path / COCO_ANN).write_text(json.dumps(_coco_doc(images, annotations)))  # NaN is written as NaN
    return tmp_path


def test_bad_annotations_are_rejected_with_file_and_field(bad_coco):
    listing = coco.list_items(bad_coco, "val")
    got = {r.field: r for r in listing.rejected}
    assert set(got) == {
        "annotations[2].keypoints", "annotations[3].bbox", "annotations[4].keypoints", "annotations[5].image_id",
        "annotations[6].bbox", "annotations[7].keypoints", "annotations[8].keypoints", "annotations[12].bbox",
    }  # fmt: skip
    assert all(r.file == COCO_ANN and r.units == 1 and r.split == "val" for r in listing.rejected)
    assert "expected 51 values, got 48" in got["annotations[2].keypoints"].reason
    assert "outside" in got["annotations[3].bbox"].reason and "outside" in got["annotations[12].bbox"].reason
    assert "not finite" in got["annotations[4].keypoints"].reason
    assert "points to no image" in got["annotations[5].image_id"].reason
    assert "non-positive" in got["annotations[6].bbox"].reason
    assert "not a number" in got["annotations[7].keypoints"].reason
    assert "visibility" in got["annotations[8].keypoints"].reason
    assert got["annotations[2].keypoints"].source_id == "val2017/000000000001.jpg"
    # Every annotation in the file is counted exactly once: listed or rejected.
    listed = sum(len(it.extra["annotations"]) for it in listing.items)
    n_in_file = len(json.loads((bad_coco / COCO_ANN).read_text(), parse_constant=float)["annotations"])
    assert listed + sum(r.units for r in listing.rejected) == n_in_file == 13


@pytest.mark.parametrize(
    ("image", "reason"),
    [("000000000002.jpg", "missing file"), ("000000000003.jpg", "cannot decode"),
     ("000000000004.jpg", "cannot decode"), ("000000000005.jpg", "differs")],
)  # fmt: skip
def test_unloadable_images_raise_bad_record(bad_coco, image, reason):
    (item,) = [it for it in coco.list_items(bad_coco, "val").items if it.source_id == f"val2017/{image}"]
    with pytest.raises(BadRecord) as info:
        coco.load_item(bad_coco, item)
    assert info.value.file == f"val2017/{image}" and info.value.field == "image" and reason in info.value.reason


def test_bad_keypoints_21_is_rejected(tmp_path):
    _jpeg(tmp_path / "images/real_human/dance/a.jpg", (40, 40))
    kps = _kps([(10, 10, 2)])
    doc = {
        "images": [{"file_name": "images/real_human/dance/a.jpg", "height": 40, "width": 40, "id": 1, "category": "dance"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 50, "iscrowd": 0,
                         "keypoints": kps, "keypoints_21": kps, "num_keypoints": 1}],
    }  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/training_humanart.json").write_text(json.dumps(doc))
    listing = humanart.list_items(tmp_path, "train")
    assert listing.items == [] and [r.field for r in listing.rejected] == ["annotations[0].keypoints_21"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"images": []}), "missing 'annotations'"),
        (json.dumps({"annotations": []}), "missing 'images'"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (None, "not found"),
    ],
)
def test_broken_annotation_file_is_a_layout_error_naming_it(tmp_path, content, message):
    (tmp_path / "annotations").mkdir()
    if content is not None:
        (tmp_path / COCO_ANN).write_text(content)
    with pytest.raises(LayoutError, match=message) as info:
        coco.list_items(tmp_path, "val")
    assert COCO_ANN in str(info.value)
    if content is not None:
        (tmp_path / "annotations/validation_humanart.json").write_text(content)
        with pytest.raises(LayoutError, match="annotations/validation_humanart.json"):
            humanart.list_items(tmp_path, "val")


def test_unknown_split_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: train, val"):
        coco.list_items(tmp_path, "test")
    with pytest.raises(ValueError, match="valid: train, val"):
        humanart.list_items(tmp_path, "validation")


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (coco.write_synthetic(tmp_path / n, 2, 2, seed=s) for n, s in (("a", 9), ("b", 9), ("c", 10)))
    assert a == b
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert _tree_bytes(tmp_path / "a")[COCO_ANN] != _tree_bytes(tmp_path / "c")[COCO_ANN]
    humanart.write_synthetic(tmp_path / "ha", 0, 1, seed=4)
    humanart.write_synthetic(tmp_path / "hb", 0, 1, seed=4)
    ha = _tree_bytes(tmp_path / "ha")
    assert ha == _tree_bytes(tmp_path / "hb") and len(ha) > 20
