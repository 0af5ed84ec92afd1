"""Predictions back to image coordinates and COCO keypoint AP per domain and scene.

Perfect predictions (the ground-truth crop keypoints) pushed through the crop transform score
AP = 1 on every ground-truth file; after heatmap encode → decode only joints outside the crop
are lost; a
real (tiny, untrained) model's predictions have the right form for every record.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.imaging import decode_jpeg
from pipeline.pose2d.artifacts import load_pose_model, save_vitpose
from pipeline.pose2d.heatmaps import decode_heatmaps, gaussian_targets
from pipeline.pose2d.inputs import jpeg_size
from pipeline.pose2d.predict import (
    coco_results,
    crop_records,
    evaluate_keypoints,
    keypoint_ap,
    predict_records,
    predict_table,
)
from pipeline.pose2d.vitpose import ViTPoseSize, build_vitpose
from tests.unit._pose2d_data import TINY_SIZE, ingested, table


def _ground_truth_crops(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    kps = np.asarray([r["keypoints_crop"] for r in rows], dtype=np.float64).reshape(len(rows), -1, 3)
    return kps[..., :2], kps[..., 2]


@pytest.mark.parametrize("name", ["coco", "humanart"])
def test_perfect_predictions_score_ap_1_everywhere(name, tmp_path_factory):
    _, gt_files = ingested(name, tmp_path_factory)
    rows = table(name, "val", tmp_path_factory).to_pylist()
    xy, vis = _ground_truth_crops(rows)
    preds = coco_results(rows, xy, np.ones(vis.shape))
    assert len(preds) == len(rows) and all(len(p["keypoints"]) == 51 and p["score"] == 1.0 for p in preds)
    labelled = vis > 0
    image_xy = np.asarray([p["keypoints"] for p in preds]).reshape(len(rows), -1, 3)[..., :2]
    truth = np.asarray([r["keypoints"] for r in rows]).reshape(len(rows), -1, 3)[..., :2]
    assert np.abs(image_xy - truth)[labelled].max() < 0.05  # the crop transform, inverted
    metrics = keypoint_ap(preds, gt_files)
    assert set(metrics) == set(gt_files)
    if name == "humanart":
        assert {"domain/2D_virtual_human", "domain/3D_virtual_human", "scene/sketch"} <= set(metrics)
    assert all(m["AP"] == pytest.approx(1.0) for m in metrics.values()), metrics


def test_heatmap_encode_decode_keeps_ap_near_1(tmp_path_factory):
    _, gt_files = ingested("coco", tmp_path_factory)
    rows = table("coco", "val", tmp_path_factory).to_pylist()
    xy, vis = _ground_truth_crops(rows)
    w, h = jpeg_size(rows[0]["crop_jpeg"])
    heatmaps, _ = gaussian_targets(torch.from_numpy(xy), torch.from_numpy(vis), (h, w), (h // 4, w // 4), 2.0)
    decoded, scores = decode_heatmaps(heatmaps, (h, w))
    in_crop = (vis > 0) & (xy[..., 0] >= 0) & (xy[..., 0] <= w) & (xy[..., 1] >= 0) & (xy[..., 1] <= h)
    assert np.abs(decoded.numpy() - xy)[in_crop].max() < 0.5  # joints off the crop cannot be located
    metrics = keypoint_ap(coco_results(rows, decoded.numpy(), np.ones(vis.shape)), {"all": gt_files["all"]})
    assert metrics["all"]["AP"] >= 0.95  # only the few labelled joints outside their crop are lost


def test_a_model_predicts_every_record_in_image_coordinates(tmp_path_factory, tmp_path):
    _, gt_files = ingested("humanart", tmp_path_factory)
    val = table("humanart", "val", tmp_path_factory)
    save_vitpose(build_vitpose(ViTPoseSize(**TINY_SIZE), seed=0), tmp_path / "vitpose")
    est = load_pose_model(tmp_path / "vitpose")
    metrics, preds = evaluate_keypoints(est, val, {"all": gt_files["all"]}, batch_size=16)
    assert len(preds) == val.num_rows
    assert [p["image_id"] for p in preds] == val.column("image_id").to_pylist()
    for p, box in zip(preds, val.column("crop_box").to_pylist(), strict=True):
        xy = np.asarray(p["keypoints"]).reshape(-1, 3)[:, :2]
        assert (xy[:, 0] >= box[0] - 1).all() and (xy[:, 0] <= box[2] + 1).all()  # inside its crop
        assert (xy[:, 1] >= box[1] - 1).all() and (xy[:, 1] <= box[3] + 1).all()
    assert 0.0 <= metrics["all"]["AP"] <= 1.0
    with pytest.raises(ValueError, match="lacks columns"):
        evaluate_keypoints(est, val.drop_columns(["crop_box"]), {"all": gt_files["all"]})


def test_crop_records_cut_a_box_exactly_as_ingestion(tmp_path_factory):
    """A box of the raw image, cut by ``crop_records``, is the ingested record byte for byte."""
    pq, gt_files = ingested("coco", tmp_path_factory)
    boxes = {a["id"]: a["bbox"] for a in json.loads(gt_files["all"].read_text())["annotations"]}
    for r in table("coco", "val", tmp_path_factory).slice(0, 3).to_pylist():
        image = decode_jpeg((pq.parent / "raw" / r["source_id"]).read_bytes())
        (rec,) = crop_records(image, [boxes[r["annotation_id"]]], image_id=r["image_id"], scene=r["scene"])
        assert rec["crop_jpeg"] == r["crop_jpeg"]
        np.testing.assert_allclose(rec["crop_box"], r["crop_box"], rtol=1e-6)


def test_predict_records_locally_matches_predict_table(tmp_path_factory, tmp_path):
    val = table("humanart", "val", tmp_path_factory)
    save_vitpose(build_vitpose(ViTPoseSize(**TINY_SIZE), seed=0), tmp_path / "vitpose")
    expected = predict_table(load_pose_model(tmp_path / "vitpose"), val, batch_size=16)
    got = predict_records(tmp_path / "vitpose", val, engine="local", batch_size=5)
    assert [g["image_id"] for g in got] == [e["image_id"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g["keypoints"], e["keypoints"], atol=1e-3)
        assert g["score"] == pytest.approx(e["score"], abs=1e-5)
    with pytest.raises(ValueError, match="engine must be"):
        predict_records(tmp_path / "vitpose", val, engine="spark")


def test_evaluate_pose_locally_writes_metrics_and_predictions(tmp_path_factory, tmp_path):
    """The evaluation stage with the local engine on untrained models: the documented files, and
    clear errors for unusable detections."""
    from pipeline.pose2d.config import PoseConfig
    from pipeline.pose2d.stages import evaluate_pose

    pq_root, gt_root = tmp_path / "parquet", tmp_path / "gt"
    pq_root.mkdir()
    gt_root.mkdir()
    for name in ("coco", "humanart"):
        pq, files = ingested(name, tmp_path_factory)
        (pq_root / name).symlink_to(pq)
        (gt_root / name).symlink_to(files["all"].parent)
    save_vitpose(build_vitpose(ViTPoseSize(**TINY_SIZE), seed=0), tmp_path / "m" / "original")
    coco_gt = json.loads((gt_root / "coco" / "coco_all.json").read_text())
    dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.5} for a in coco_gt["annotations"][:3]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    cfg = PoseConfig(eval_batch_size=8, detections={"coco": tmp_path / "dets.json"})
    raw = {"coco": ingested("coco", tmp_path_factory)[0].parent / "raw"}

    summary = evaluate_pose(
        cfg, None, {"original": tmp_path / "m" / "original"}, tmp_path / "metrics", tmp_path / "preds",
        pq_root, gt_root, engine="local", raw_roots=raw,
    )  # fmt: skip
    doc = json.loads((tmp_path / "metrics" / "original.json").read_text())
    assert summary["models"]["original"]["coco"] == doc["domains"]["coco"]["AP"] and "mlflow_run_ids" not in summary
    assert set(doc) == {"model", "kind", "domains", "scenes", "detected"} and set(doc["detected"]["domains"]) == {
        "coco"
    }
    assert sorted(p.name for p in (tmp_path / "preds" / "original").iterdir()) == [
        "coco.json",
        "coco_detected.json",
        "humanart.json",
    ]
    detected = json.loads((tmp_path / "preds" / "original" / "coco_detected.json").read_text())
    assert len(detected) == 3 and all(len(p["keypoints"]) == 51 for p in detected)

    def run(detections, raw_roots=raw):
        (tmp_path / "bad.json").write_text(json.dumps(detections))
        cfg = PoseConfig(detections={"coco": tmp_path / "bad.json"})
        evaluate_pose(
            cfg, None, {"original": tmp_path / "m" / "original"}, tmp_path / "metrics", tmp_path / "preds",
            pq_root, gt_root, engine="local", raw_roots=raw_roots,
        )  # fmt: skip

    with pytest.raises(ValueError, match="needs their raw image roots"):
        run(dets, raw_roots=None)
    with pytest.raises(ValueError, match=r"bad\.json\[0\]: field 'image_id' 999999"):
        run([{"image_id": 999999, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(ValueError, match=r"bad\.json\[0\]: field 'bbox'"):
        run([{"image_id": dets[0]["image_id"], "bbox": [0, 0, 0, 5], "score": 1.0}])
    with pytest.raises(ValueError, match=r"bad\.json\[0\]: needs image_id, bbox"):
        run([{"bbox": [0, 0, 5, 5]}])
    with pytest.raises(ValueError, match="expected a list"):
        run({"image_id": 1})
