"""params.yaml → typed config: the shipped file validates; every bad key is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.ingest.dataset("300w_lp").crop_margin == (0.2, 0.4)
    assert p.synthetic.get("300w_lp").n_per_subset >= 1
    assert set(p.ingest.datasets) == {"300w_lp", "aflw2000", "biwi_hpdb", "biwi_npz", "coco", "humanart"}


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["ingest"].update(crop_sz=96), "ingest.crop_sz: unknown key"),
        (lambda d: d.update(sed=1), "sed: unknown key"),
        (lambda d: d["synthetic"]["aflw2000"].update(n="lots"), "synthetic.aflw2000.n"),
        (lambda d: d["ingest"].update(jpeg_quality=101), "ingest.jpeg_quality"),
        (lambda d: d["ingest"]["datasets"]["aflw2000"].update(crop_margin=[0.4, 0.2]), "crop_margin"),
        (lambda d: d["ingest"]["datasets"].update(biwi_nzp={"raw_root": "x"}), "'biwi_nzp'"),
        (
            lambda d: d["ingest"]["datasets"]["300w_lp"].update(raw_rot="x"),
            "ingest.datasets.300w_lp.raw_rot: unknown key",
        ),
        (lambda d: d["tracking"].update(enabled="maybe"), "tracking.enabled"),
    ],
)
def test_bad_key_is_named(mutate, expected):
    data = _params()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_params(data, "params.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("params.yaml: ")


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


def test_env_overrides_tracking_uri(monkeypatch):
    p = parse_params(_params())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert p.tracking.resolved_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert p.tracking.resolved_uri() == "http://127.0.0.1:5000"


def test_unknown_synthetic_and_dataset_names_list_valid_ones():
    p = parse_params(_params())
    with pytest.raises(ConfigError, match="unknown synthetic dataset"):
        p.synthetic.get("coco2")
    with pytest.raises(ConfigError, match="configured: 300w_lp"):
        p.ingest.dataset("nope")
