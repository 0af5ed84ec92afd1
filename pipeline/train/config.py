"""``TrainConfig``: the knobs of the one training loop, embedded per model in ``params.yaml``.

Every model's section in ``params.yaml`` carries one of these (``vlm.train``, ``vlpose.train``,
…); the orchestrator validates it here, so a typo (``zero_stag: 2``) fails at load time naming
the key instead of being silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Changing these between a run and its resume would change what the resumed run computes
# (other batches, another optimizer partitioning), so resume refuses when they differ.
RESUME_INVARIANT_FIELDS = (
    "micro_batch_size",
    "grad_accum",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "zero_stage",
    "precision",
    "num_workers",
    "seed",
    "betas",
    "eps",
)


class TrainConfig(BaseModel):
    """Hyper-parameters and resources of one training run.

    A *step* is one optimizer step: ``micro_batch_size × grad_accum × num_workers`` samples.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(100, ge=1, description="optimizer steps in the whole run")
    micro_batch_size: int = Field(8, ge=1, description="samples per worker per forward/backward")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate (after warm-up)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decay floor, as a fraction of lr")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to lr")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decay on matrices (ndim ≥ 2) only")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max global grad norm; 0 disables clipping")
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="bf16/fp16 need a GPU")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="cuda: one GPU per worker, NCCL; cpu: gloo; auto: cuda when the driver sees CUDA "
        "or the Ray cluster has a GPU per worker (a CPU-only head driving GPU nodes)",
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each on cuda)")
    cpus_per_worker: float = Field(
        1.0,
        gt=0.0,
        description="CPUs reserved per worker; leave at least one CPU of the machine to Ray Data",
    )
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="most recent checkpoints kept in storage")
    max_failures: int = Field(
        0,
        ge=-1,
        description="worker failures Ray Train recovers from in-run (from the last checkpoint); -1: ∞",
    )
    seed: int = 0
    log_every: int = Field(
        10, ge=1, description="steps between MLflow flushes and task.metrics (loss is logged every step)"
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > steps ({self.steps})")
        if self.device == "cpu" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} needs device cuda (or auto on a GPU cluster)")
        return self

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all workers."""
        return self.micro_batch_size * self.grad_accum * self.num_workers
