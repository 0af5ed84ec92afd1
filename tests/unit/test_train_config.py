"""TrainConfig validation, and the pure pieces of the loop: LR schedule, batch sampling, DeepSpeed config."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.train.config import TrainConfig
from pipeline.train.ray_deepspeed import StepSampler, deepspeed_config, lr_factor, step_seed


def test_defaults_validate_and_global_batch():
    cfg = TrainConfig()
    assert cfg.zero_stage == 0 and cfg.precision == "fp32"
    assert TrainConfig(micro_batch_size=4, grad_accum=3, num_workers=2).global_batch_size == 24


def test_round_trips_through_a_dict():
    cfg = TrainConfig(steps=7, zero_stage=3, cpus_per_worker=0.5)
    assert TrainConfig(**cfg.model_dump()) == cfg


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"zero_stag": 2}, "zero_stag"),
        ({"zero_stage": 4}, "zero_stage"),
        ({"precision": "fp8"}, "precision"),
        ({"steps": 0}, "steps"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"steps": 5, "warmup_steps": 6}, "warmup_steps"),
    ],
)
def test_rejects_unknown_or_invalid_keys_naming_them(bad, field):
    with pytest.raises(ValidationError, match=field):
        TrainConfig(**bad)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=10, warmup_steps=3, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(10)]
    assert f[:3] == pytest.approx([0.25, 0.5, 0.75]) and f[3] == 1.0
    assert all(a >= b for a, b in zip(f[3:], f[4:], strict=False)) and f[-1] == pytest.approx(0.1)
    assert lr_factor(0, TrainConfig(steps=1)) == 1.0


def test_sampler_is_a_pure_function_of_step_and_covers_each_epoch():
    a = StepSampler(10, seed=3, micro_batch_size=2, grad_accum=1, world_size=2)
    b = StepSampler(10, seed=3, micro_batch_size=2, grad_accum=1, world_size=2)
    assert np.array_equal(a.indices(7, 0, 1), b.indices(7, 0, 1))  # b never saw steps 0–6
    epoch0 = np.concatenate([a.indices(s, 0, r) for s in range(3) for r in range(2)])[:10]
    assert sorted(epoch0) == list(range(10))
    assert not np.array_equal(
        a.indices(0, 0, 0), StepSampler(10, seed=4, micro_batch_size=2, grad_accum=1, world_size=2).indices(0, 0, 0)
    )


def test_step_seeds_differ_by_step_and_rank():
    seeds = {step_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def test_deepspeed_config_uses_torch_adamw_and_the_requested_zero_stage():
    ds = deepspeed_config(TrainConfig(micro_batch_size=4, grad_accum=2, zero_stage=2, grad_clip=0), world_size=3)
    assert ds["train_batch_size"] == 24 and ds["zero_optimization"]["stage"] == 2
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"] is True
    assert "gradient_clipping" not in ds and not ds["bf16"]["enabled"]


def test_device_is_validated_and_cpu_refuses_half_precision():
    assert TrainConfig().device == "auto"
    with pytest.raises(ValidationError, match="device"):
        TrainConfig(device="gpu")
    with pytest.raises(ValidationError, match="'bf16' needs device cuda"):
        TrainConfig(device="cpu", precision="bf16")
    TrainConfig(device="cuda", precision="bf16")  # checked against the cluster when the run starts
