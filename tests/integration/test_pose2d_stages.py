"""The VLPose stages end to end on tiny ingested COCO + HumanArt, with real Ray, DeepSpeed and MLflow.

train_original → train_finetune → train_vlpose (the one loop, 2 steps each) → evaluate_pose
(Ray Data, ground-truth boxes and the same boxes given as detections) → register_vlpose.
About two minutes on 2 shared cores, mostly Ray Train start-up.
"""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.pose2d.artifacts import load_pose_model
from pipeline.pose2d.config import PoseConfig
from pipeline.pose2d.registry import register_vlpose
from pipeline.pose2d.stages import (
    LINK_FILE,
    evaluate_pose,
    pose_tracking,
    resolve_model_dir,
    train_finetune,
    train_original,
    train_stage,
    train_vlpose,
)
from tests.unit._pose2d_data import TINY_SIZE, ingested

pytestmark = pytest.mark.integration

TRAIN = {"steps": 2, "micro_batch_size": 4, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1}
STATS = {"AP", "AP50", "AP75", "AR"}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """``(parquet_root, gt_root, raw_roots)`` laid out as the pipeline's ``data/`` folders."""
    base = tmp_path_factory.mktemp("pose-data")
    raw_roots = {}
    for name in ("coco", "humanart"):
        pq, files = ingested(name, tmp_path_factory)
        (base / "parquet").mkdir(exist_ok=True)
        (base / "ground_truth").mkdir(exist_ok=True)
        (base / "parquet" / name).symlink_to(pq)
        (base / "ground_truth" / name).symlink_to(files["all"].parent)
        raw_roots[name] = pq.parent / "raw"
    return base / "parquet", base / "ground_truth", raw_roots


def _detections_from_ground_truth(gt_all, path, score=0.9):
    """The ground-truth boxes of the people ingestion kept, as a detector's COCO results."""
    anns = json.loads(gt_all.read_text())["annotations"]
    dets = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": score}
        for a in anns
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]
    path.write_text(json.dumps(dets))
    return path


def test_train_evaluate_register(ray_local, roots, tmp_path):
    parquet_root, gt_root, raw_roots = roots
    tracking_cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="pose")
    cfg = PoseConfig(
        size=TINY_SIZE,
        train_original=TRAIN,
        finetune=TRAIN,
        train_vlpose={**TRAIN, "zero_stage": 2},  # the frozen original must survive ZeRO's partitioning
        vlpose={"num_heads": 2},
        eval_batch_size=8,
        detections={
            "coco": _detections_from_ground_truth(gt_root / "coco" / "coco_all.json", tmp_path / "coco_det.json"),
            "humanart": _detections_from_ground_truth(
                gt_root / "humanart" / "humanart_all.json", tmp_path / "humanart_det.json"
            ),
        },
    )
    models, runs = tmp_path / "models", tmp_path / "runs"

    def tracking(stage):
        return pose_tracking(tracking_cfg, stage, parquet_root)

    original = train_original(
        cfg,
        tracking("original"),
        models / "original",
        runs,
        parquet_root,
        curve=tmp_path / "curves" / "original.json",
        metrics=tmp_path / "train" / "original.json",
    )
    assert original["steps"] == 2 and original["mlflow_run_id"]
    assert [r["step"] for r in json.loads((tmp_path / "curves" / "original.json").read_text())] == [1, 2]
    train_metrics = json.loads((tmp_path / "train" / "original.json").read_text())
    assert train_metrics["steps"] == 2 and train_metrics["final_loss"] == original["final_loss"]

    finetuned = train_finetune(cfg, tracking("finetune"), models / "original", models / "finetuned", runs, parquet_root)
    vlpose = train_stage(
        "vlpose",
        cfg,
        tracking("vlpose"),
        original=models / "original",
        out=models / "vlpose",
        runs=runs,
        parquet_root=parquet_root,
    )
    assert finetuned["steps"] == vlpose["steps"] == 2 and "original_keypoint_error_px" in vlpose
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # The fine-tuned baseline moved every weight; VLPose kept the original bit for bit inside.
    orig = load_pose_model(models / "original").model.state_dict()
    tuned = load_pose_model(models / "finetuned").model.state_dict()
    vl = load_pose_model(models / "vlpose")
    assert vl.kind == "vlpose" and not torch.equal(orig["backbone.embeddings.patch_embeddings.projection.weight"],
                                                   tuned["backbone.embeddings.patch_embeddings.projection.weight"])  # fmt: skip
    assert all(torch.equal(v, vl.model.original.state_dict()[k]) for k, v in orig.items())

    # MLflow: one run per training stage, tagged with its stage, naming its input datasets.
    client = MlflowClient(tracking_cfg.tracking_uri)
    run = client.get_run(vlpose["mlflow_run_id"])
    assert run.data.tags["stage"] == "pose_train_vlpose"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"coco", "humanart"}

    names = {"original": models / "original", "finetuned": models / "finetuned", "vlpose": models / "vlpose"}
    summary = evaluate_pose(
        cfg,
        tracking_cfg,
        names,
        tmp_path / "metrics",
        tmp_path / "predictions",
        parquet_root,
        gt_root,
        engine="ray",
        raw_roots=raw_roots,
    )
    assert set(summary["models"]) == set(names) and set(summary["mlflow_run_ids"]) == set(names)
    for name in names:
        doc = json.loads((tmp_path / "metrics" / f"{name}.json").read_text())
        assert doc["model"] == name and doc["kind"] == ("vlpose" if name == "vlpose" else "vitpose")
        assert {"coco", "humanart", "real_human", "3D_virtual_human", "2D_virtual_human"} <= set(doc["domains"])
        assert "sketch" in doc["scenes"] and "photo" not in doc["scenes"]
        for stats in [*doc["domains"].values(), *doc["scenes"].values()]:
            assert set(stats) == STATS and all(v is None or 0.0 <= v <= 1.0 for v in stats.values())
        assert summary["models"][name]["humanart"] == doc["domains"]["humanart"]["AP"]
        # The ground-truth boxes given as detections are cut and predicted exactly as the records:
        # the same keypoints, scores scaled by the box score, so the same AP.
        for domain in ("coco", "humanart"):
            assert doc["detected"]["domains"][domain]["AP"] == pytest.approx(doc["domains"][domain]["AP"], abs=1e-9)
            preds = json.loads((tmp_path / "predictions" / name / f"{domain}.json").read_text())
            detected = json.loads((tmp_path / "predictions" / name / f"{domain}_detected.json").read_text())
            assert len(preds) == len(detected) > 0 and all(len(p["keypoints"]) == 51 for p in preds)
        run = client.get_run(summary["mlflow_run_ids"][name])
        assert run.data.tags["model"] == name and "humanart/AP" in run.data.metrics

    if not torch.cuda.is_available():  # GPU actors on a machine without GPUs: refused, not a silent wait
        with pytest.raises(ValueError, match=r"evaluate.gpus_per_worker=1, but Ray sees 0 GPUs"):
            evaluate_pose(
                cfg,
                None,
                names,
                tmp_path / "m2",
                tmp_path / "p2",
                parquet_root,
                gt_root,
                engine="ray",
                raw_roots=raw_roots,
                gpus_per_worker=1,
            )

    reg = register_vlpose(cfg, tracking_cfg, tmp_path / "metrics", models / "vlpose", None, tmp_path / "registry.json")
    assert reg["version"] == "1" and json.loads((tmp_path / "registry.json").read_text()) == reg
    assert reg["promoted"] == (reg["coco_ap"] >= reg["original_coco_ap"] - cfg.registry.coco_tolerance)


def test_a_user_checkpoint_is_validated_and_linked(tmp_path):
    from pipeline.pose2d.artifacts import save_vitpose
    from pipeline.pose2d.vitpose import ViTPoseSize, build_vitpose

    user = save_vitpose(build_vitpose(ViTPoseSize(**TINY_SIZE)), tmp_path / "user_vitpose")
    out = train_original(PoseConfig(checkpoint=user), None, tmp_path / "original", tmp_path / "runs", tmp_path)
    assert out["linked"] == str(user.resolve()) and (tmp_path / "original" / LINK_FILE).is_file()
    assert resolve_model_dir(tmp_path / "original") == user.resolve()

    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        train_original(PoseConfig(checkpoint=tmp_path / "not_a_model"), None, tmp_path / "o2", tmp_path, tmp_path)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(FileNotFoundError, match="run train_original first"):
        train_finetune(PoseConfig(), None, tmp_path / "missing", tmp_path / "f", tmp_path, tmp_path)
    with pytest.raises(KeyError, match="valid: original, finetune, vlpose"):
        train_stage("baseline", PoseConfig(), None, tmp_path, tmp_path)
    with pytest.raises(ValueError, match="pass its folder"):
        train_stage("vlpose", PoseConfig(), None, tmp_path / "v", tmp_path)
    with pytest.raises(FileNotFoundError, match="no ingested training split"):
        train_vlpose(PoseConfig(), None, tmp_path / "original", tmp_path / "v", tmp_path, tmp_path / "nothing")
