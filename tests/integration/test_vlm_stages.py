"""A bad LoRA target fails before any training. The VLM stages' artifacts end to end (pretrain,
LoRA, merges, evaluation, registry) are checked on the outputs of the one full `dvc repro` in
test_dvc_pipeline.py rather than trained a second time here."""

from __future__ import annotations

import time

import pytest
import yaml

from pipeline import stages
from pipeline.config import parse_params
from pipeline.train.ray_deepspeed import PreflightError
from pipeline.vlm import stages as vlm_stages
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


def _params(tmp_path, **lora_overrides):
    d = tiny_params_dict()
    d["pretrain_base"]["train"].update(steps=12, checkpoint_every=6, warmup_steps=2, micro_batch_size=8)
    d["lora"]["train"].update(steps=6, checkpoint_every=3, warmup_steps=1, micro_batch_size=8)
    d["lora"].update(lora_overrides)
    d["vlm"].update(eval_rows=4, heldout_fraction=0.25)
    d["tracking"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return parse_params(d)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory, synthetic_raw):
    root = tmp_path_factory.mktemp("pq")
    p = parse_params({**tiny_params_dict(), "tracking": {"enabled": False}})
    stages.ingest_stage(p, "300w_lp", synthetic_raw / "300w_lp", root / "300w_lp", engine="local")
    stages.ingest_stage(p, "aflw2000", synthetic_raw / "aflw2000", root / "aflw2000", engine="local")
    stages.ingest_stage(p, "biwi_hpdb", synthetic_raw / "biwi", root / "biwi_hpdb", engine="local")
    return root


def test_bad_lora_target_fails_before_training(parquet, tmp_path, monkeypatch):
    params = _params(tmp_path, target_modules=["q_proj", "no_such_proj"])
    d = yaml.safe_load(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))
    assert d  # params round-trip as plain data
    base = tmp_path / "base"
    from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm, save_vlm

    save_vlm(*build_tiny_vlm(TinyVLMConfig()), base)
    t0 = time.perf_counter()
    with pytest.raises(PreflightError, match="no_such_proj"):
        vlm_stages.train_lora(params, "hpe", base, tmp_path / "adapter", tmp_path / "runs", parquet_root=parquet)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "adapter").exists()
