"""MLflow model registry for VLPose: versions of ``vlpose``, a capability-retention gate, a pyfunc.

The same rule style as ``hpe-vlm`` (:mod:`pipeline.registry`): every trained VLPose is logged
as an MLflow *pyfunc* model whose artifact is the VLPose folder, registered as a new version
(tags: its APs per domain, the original's COCO AP) with alias ``candidate``. Alias ``champion``
moves to it only when

* its HumanArt AP beats the current champion's (the point of VLPose: art as well as photos), and
* its COCO AP is within ``pose.registry.coco_tolerance`` of the original ViTPose's COCO AP: a
  model that gained on art by forgetting photos is never promoted (capability retention).

:class:`KeypointModel` is how a user asks a registered version for keypoints: an image, a person
box, and the image's scene; it cuts the box exactly as ingestion does
(:func:`pipeline.pose2d.predict.crop_records`), so a served box is predicted as in evaluation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from pipeline.registry import CANDIDATE, CHAMPION, GateDecision, current_champion, register_candidate

__all__ = ["METRIC_TAG", "vlpose_gate", "KeypointModel", "register_vlpose"]

METRIC_TAG = "humanart_ap"  # the version tag the champion is compared on


def vlpose_gate(
    humanart_ap: float | None,
    coco_ap: float | None,
    champion_humanart_ap: float | None,
    original_coco_ap: float,
    tolerance: float,
) -> GateDecision:
    """Whether a VLPose candidate takes ``champion`` (pure; the rule is in the module docstring).

    Args:
        humanart_ap, coco_ap: the candidate's AP (fractions) on HumanArt val and COCO val.
        champion_humanart_ap: the current champion's HumanArt AP; ``None``: no champion yet.
        original_coco_ap: the original ViTPose's COCO AP.
        tolerance: how far below the original's COCO AP the candidate may fall.
    """
    if humanart_ap is None or coco_ap is None:
        return GateDecision(False, "no HumanArt or COCO AP to compare")
    floor = original_coco_ap - tolerance
    if coco_ap < floor - 1e-9:  # exactly at the edge is within (0.52 − 0.05 > 0.47 in floats)
        return GateDecision(
            False, f"COCO AP {coco_ap:.4f} < original ViTPose's {original_coco_ap:.4f} − tolerance {tolerance:.4f}"
        )
    if champion_humanart_ap is not None and humanart_ap <= champion_humanart_ap:
        return GateDecision(
            False, f"HumanArt AP {humanart_ap:.4f} does not beat the champion's {champion_humanart_ap:.4f}"
        )
    was = "no champion yet" if champion_humanart_ap is None else f"beats the champion's {champion_humanart_ap:.4f}"
    return GateDecision(True, f"HumanArt AP {humanart_ap:.4f} ({was}); COCO AP {coco_ap:.4f} ≥ {floor:.4f}")


def _box(value: Any, i: int) -> list[float]:
    try:
        box = [float(v) for v in value]
    except TypeError:
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"row {i}: field 'box' must be a COCO box [x, y, w, h] with w, h > 0, got {value!r}")
    return box


class KeypointModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: the 17 COCO keypoints of a person given by its box.

    Input: a DataFrame with ``image`` (encoded JPEG/PNG bytes), ``box`` (COCO ``[x, y, w, h]``
    in image pixels) and optionally ``scene`` (``photo`` for COCO-like photos, a HumanArt scene
    such as ``sketch``; default ``photo``) and ``super_category`` (VLPose builds its prompt from
    them; an unseen scene is embedded by the text encoder).
    Output: ``keypoints`` (17 ``[x, y, score]`` in image pixels, COCO order) and ``score`` (the
    mean joint score).

    ``model_config``: ``crop`` — :class:`~pipeline.pose2d.predict.CropSpec` fields (the
    ingestion's ``pose_input``, ``pose_padding``, ``jpeg_quality``).
    """

    def load_context(self, context: Any) -> None:
        from pipeline.pose2d.artifacts import load_pose_model
        from pipeline.pose2d.predict import CropSpec

        cfg = context.model_config or {}
        crop = dict(cfg.get("crop") or {})
        if "size" in crop:
            crop["size"] = tuple(crop["size"])
        self.crop = CropSpec(**crop)
        self.estimator = load_pose_model(context.artifacts["model"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow reads type hints as a schema)
        import numpy as np
        import pandas as pd
        import torch

        from pipeline.imaging import decode_jpeg
        from pipeline.keypoints import COCO_SCENE
        from pipeline.pose2d.predict import crop_records, predict_rows

        for column in ("image", "box"):
            if column not in model_input.columns:
                raise ValueError(f"missing field {column!r}: the input needs columns 'image' and 'box'")
        rows = []
        for i, r in enumerate(model_input.to_dict("records")):
            try:
                image = decode_jpeg(r["image"])
            except Exception as err:  # noqa: BLE001 — PIL raises several types for bad bytes
                raise ValueError(f"row {i}: field 'image' is not a decodable image ({err})") from None
            scene = r.get("scene")
            scene = COCO_SCENE if scene is None or (isinstance(scene, float) and math.isnan(scene)) else str(scene)
            super_category = r.get("super_category")
            if isinstance(super_category, float) and math.isnan(super_category):
                super_category = None
            rows += crop_records(
                image, [_box(r["box"], i)], image_id=i, scene=scene, super_category=super_category, spec=self.crop
            )
        with torch.inference_mode():
            results = predict_rows(self.estimator, rows) if rows else []
        return pd.DataFrame(
            {
                "keypoints": [np.asarray(p["keypoints"]).reshape(-1, 3).tolist() for p in results],
                "score": [p["score"] for p in results],
            }
        )


def _ap(doc: dict[str, Any], domain: str, path: Path) -> float | None:
    try:
        return doc["domains"][domain]["AP"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: no domains.{domain}.AP (write it with the pose evaluation stage)") from None


def register_vlpose(
    cfg: Any,
    tracking_cfg: Any,
    metrics_dir: str | Path,
    vlpose_dir: str | Path,
    original_metrics: str | Path | None,
    out_json: str | Path,
    *,
    crop: Any = None,
) -> dict[str, Any]:
    """The ``pose_register`` stage: the trained VLPose into the registry, through the gate.

    Args:
        cfg: the ``pose`` params (:class:`~pipeline.pose2d.config.PoseConfig`; reads ``registry``).
        tracking_cfg: the ``tracking`` params (where the registry lives).
        metrics_dir: the evaluation's metrics folder (reads ``vlpose.json``).
        vlpose_dir: the VLPose folder (logged as the model's artifact).
        original_metrics: the original ViTPose's metrics file; ``None``: ``<metrics_dir>/original.json``.
        out_json: the decision (JSON, written atomically).
        crop: the ingestion's :class:`~pipeline.pose2d.predict.CropSpec`, stored in the pyfunc's
            ``model_config`` (``None``: the ``ingest`` defaults).

    Returns:
        ``{"model_name", "version", "promoted", "reason", "previous_champion", "champion", …}``
        (``{"enabled": false}`` when ``pose.registry.enabled`` is off).
    """
    from mlflow import MlflowClient

    from pipeline.atomic import write_json_atomic
    from pipeline.pose2d.predict import CropSpec
    from pipeline.tracking import mlflow_run

    reg = cfg.registry
    if not reg.enabled:
        summary: dict[str, Any] = {"model_name": reg.model_name, "enabled": False}
        write_json_atomic(out_json, summary)
        return summary
    metrics_path = Path(metrics_dir) / "vlpose.json"
    original_path = Path(original_metrics) if original_metrics is not None else Path(metrics_dir) / "original.json"
    doc = json.loads(metrics_path.read_text())
    original = json.loads(original_path.read_text())
    humanart_ap, coco_ap = _ap(doc, "humanart", metrics_path), _ap(doc, "coco", metrics_path)
    original_coco_ap = _ap(original, "coco", original_path)
    if original_coco_ap is None:
        raise ValueError(f"{original_path}: the original ViTPose has no COCO AP to retain")
    tags = {
        METRIC_TAG: humanart_ap,
        "coco_ap": coco_ap,
        "original_coco_ap": original_coco_ap,
        "coco_tolerance": reg.coco_tolerance,
        **{f"ap/{d}": s["AP"] for d, s in doc["domains"].items()},
        "vlpose": dict(cfg.vlpose),
        "prompts": dict(cfg.prompts),
    }
    crop_spec = crop or CropSpec()
    with mlflow_run(tracking_cfg, "pose-register", tags={"stage": "pose_register"}):
        client = MlflowClient()
        version = register_candidate(
            reg.model_name,
            Path(vlpose_dir),
            tags,
            run_name="register-vlpose",
            python_model=KeypointModel(),
            model_config={"crop": {**asdict(crop_spec), "size": list(crop_spec.size)}},
        )
        client.set_registered_model_alias(reg.model_name, CANDIDATE, version)
        previous, champion_ap = current_champion(client, reg.model_name, METRIC_TAG)
        decision = vlpose_gate(humanart_ap, coco_ap, champion_ap, original_coco_ap, reg.coco_tolerance)
        if decision.promote:
            client.set_registered_model_alias(reg.model_name, CHAMPION, version)
        client.set_model_version_tag(reg.model_name, version, "gate", decision.reason)
        champion = current_champion(client, reg.model_name, METRIC_TAG)[0]
    summary = {
        "model_name": reg.model_name,
        "version": version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "previous_champion": previous,
        "champion": champion,
        METRIC_TAG: humanart_ap,
        "coco_ap": coco_ap,
        "original_coco_ap": original_coco_ap,
    }
    write_json_atomic(out_json, summary)
    return summary
