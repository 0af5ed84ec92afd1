"""COCO / HumanArt through the same ingestion: keypoints recovered exactly, crops map back,
bad annotations and images quarantined with every unit accounted for, GT stage via the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import parse_params
from pipeline.imaging import decode_jpeg
from pipeline.ingest import ingest, read_records
from pipeline.records.keypoints import from_crop, topdown_box
from tests.conftest import subprocess_env, tiny_params_dict

PARAMS = parse_params(tiny_params_dict())
SETTINGS = PARAMS.ingest.model_dump(exclude={"datasets"})


def _ingest(name, raw, out, **settings):
    return ingest(name, raw, out, seed=0, crop_margin=(0.2, 0.2), settings={**SETTINGS, **settings}, engine="local")


def _annotations(path):
    doc = json.loads(path.read_text())
    return doc, {a["id"]: a for a in doc["annotations"]}


@pytest.mark.parametrize(
    "name, files",
    [
        (
            "coco",
            {
                "train": "annotations/person_keypoints_train2017.json",
                "val": "annotations/person_keypoints_val2017.json",
            },
        ),
        ("humanart", {"train": "annotations/training_humanart.json", "val": "annotations/validation_humanart.json"}),
    ],
)
def test_keypoints_round_trip(keypoint_raw, tmp_path, name, files):
    raw = keypoint_raw / name
    summary = _ingest(name, raw, tmp_path / "out")
    n_ann, truth = 0, {}
    for f in files.values():
        doc, anns = _annotations(raw / f)
        n_ann += len(doc["annotations"])
        truth.update(anns)
    assert summary.counts_in == n_ann == summary.kept + summary.filtered + summary.quarantined
    assert summary.quarantined == 0
    n_crowd = sum(a["iscrowd"] for a in truth.values())
    assert summary.filtered >= n_crowd
    table = read_records(tmp_path / "out")
    size = tuple(PARAMS.ingest.pose_input)
    for row in table.to_pylist():
        ann = truth[row["annotation_id"]]
        assert ann["iscrowd"] == 0
        kps = np.reshape(row["keypoints"], (17, 3))
        assert np.array_equal(kps, np.asarray(ann["keypoints"], dtype=np.float32).reshape(17, 3))
        assert row["image_id"] == ann["image_id"] and row["num_keypoints"] == ann["num_keypoints"]
        box = topdown_box(ann["bbox"], size[0] / size[1], PARAMS.ingest.pose_padding)
        assert np.allclose(row["crop_box"], box, atol=1e-3)
        w, h = box[2] - box[0], box[3] - box[1]
        assert w / h == pytest.approx(0.75, rel=1e-4)
        back = from_crop(np.reshape(row["keypoints_crop"], (17, 3)), row["crop_box"], size)
        labelled = kps[:, 2] > 0
        assert np.allclose(back[labelled, :2], kps[labelled, :2], atol=0.02)
        assert decode_jpeg(row["crop_jpeg"]).shape == (size[1], size[0], 3)
        if name == "humanart":
            assert row["super_category"] in ("real_human", "2D_virtual_human", "3D_virtual_human")
            assert len(row["keypoints_21"]) == 63 and row["scene"] in row["source_id"]
        else:
            assert row["scene"] == "photo" and row["keypoints_21"] is None
    if name == "humanart":
        assert len(set(table.column("scene").to_pylist())) == 20


def test_bad_keypoint_input_is_quarantined(keypoint_raw, tmp_path):
    raw = tmp_path / "coco"
    shutil.copytree(keypoint_raw / "coco", raw)
    path = raw / "annotations" / "person_keypoints_val2017.json"
    doc = json.loads(path.read_text())
    anns = [a for a in doc["annotations"] if not a["iscrowd"]]
    anns[0]["keypoints"] = anns[0]["keypoints"][:-3]  # wrong length
    anns[1]["keypoints"][0] = float("nan")  # NaN (written as NaN by json)
    anns[2]["image_id"] = 987654321  # points to no image
    anns[3]["bbox"] = [10_000, 10_000, 20, 20]  # outside the image
    path.write_text(json.dumps(doc))
    victim = next(i for i in doc["images"] if i["id"] not in {a["image_id"] for a in anns[:4]})
    n_victim = sum(a["image_id"] == victim["id"] for a in doc["annotations"])
    (raw / "val2017" / victim["file_name"]).unlink()  # missing image file

    summary = _ingest("coco", raw, tmp_path / "out", error_budget=1.0)
    assert summary.counts_in == summary.kept + summary.filtered + summary.quarantined
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert sum(r["units"] for r in q) == summary.quarantined == 4 + n_victim
    fields = {r["field"] for r in q}
    assert any("keypoints" in f for f in fields) and any("image_id" in f for f in fields)
    assert any("bbox" in f for f in fields) and "image" in fields
    assert all(r["file"] for r in q)
    missing = [r for r in q if r["field"] == "image"]
    assert missing[0]["units"] == n_victim and victim["file_name"] in missing[0]["file"]


def test_unparsable_json_is_a_clear_cli_error(keypoint_raw, tmp_path):
    raw = tmp_path / "coco"
    shutil.copytree(keypoint_raw / "coco", raw)
    (raw / "annotations" / "person_keypoints_train2017.json").write_text("{not json")
    params = tiny_params_dict()
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [
            "hpe",
            "ingest",
            "coco",
            "--raw-root",
            str(raw),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "local",
            "--params",
            str(tmp_path / "params.yaml"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "person_keypoints_train2017.json" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_ground_truth_stage_cli(keypoint_raw, tmp_path):
    params = tiny_params_dict()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [
            "hpe",
            "ground-truth",
            "humanart",
            "--raw-root",
            str(keypoint_raw / "humanart"),
            "--out",
            str(tmp_path / "gt"),
            "--params",
            str(tmp_path / "params.yaml"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)["files"]
    assert (
        "all" in files
        and "domain/2D_virtual_human" in files
        and len([k for k in files if k.startswith("scene/")]) == 20
    )
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(files["all"])
    assert len(gt.getImgIds()) == 20
    bad = subprocess.run(
        [
            "hpe",
            "ground-truth",
            "aflw2000",
            "--raw-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "x"),
            "--params",
            str(tmp_path / "params.yaml"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "keypoint datasets only" in bad.stderr
