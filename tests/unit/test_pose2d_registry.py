"""VLPose in the MLflow registry: the gate rule, aliases against a real (sqlite) MLflow, the pyfunc.

Also the ``pose`` params section (:class:`~pipeline.pose2d.config.PoseConfig`) the registry and
the stages read: unknown keys fail naming the key, every dict section is validated.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from pydantic import ValidationError

from pipeline.config import TrackingConfig
from pipeline.pose2d.artifacts import load_pose_model, save_vlpose
from pipeline.pose2d.config import PoseConfig
from pipeline.pose2d.model import VLPoseConfig, VLPoseModel
from pipeline.pose2d.predict import predict_rows
from pipeline.pose2d.registry import KeypointModel, register_vlpose, vlpose_gate
from pipeline.pose2d.text import PromptConfig
from pipeline.pose2d.vitpose import ViTPoseSize, build_vitpose
from pipeline.registry import CANDIDATE, CHAMPION
from tests.unit._pose2d_data import TINY_SIZE, ingested, table

TEXT_DIM = 8  # random prompt embeddings: no text encoder needed for the known scenes


# ---------------------------------------------------------------- the gate
@pytest.mark.parametrize(
    ("humanart", "coco", "champion", "promote", "reason"),
    [
        (0.30, 0.50, None, True, "no champion yet"),
        (0.40, 0.48, 0.30, True, "beats the champion"),  # COCO within 0.05 of the original's 0.52
        (0.30, 0.50, 0.30, False, "does not beat"),  # a tie does not move the champion
        (0.90, 0.40, 0.30, False, "COCO AP"),  # better on art, forgot photos: never promoted
        (0.90, 0.40, None, False, "COCO AP"),  # not even as the first champion
        (None, 0.50, None, False, "no HumanArt"),
    ],
)
def test_gate_rule(humanart, coco, champion, promote, reason):
    decision = vlpose_gate(humanart, coco, champion, original_coco_ap=0.52, tolerance=0.05)
    assert decision.promote is promote and reason in decision.reason


def test_gate_edge_of_the_tolerance_is_kept():
    assert vlpose_gate(0.3, 0.47, None, 0.52, 0.05).promote  # exactly original − tolerance (± float)
    assert not vlpose_gate(0.3, 0.469, None, 0.52, 0.05).promote


# ---------------------------------------------------------------- registering against sqlite MLflow
@pytest.fixture(scope="module")
def vlpose_dir(tmp_path_factory):
    original = build_vitpose(ViTPoseSize(**TINY_SIZE), seed=0)
    torch.manual_seed(0)
    model = VLPoseModel(original, VLPoseConfig(text_dim=TEXT_DIM, num_heads=2))
    with torch.no_grad():  # non-zero injectors: VLPose differs from its original
        for conv in model.injectors:
            conv.weight.normal_(0, 0.05)
    prompts = PromptConfig()
    table_ = {p: torch.randn(TEXT_DIM) for p in prompts.known_prompts()}
    return save_vlpose(model, tmp_path_factory.mktemp("vlpose") / "model", prompts=prompts, prompt_table=table_)


def _metrics(folder, name, coco, humanart):
    doc = {"model": name, "domains": {"coco": {"AP": coco}, "humanart": {"AP": humanart}}, "scenes": {}}
    (folder / f"{name}.json").write_text(json.dumps(doc))


def test_register_moves_aliases_only_when_the_rule_says_so(tmp_path, vlpose_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingConfig(tracking_uri=uri, experiment="pose-reg")
    cfg = PoseConfig(registry={"coco_tolerance": 0.05})
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    _metrics(metrics, "original", coco=0.52, humanart=0.20)

    _metrics(metrics, "vlpose", coco=0.50, humanart=0.30)  # first: becomes champion
    first = register_vlpose(cfg, tracking, metrics, vlpose_dir, None, tmp_path / "r1.json")
    assert first["promoted"] and first["champion"] == first["version"] and first["previous_champion"] is None

    _metrics(metrics, "vlpose", coco=0.40, humanart=0.60)  # better on art but COCO dropped: candidate only
    second = register_vlpose(cfg, tracking, metrics, vlpose_dir, metrics / "original.json", tmp_path / "r2.json")
    assert not second["promoted"] and "COCO AP" in second["reason"]
    assert second["champion"] == first["version"] and second["previous_champion"] == first["version"]
    assert json.loads((tmp_path / "r2.json").read_text()) == second

    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("vlpose", CHAMPION).version) == first["version"]
    assert str(client.get_model_version_by_alias("vlpose", CANDIDATE).version) == second["version"]
    v2 = client.get_model_version("vlpose", second["version"])
    assert v2.tags["humanart_ap"] == "0.6" and v2.tags["original_coco_ap"] == "0.52" and "COCO AP" in v2.tags["gate"]

    # The champion, loaded as users load it, answers a keypoint request.
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vlpose@champion")
    out = model.predict(pd.DataFrame([{"image": _png(), "box": [20.0, 10.0, 30.0, 60.0], "scene": "sketch"}]))
    assert list(out.columns) == ["keypoints", "score"] and np.asarray(out["keypoints"][0]).shape == (17, 3)

    disabled = register_vlpose(
        PoseConfig(registry={"enabled": False}), tracking, metrics, vlpose_dir, None, tmp_path / "r3.json"
    )
    assert disabled == {"model_name": "vlpose", "enabled": False}
    assert len(client.search_model_versions("name='vlpose'")) == 2


def test_register_needs_the_original_coco_ap(tmp_path, vlpose_dir):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    _metrics(metrics, "vlpose", coco=0.5, humanart=0.3)
    (metrics / "original.json").write_text(json.dumps({"domains": {"humanart": {"AP": 0.1}}}))
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ValueError, match=r"original\.json: no domains\.coco\.AP"):
        register_vlpose(PoseConfig(), tracking, metrics, tmp_path, None, tmp_path / "r.json")


# ---------------------------------------------------------------- the pyfunc
def _png(h: int = 80, w: int = 64) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _keypoint_model(model_dir, crop=None) -> KeypointModel:
    model = KeypointModel()
    model.load_context(SimpleNamespace(model_config={"crop": crop or {}}, artifacts={"model": str(model_dir)}))
    return model


def test_pyfunc_answers_17_keypoints_per_box(vlpose_dir):
    model = _keypoint_model(vlpose_dir)
    request = pd.DataFrame(
        [
            {"image": _png(), "box": [20.0, 10.0, 30.0, 60.0], "scene": "sketch", "super_category": None},
            {"image": _png(), "box": np.array([0, 0, 64, 80]), "scene": None, "super_category": None},  # photo
        ]
    )
    out = model.predict(None, request)
    kps = np.asarray(out["keypoints"].tolist())
    assert kps.shape == (2, 17, 3) and np.isfinite(kps).all()
    np.testing.assert_allclose(out["score"], kps[..., 2].mean(axis=1), atol=1e-3)
    # Joints land in the person's crop (box grown to 3:4 and padded 1.25×), in image pixels.
    x0, y0 = 20 + 15 - 0.5 * 1.25 * 45, 10 + 30 - 0.5 * 1.25 * 60
    assert (kps[0, :, 0] >= x0 - 1).all() and (kps[0, :, 0] <= x0 + 1.25 * 45 + 1).all()
    assert (kps[0, :, 1] >= y0 - 1).all() and (kps[0, :, 1] <= y0 + 1.25 * 60 + 1).all()
    # The scene is the prompt: a sketch and a photo of the same box differ.
    again = model.predict(None, pd.DataFrame([{"image": _png(), "box": [20.0, 10.0, 30.0, 60.0]}]))
    assert not np.allclose(np.asarray(again["keypoints"][0]), kps[0])


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"image": b"not an image", "box": [1, 1, 10, 10]}, "field 'image'"),
        ({"image": None, "box": [1, 1, 10, 10]}, "field 'image'"),
        ({"box": [1, 1, 10, 10]}, "field 'image'"),
        ({"image": "png", "box": [1, 1, 10]}, "field 'box'"),
        ({"image": "png", "box": [1, 1, 0, 10]}, "field 'box'"),
        ({"image": "png", "box": [1, 1, float("nan"), 10]}, "field 'box'"),
        ({"image": "png", "box": None}, "field 'box'"),
        ({"image": "png"}, "field 'box'"),
    ],
)
def test_pyfunc_names_the_bad_field(vlpose_dir, row, field):
    model = _keypoint_model(vlpose_dir)
    row = {k: (_png() if v == "png" else v) for k, v in row.items()}
    with pytest.raises(ValueError, match=field):
        model.predict(None, pd.DataFrame([row]))


def test_pyfunc_predicts_a_box_as_evaluation_predicts_its_record(vlpose_dir, tmp_path_factory):
    """Cut from the raw image by the ingestion's own crop, a ground-truth box gives the very
    keypoints the evaluation gets from the ingested record."""
    pq, gt_files = ingested("humanart", tmp_path_factory)
    rows = table("humanart", "val", tmp_path_factory).slice(0, 3).to_pylist()
    expected = predict_rows(load_pose_model(vlpose_dir), rows)
    # The annotation file's boxes (float64), as ingestion read them; the records keep float32.
    boxes = {a["id"]: a["bbox"] for a in json.loads(gt_files["all"].read_text())["annotations"]}
    request = pd.DataFrame(
        [
            {
                "image": (pq.parent / "raw" / r["source_id"]).read_bytes(),
                "box": boxes[r["annotation_id"]],
                "scene": r["scene"],
                "super_category": r["super_category"],
            }
            for r in rows
        ]
    )
    out = _keypoint_model(vlpose_dir).predict(None, request)
    for got, want in zip(out["keypoints"], expected, strict=True):
        np.testing.assert_allclose(np.asarray(got).reshape(-1), want["keypoints"], atol=1e-3)


# ---------------------------------------------------------------- the params section
def test_pose_config_defaults_validate_and_build():
    cfg = PoseConfig()
    assert ViTPoseSize(**cfg.size) and cfg.train_config("train_original").steps > cfg.train_config("finetune").steps
    assert cfg.registry.model_name == "vlpose" and cfg.detections is None
    with pytest.raises(KeyError, match="valid: train_original, finetune, train_vlpose"):
        cfg.train_config("nope")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sizes": {}}, "sizes"),
        ({"size": {"hidden": 64}}, "unknown key(s) ['hidden']"),
        ({"size": {"image_height": 100}}, "not a multiple of patch_size"),
        ({"vlpose": {"text_dim": 16}}, "unknown key(s) ['text_dim']"),
        ({"prompts": {"templat": "x"}}, "unknown key(s) ['templat']"),
        ({"train_vlpose": {"zero_stag": 2}}, "zero_stag"),
        ({"finetune": {"steps": 0}}, "finetune.steps"),
        ({"detections": {"mpii": "d.json"}}, "unknown domain(s) ['mpii']"),
        ({"registry": {"coco_tolerance": 2}}, "coco_tolerance"),
    ],
)
def test_pose_config_rejects_bad_keys_naming_them(section, message):
    with pytest.raises(ValidationError) as err:
        PoseConfig.model_validate(section)
    assert message in str(err.value)


def test_pose_config_is_frozen():
    with pytest.raises(ValidationError):
        PoseConfig().sigma = 3.0  # type: ignore[misc]
