"""MLflow model registry: merged VLMs as versions of ``hpe-vlm``, a capability-retention gate.

Every merged model is logged as an MLflow *pyfunc* model whose artifact is the merged model
folder (``save_pretrained``; ``mlflow.transformers`` would reach for the hub) and
registered as a new version with tags (method, its parameters, inputs, metrics) and alias
``candidate``. Alias ``champion`` moves to the new version only when

* its mean head-pose MAE over the test sets beats the current champion's, and
* its grounding accuracy (acc@IoU0.5) stays within ``grounding_tolerance`` of the base model's:
  a merge that forgot how to ground is never promoted, however good its head pose, and
* at most ``max_invalid_rate`` of its head-pose answers (on any test set) are invalid: the MAE
  is taken over valid answers only, so a merge that answers a third of the questions in broken
  text could otherwise win on the rest, and
* its MAE is clearly below chance on every test set (at most ``max_chance_ratio`` × the
  training-median predictor's MAE, when the evaluation table carries chance): a model at chance
  has learnt nothing to promote, however it ranks against the others.

``load_champion`` + ``HeadPoseVLM.predict`` are how a user asks the champion for a head pose.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc

CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate(
    mean_mae: float | None,
    grounding_acc: float,
    champion_mae: float | None,
    base_grounding_acc: float,
    tolerance: float,
    invalid_rate: float = 0.0,
    max_invalid_rate: float = 1.0,
    chance_ratio: float | None = None,
    max_chance_ratio: float = 0.7,
) -> GateDecision:
    """Whether a candidate takes ``champion`` (pure; see the module docstring for the rule).

    ``invalid_rate`` is the candidate's worst invalid-answer rate over the head-pose test sets;
    ``chance_ratio`` its worst MAE / chance over them (``None``: no chance on record, not checked).
    """
    if mean_mae is None:
        return GateDecision(False, "no valid head-pose answer: no MAE to compare")
    if invalid_rate > max_invalid_rate:
        return GateDecision(
            False, f"invalid head-pose answers {100 * invalid_rate:.1f}% > max {100 * max_invalid_rate:.1f}%"
        )
    if chance_ratio is not None and chance_ratio > max_chance_ratio:
        return GateDecision(
            False, f"not clearly below chance: worst MAE / chance {chance_ratio:.2f} > {max_chance_ratio:.2f}"
        )
    floor = base_grounding_acc - tolerance
    if grounding_acc < floor:
        return GateDecision(
            False, f"grounding acc@0.5 {grounding_acc:.3f} < base {base_grounding_acc:.3f} − tolerance {tolerance:.3f}"
        )
    if champion_mae is not None and mean_mae >= champion_mae:
        return GateDecision(False, f"mean MAE {mean_mae:.3f} does not beat the champion's {champion_mae:.3f}")
    was = "no champion yet" if champion_mae is None else f"beats the champion's {champion_mae:.3f}"
    return GateDecision(True, f"mean MAE {mean_mae:.3f} ({was}); grounding {grounding_acc:.3f} ≥ {floor:.3f}")


class HeadPoseVLM(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: answers head-pose or grounding requests for an image (and a box).

    Input: a DataFrame with ``image`` (encoded JPEG/PNG bytes), ``task`` (``headpose`` or
    ``grounding``) and ``box`` (``[x0, y0, x1, y1]`` in image pixels, head pose only).
    Output: ``answer`` (the text as generated), ``valid``, ``yaw``, ``pitch``, ``roll`` (head
    pose) and ``box`` (grounding), ``None`` where not applicable or invalid.
    """

    def load_context(self, context: Any) -> None:
        from pipeline.vlm.families import get_family

        cfg = context.model_config or {}
        self.family = get_family(cfg.get("family", "tiny"))
        self.max_new_tokens = int(cfg.get("max_new_tokens", 40))
        self.model, self.processor = self.family.load(
            context.artifacts["model"], trust_remote_code=bool(cfg.get("trust_remote_code", False))
        )
        self.model.eval()

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow reads type hints as a schema)
        import numpy as np
        import pandas as pd
        from PIL import Image

        from pipeline.vlm.examples import generate_answers

        rows = model_input.to_dict("records")
        images, prompts = [], []
        for i, r in enumerate(rows):
            try:
                image = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"))
            except Exception as err:  # PIL raises several types for bad bytes
                raise ValueError(f"row {i}: field 'image' is not a decodable image ({err})") from None
            height, width = image.shape[:2]
            if r["task"] == "headpose":
                box = r.get("box")
                if box is None or len(box) != 4:
                    raise ValueError(f"row {i}: field 'box' must be [x0, y0, x1, y1] for a head-pose request")
                prompts.append(self.family.headpose_prompt(tuple(float(v) for v in box), width, height))
            elif r["task"] == "grounding":
                prompts.append(self.family.grounding_prompt())
            else:
                raise ValueError(f"row {i}: field 'task' must be 'headpose' or 'grounding', not {r['task']!r}")
            images.append(image)
        answers = generate_answers(self.model, self.processor, self.family, images, prompts, self.max_new_tokens)
        out = []
        for r, image, text in zip(rows, images, answers, strict=True):
            rec: dict[str, Any] = {
                "answer": text,
                "valid": False,
                "yaw": None,
                "pitch": None,
                "roll": None,
                "box": None,
            }
            if r["task"] == "headpose":
                pose = self.family.parse_headpose(text)
                if pose is not None:
                    rec.update(valid=True, yaw=pose[0], pitch=pose[1], roll=pose[2])
            else:
                box = self.family.parse_grounding(text, image.shape[1], image.shape[0])
                if box is not None:
                    rec.update(valid=True, box=list(box))
            out.append(rec)
        return pd.DataFrame(out)


def _metric_tag(value: Any) -> str:
    return "none" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def register_candidate(
    model_name: str,
    model_dir: Path,
    tags: dict[str, Any],
    run_name: str,
    python_model: mlflow.pyfunc.PythonModel,
    model_config: dict[str, Any] | None = None,
) -> str:
    """Log ``model_dir`` as the artifact of a pyfunc model (``python_model`` answers requests from
    it) in a new MLflow run, register it under ``model_name`` with ``tags``; returns the version."""
    import pipeline

    with mlflow.start_run(run_name=run_name, tags={"stage": "register"}, nested=True):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts={"model": str(model_dir)},
            model_config=model_config or {},
            code_paths=[str(Path(pipeline.__file__).parent)],
            # Explicit: inferring requirements would load the model in a subprocess.
            pip_requirements=["torch", "transformers", "peft", "pandas", "pillow"],
        )
        mlflow.log_dict(tags, "registry_tags.json")
    version = mlflow.register_model(
        info.model_uri,
        model_name,
        tags={k: _metric_tag(v) if not isinstance(v, (dict, list)) else json.dumps(v) for k, v in tags.items()},
    )
    return str(version.version)


def current_champion(client: Any, model_name: str, metric_tag: str = "mean_mae") -> tuple[str | None, float | None]:
    """Version of the current champion and its ``metric_tag`` value, ``(None, None)`` when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None
    value = mv.tags.get(metric_tag)
    return str(mv.version), (None if value in (None, "none") else float(value))


def load_champion(model_name: str = "hpe-vlm", alias: str = CHAMPION) -> Any:
    """The registered model behind ``alias`` as a pyfunc model (``models:/<name>@<alias>``)."""
    return mlflow.pyfunc.load_model(f"models:/{model_name}@{alias}")


def _worst_chance_ratio(row: dict[str, Any], chance: dict[str, Any], sets: list[str]) -> float | None:
    """The candidate's worst MAE / chance over ``sets`` (None without chance or without an MAE)."""
    from pipeline.evaluate.yardsticks import ratio_to_chance

    ratios = [ratio_to_chance(row.get(f"{s}/mae"), (chance.get(s) or {}).get("mae")) for s in sets]
    return None if not chance or any(r is None for r in ratios) else max(ratios)


def register_merged(params: Any, table_path: Path, merged_root: Path, out: Path) -> dict[str, Any]:
    """The ``register`` stage: every merged candidate of the evaluation table into the registry.

    Candidates are registered in table order; each takes ``candidate``, then faces the gate
    against whoever holds ``champion`` at that moment. The decisions go to ``out`` (JSON).
    """
    from mlflow import MlflowClient

    from pipeline.atomic import write_json_atomic
    from pipeline.evaluate.yardsticks import CLEARLY_BELOW_CHANCE
    from pipeline.tracking import mlflow_run

    cfg = params.registry
    table = json.loads(Path(table_path).read_text())
    rows, chance = table["candidates"], table.get("chance") or {}
    base = next((r for r in rows if r["kind"] == "base"), None)
    if base is None:
        raise ValueError(f"{table_path}: no 'base' row: the gate needs the base model's grounding accuracy")
    decisions = []
    with mlflow_run(params.tracking, "register", tags={"stage": "register"}):
        client = MlflowClient()
        for row in (r for r in rows if r["kind"] == "merged"):
            method = row["candidate"].split(":", 1)[1]
            tags = {
                "method": method,
                "method_params": params.merge.methods.get(method, {}),
                "inputs": params.merge.inputs,
                "weights": params.merge.weights,
                "threshold": params.merge.methods.get(method, {}).get("threshold"),
                **{k: v for k, v in row.items() if k not in ("candidate", "kind")},
            }
            version = register_candidate(
                cfg.model_name,
                Path(merged_root) / method,
                tags,
                run_name=f"register-{method}",
                python_model=HeadPoseVLM(),
                model_config={"family": params.vlm.family, "trust_remote_code": params.vlm.trust_remote_code},
            )
            client.set_registered_model_alias(cfg.model_name, CANDIDATE, version)
            champion_version, champion_mae = current_champion(client, cfg.model_name)
            decision = gate(
                row["mean_mae"],
                row["grounding/acc_iou50"],
                champion_mae,
                base["grounding/acc_iou50"],
                cfg.grounding_tolerance,
                invalid_rate=max(row.get(f"{s}/invalid_rate") or 0.0 for s in params.evaluate.headpose_sets),
                max_invalid_rate=cfg.max_invalid_rate,
                chance_ratio=_worst_chance_ratio(row, chance, params.evaluate.headpose_sets),
                max_chance_ratio=CLEARLY_BELOW_CHANCE,
            )
            if decision.promote:
                client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
            client.set_model_version_tag(cfg.model_name, version, "gate", decision.reason)
            decisions.append(
                {
                    "candidate": row["candidate"],
                    "version": version,
                    "promoted": decision.promote,
                    "reason": decision.reason,
                    "previous_champion": champion_version,
                }
            )
    summary = {
        "model_name": cfg.model_name,
        "decisions": decisions,
        "champion": current_champion(MlflowClient(params.tracking.resolved_uri()), cfg.model_name)[0],
    }
    write_json_atomic(out, summary)
    return summary
