"""Model registry: the capability-retention gate, aliases against a real (sqlite) MLflow, the pyfunc."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from pipeline.config import parse_params
from pipeline.registry import CANDIDATE, CHAMPION, gate, load_champion, register_merged
from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm, save_vlm
from tests.conftest import tiny_params_dict


def test_gate_rules():
    assert gate(5.0, 0.9, None, 0.9, 0.1).promote  # first champion
    assert gate(4.0, 0.85, 5.0, 0.9, 0.1).promote  # better MAE, grounding within tolerance
    assert not gate(5.0, 0.9, 5.0, 0.9, 0.1).promote  # a tie does not move the champion
    lost = gate(1.0, 0.5, 5.0, 0.9, 0.1)
    assert not lost.promote and "grounding" in lost.reason  # forgot grounding: never promoted
    assert not gate(None, 0.9, None, 0.9, 0.1).promote  # no valid answer
    # The MAE counts valid answers only: a better MAE with many invalid answers is not promoted.
    broken = gate(3.0, 0.9, 5.0, 0.9, 0.1, invalid_rate=0.30, max_invalid_rate=0.05)
    assert not broken.promote and broken.reason == "invalid head-pose answers 30.0% > max 5.0%"
    assert gate(3.0, 0.9, 5.0, 0.9, 0.1, invalid_rate=0.05, max_invalid_rate=0.05).promote
    # A model at chance is never promoted, however it ranks; without chance on record: not checked.
    at_chance = gate(3.0, 0.9, None, 0.9, 0.1, chance_ratio=0.98, max_chance_ratio=0.7)
    assert not at_chance.promote and "not clearly below chance" in at_chance.reason
    assert gate(3.0, 0.9, None, 0.9, 0.1, chance_ratio=0.4, max_chance_ratio=0.7).promote
    assert gate(3.0, 0.9, None, 0.9, 0.1, chance_ratio=None).promote


def _row(name, kind, mae, acc):
    return {
        "candidate": name,
        "kind": kind,
        "mean_mae": mae,
        "grounding/acc_iou50": acc,
        "grounding/mean_iou": acc,
        "grounding/invalid_rate": 0.0,
    }


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    model, processor = build_tiny_vlm(TinyVLMConfig())
    return save_vlm(model, processor, tmp_path_factory.mktemp("m") / "model")


def test_register_moves_aliases_by_the_gate(tmp_path, tiny_model_dir):
    data = tiny_params_dict()
    data["lora"]["adapters"] = {"hpe": {"rehearsal": 0.0}, "grounding": {"rehearsal": 1.0}}
    data["merge"] = {
        "inputs": ["hpe", "grounding"],
        "weights": [1.0, 1.0],
        "methods": {"a": {}, "b": {"threshold": 0.9}, "c": {}, "d": {}},
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["tracking"] = {"tracking_uri": uri, "experiment": "reg", "enabled": True}
    params = parse_params(data)
    merged = tmp_path / "merged"
    merged.mkdir()
    for m in ("a", "b", "c", "d"):
        shutil.copytree(tiny_model_dir, merged / m)
    table = tmp_path / "evaluation.json"
    table.write_text(
        json.dumps(
            {
                "candidates": [
                    _row("base", "base", 9.0, 0.9),
                    _row("merge:a", "merged", 6.0, 0.85),  # champion: first, grounding kept
                    _row("merge:b", "merged", 3.0, 0.2),  # best MAE but forgot grounding: stays candidate only
                    _row("merge:c", "merged", 5.0, 0.95),  # beats a: takes champion
                    # best MAE, grounding kept, but 30% of its BIWI answers are invalid: not promoted
                    {
                        **_row("merge:d", "merged", 2.0, 0.95),
                        "aflw2000/invalid_rate": 0.0,
                        "biwi_hpdb/invalid_rate": 0.3,
                    },
                ]
            }
        )
    )
    out = register_merged(params, table, merged, tmp_path / "registry.json")
    promoted = {d["candidate"]: d["promoted"] for d in out["decisions"]}
    assert promoted == {"merge:a": True, "merge:b": False, "merge:c": True, "merge:d": False}
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("hpe-vlm", CHAMPION)
    assert champion.tags["method"] == "c" and out["champion"] == str(champion.version)
    d = next(d for d in out["decisions"] if d["candidate"] == "merge:d")
    assert d["reason"] == "invalid head-pose answers 30.0% > max 5.0%"
    assert str(client.get_model_version_by_alias("hpe-vlm", CANDIDATE).version) == d["version"]  # the last one
    b = next(d for d in out["decisions"] if d["candidate"] == "merge:b")
    assert "grounding" in client.get_model_version("hpe-vlm", b["version"]).tags["gate"]
    assert client.get_model_version("hpe-vlm", b["version"]).tags["threshold"] == "0.9"

    # The champion answers a head-pose request (random weights: the answer may be invalid, but
    # the request goes through the real model and comes back in the documented shape).
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = load_champion("hpe-vlm")
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="PNG")

    res = model.predict(
        pd.DataFrame(
            [
                {"image": buf.getvalue(), "task": "headpose", "box": [10, 10, 40, 40]},
                {"image": buf.getvalue(), "task": "grounding", "box": None},
            ]
        )
    )
    assert list(res.columns) == ["answer", "valid", "yaw", "pitch", "roll", "box"] and len(res) == 2
    with pytest.raises(ValueError, match="field 'box'"):
        model.predict(pd.DataFrame([{"image": buf.getvalue(), "task": "headpose", "box": None}]))
    with pytest.raises(ValueError, match="field 'image'"):
        model.predict(pd.DataFrame([{"image": b"not an image", "task": "grounding", "box": None}]))
